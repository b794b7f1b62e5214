"""Many chains at once: warm-up with adaptation, then sampling into ArviZ InferenceData."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import (
    __version__,
    all_chains,
    check_finite,
    check_int,
    local_rows,
    process_rank,
    seeded,
    sharding,
)
from ..core.checks import check_floating
from ..distributions import FlowEBM
from ..io import to_inference_data
from .adaptation import Adaptation
from .hmc import HMC
from .kernel import Kernel
from .state import ChainState, Potential, StepInfo

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["advance", "check_counts", "check_init", "corrected_sample", "run_chains"]

# The kernel of corrected_sample when none is given.
_CORRECTION_KERNEL = {"step_size": 0.2, "num_steps": 5}


class _Trace:
    """The kept draws and per-draw statistics of a run, preallocated."""

    def __init__(self, init: Tensor, num_samples: int) -> None:
        num_chains = init.shape[0]
        self.draws = init.new_empty((num_samples, *init.shape))
        self.stats = {
            name: init.new_empty((num_samples, num_chains))
            for name in ("acceptance_rate", "step_size", "energy", "lp")
        }
        bools = {"dtype": torch.bool, "device": init.device}
        self.stats["diverging"] = torch.zeros((num_samples, num_chains), **bools)
        longs = {"dtype": torch.long, "device": init.device}
        self.stats["n_steps"] = torch.zeros((num_samples, num_chains), **longs)

    def keep(self, j: int, state: ChainState, info: StepInfo) -> None:
        self.draws[j] = state.position
        self.stats["acceptance_rate"][j] = info.accept_prob
        self.stats["step_size"][j] = info.step_size
        self.stats["energy"][j] = info.energy
        self.stats["lp"][j] = -state.potential
        self.stats["diverging"][j] = info.diverging
        self.stats["n_steps"][j] = info.num_grad_evals


def _check_start(
    target: FlowEBM | Potential, init: Tensor | None
) -> tuple[Potential, FlowEBM | None]:
    """The potential to move on, and the FlowEBM if the target is one."""
    if init is not None:
        check_floating("init", init)
    if isinstance(target, FlowEBM):
        return target.chain_potential, target
    if not callable(target):
        raise TypeError(f"expected a FlowEBM or a potential function, got {type(target).__name__}")
    if init is None:
        raise ValueError("expected init positions (num_chains, *event_shape) for a potential")
    return target, None


def check_counts(
    num_chains: int, num_samples: int, warmup_steps: int, thin: int, seed: int | None
) -> None:
    """The counts of a run of chains: at least one chain and one kept draw, no negative
    warm-up, ``thin >= 1``, and a seed that is ``None`` or a non-negative integer.

    Example:
        >>> check_counts(4, 100, 0, 1, seed=2.5)
        Traceback (most recent call last):
        ...
        TypeError: expected an integer seed, got float 2.5
    """
    check_int("num_chains", num_chains, 1)
    check_int("num_samples", num_samples, 1)
    check_int("warmup_steps", warmup_steps, 0)
    check_int("thin", thin, 1)
    if seed is not None:
        check_int("seed", seed, 0)


def check_init(init: Tensor, num_chains: int, ebm: FlowEBM | None = None) -> None:
    """Starting positions of ``num_chains`` chains, all finite, a floating-point tensor: of
    shape ``(num_chains, *batch_shape, *event_shape)`` and of the model's dtype (its base
    distribution's) for ``ebm``, else ``num_chains`` rows.

    Example:
        >>> check_init(torch.zeros(3, 2), 4)
        Traceback (most recent call last):
        ...
        ValueError: expected init with 4 chains in its first dimension, got shape (3, 2)
    """
    check_floating("init", init, None if ebm is None else ebm.base_dist.mean.dtype)
    if ebm is not None:
        shape = (num_chains, *ebm.batch_shape, *ebm.event_shape)
        if tuple(init.shape) != shape:
            raise ValueError(f"expected init of shape {shape}, got {tuple(init.shape)}")
    elif init.dim() < 1 or init.shape[0] != num_chains:
        raise ValueError(
            f"expected init with {num_chains} chains in its first dimension, "
            f"got shape {tuple(init.shape)}"
        )
    check_finite("init", init)


def _initial_state(
    kernel: Kernel, potential: Potential, init: Tensor, ebm: FlowEBM | None, num_chains: int
) -> ChainState:
    check_init(init, num_chains, ebm)
    init = local_rows(init)  # this process's chains, in a sharded run
    if ebm is not None:
        with torch.no_grad():
            ebm.check_energy(ebm.transform(init).reshape(-1, *ebm.event_shape))
    state = kernel.init(init, potential)
    bad = ~torch.isfinite(all_chains(state.potential))
    if bad.any():
        raise ValueError(
            f"expected a finite potential at every initial point, got non-finite values "
            f"in chains {bad.nonzero().flatten().tolist()[:10]}"
        )
    return state


def _progress(bar: tqdm, i: int, warmup_steps: int, info: StepInfo, num_divergent: int) -> None:
    bar.update()
    if i == warmup_steps:
        bar.set_description("sample")
    if i % 10 == 0:
        bar.set_postfix(
            acc=f"{float(info.accept_prob.nan_to_num(0.0).mean()):.2f}",
            step=f"{float(info.step_size.nanmean()):.3g}",
            div=num_divergent,
        )


def _first_hmc_values(adapted: dict[str, Any]) -> dict[str, float]:
    """``adapted_step_size`` and ``adapted_trajectory_length`` of the first kernel (of a
    cycle, depth first) whose warm-up has them."""
    if "step_size" in adapted:
        return {
            "adapted_step_size": adapted["step_size"],
            "adapted_trajectory_length": adapted["trajectory_length"],
        }
    for member in adapted.get("kernels", []):
        found = _first_hmc_values(member)
        if found:
            return found
    return {}


def run_chains(
    target: FlowEBM | Callable[[Tensor], Tensor],
    kernel: Kernel,
    num_chains: int,
    num_samples: int,
    warmup_steps: int = 0,
    *,
    init: Tensor | None = None,
    thin: int = 1,
    seed: int | None = None,
    progress_bar: bool = True,
) -> InferenceData:
    r"""Run ``num_chains`` chains at once: warm-up with adaptation, then sampling.

    With a :class:`~pyro_flowebm.FlowEBM` the chains move in its latent space on
    :math:`U(z) = \tfrac12|z|^2 + E(g(z))` and every kept draw is pushed through the flow;
    with a potential function (positions ``(C, *event_shape)`` to energies ``(C,)``) the
    chains move on it directly, e.g. a data-space baseline. Warm-up steps go through the
    kernel's :meth:`~pyro_flowebm.infer.Kernel.adaptation`; sampling uses the parameters it
    settled on. Only kept draws are stored (``num_samples`` per chain, every ``thin``-th
    iteration), on the positions' device.

    Args:
        target: a FlowEBM, or a potential function :math:`U`.
        kernel: an :mod:`pyro_flowebm.infer` kernel (``HMC``, ``MALA``, ``ULA``,
            ``IndependenceMH``, ``Cycle``).
        num_chains: number of chains.
        num_samples: kept draws per chain.
        warmup_steps: adaptation iterations (discarded).
        init: starting positions ``(num_chains, *event_shape)``; required for a potential
            function, default base draws for a FlowEBM.
        thin: keep every ``thin``-th iteration after warm-up.
        seed: seeds torch's generator for this call only; ``None`` uses the current stream.
        progress_bar: a tqdm bar with live acceptance, step size and divergences.

    Returns:
        ``arviz.InferenceData``: ``posterior`` ``x`` (and ``z`` for a FlowEBM) with dims
        ``(chain, draw, ...)``; ``sample_stats`` ``acceptance_rate``, ``step_size``,
        ``diverging``, ``energy``, ``n_steps`` (gradient evaluations) and ``lp``
        (:math:`-U`); ``attrs``: ``sampler`` (the kernel's class), ``kernel`` (JSON of
        every setting of the kernel, nested for a cycle), ``adapted`` (JSON of what warm-up
        settled on), ``adapted_step_size`` and ``adapted_trajectory_length`` (of the first
        HMC-family kernel), the counts, the seed, ``num_processes``, ``num_grad_evals``
        (gradient evaluations per chain of the whole run) and ``sampling_time`` (its wall
        seconds).

    In a ``torch.distributed`` run (an initialized default process group) each process
    moves its block of the chains (the number of processes must divide ``num_chains``) and
    every process returns all of them; a chain's draws are those it gets in one process
    with the same seed (``docs/scaling.md``).

    Example:
        >>> from pyro_flowebm.infer import HMC
        >>> idata = run_chains(lambda q: 0.5 * q.pow(2).sum(-1), HMC(0.5, 4), 64, 50,
        ...                    warmup_steps=50, init=torch.zeros(64, 2), seed=0,
        ...                    progress_bar=False)
        >>> idata.posterior["x"].shape
        (64, 50, 2)
    """
    check_counts(num_chains, num_samples, warmup_steps, thin, seed)
    if not isinstance(kernel, Kernel):
        raise TypeError(f"expected a pyro_flowebm.infer kernel, got {type(kernel).__name__}")
    potential, ebm = _check_start(target, init)
    device = init.device if init is not None else ebm.base_dist.mean.device

    start = time.perf_counter()
    with seeded(seed, device):
        if init is None:
            init = ebm.base_dist.sample((num_chains,))
        counts = (num_chains, num_samples, warmup_steps, thin)
        posterior, stats, adapted, grad_evals = _run(
            kernel, (potential, ebm), init, counts, progress_bar
        )
    if posterior["x"].device.type == "cuda":
        torch.cuda.synchronize(posterior["x"].device)  # kernels run asynchronously: wait
    return to_inference_data(
        posterior,
        stats,
        attrs={
            "inference_library": "pyro_flowebm",
            "inference_library_version": __version__,
            "sampler": type(kernel).__name__,
            "kernel": json.dumps(kernel.settings()),
            "adapted": json.dumps(adapted),
            **_first_hmc_values(adapted),
            "space": "latent" if ebm is not None else "potential",
            "num_chains": num_chains,
            "num_samples": num_samples,
            "warmup_steps": warmup_steps,
            "thin": thin,
            "seed": seed,
            # Processes that shared the chains (a chain's draws do not depend on it).
            "num_processes": process_rank()[1],
            # The whole run's cost, warm-up included.
            "num_grad_evals": grad_evals,
            "sampling_time": round(time.perf_counter() - start, 3),
        },
    )


def _run(
    kernel: Kernel,
    target: tuple[Potential, FlowEBM | None],
    init: Tensor,
    counts: tuple[int, int, int, int],
    progress_bar: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any], int]:
    """Run the chains from ``init``: their draws (``x``, and ``z`` for a FlowEBM, whose
    draws are pushed through the flow) and statistics ``(chain, draw, ...)``, what warm-up
    settled on, and the gradient evaluations a chain.

    In a ``torch.distributed`` run each process moves its block of the chains and pushes
    its own draws through the flow; the draws of every process are gathered at the end
    (:mod:`pyro_flowebm.core.shard`).
    """
    (potential, ebm), (num_chains, num_samples, warmup_steps, thin) = target, counts
    with sharding(num_chains):
        state = _initial_state(kernel, potential, init, ebm, num_chains)
        adaptation = kernel.adaptation(state.position, warmup_steps)
        trace, grad_evals, state = _sample(
            kernel, adaptation, potential, state, num_samples, warmup_steps, thin,
            progress_bar and process_rank()[0] == 0,
        )  # fmt: skip
        draws = trace.draws.transpose(0, 1)
        posterior = {"x": draws}
        if ebm is not None:
            with torch.no_grad():
                posterior = {"x": ebm.transform(draws), "z": draws}
        posterior = {k: all_chains(v) for k, v in posterior.items()}
        stats = {k: all_chains(v.transpose(0, 1)) for k, v in trace.stats.items()}
        return posterior, stats, adaptation.adapted(), grad_evals


def advance(
    kernel: Kernel,
    adaptation: Adaptation,
    potential: Potential,
    state: ChainState,
    warming_up: bool,
) -> tuple[ChainState, StepInfo]:
    """One step of every chain: through ``adaptation`` while warming up, else with the
    parameters it settled on."""
    if warming_up:
        return adaptation.step(state, potential)
    return kernel.step(state, potential, adaptation.params)


def _sample(
    kernel: Kernel,
    adaptation: Adaptation,
    potential: Potential,
    state: ChainState,
    num_samples: int,
    warmup_steps: int,
    thin: int,
    progress_bar: bool,
) -> tuple[_Trace, int, ChainState]:
    """Run the chains and keep every ``thin``-th state after warm-up."""
    trace = _Trace(state.position, num_samples)
    total = warmup_steps + num_samples * thin
    num_divergent = grad_evals = 0
    with tqdm(total=total, disable=not progress_bar, desc="warmup") as bar:
        for i in range(total):
            state, info = advance(kernel, adaptation, potential, state, i < warmup_steps)
            grad_evals += info.num_grad_evals
            kept = i - warmup_steps
            if kept >= 0 and (kept + 1) % thin == 0:
                trace.keep(kept // thin, state, info)
            if progress_bar:
                num_divergent += int(info.diverging.sum()) if kept >= 0 else 0
                _progress(bar, i, warmup_steps, info, num_divergent)
    return trace, grad_evals, state


def corrected_sample(
    ebm: FlowEBM,
    sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
    mcmc_steps: int = 20,
    kernel: Kernel | None = None,
    *,
    seed: int | None = None,
) -> Tensor:
    """Backbone draws moved towards the EBM by ``mcmc_steps`` steps of latent MCMC.

    Each draw starts from the backbone in latent space, :math:`z \\sim \\mathcal N(0, I)`,
    and runs ``mcmc_steps`` steps of ``kernel`` (default: :class:`~pyro_flowebm.infer.HMC`
    with step size 0.2 and 5 leapfrog steps), all draws as parallel chains, warm-up
    adaptation during the first half; the final states are pushed through the flow. The
    short-run correction EBM training uses: it approaches the EBM as ``mcmc_steps`` grows.

    Args:
        ebm: the model.
        sample_shape: the shape of the draws, as in ``ebm.sample(sample_shape)``.
        mcmc_steps: steps per draw (0: backbone draws).
        kernel: the kernel.
        seed: seeds torch's generator for this call only.

    Returns:
        Draws of shape ``sample_shape + ebm.batch_shape + ebm.event_shape``.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> corrected_sample(ebm, (100,), mcmc_steps=20, seed=0).shape
        torch.Size([100, 2])
    """
    if not isinstance(ebm, FlowEBM):
        raise TypeError(f"expected a FlowEBM, got {type(ebm).__name__}")
    check_int("mcmc_steps", mcmc_steps, 0)
    if kernel is not None and not isinstance(kernel, Kernel):
        raise TypeError(f"expected a pyro_flowebm.infer kernel, got {type(kernel).__name__}")
    kernel = kernel if kernel is not None else HMC(**_CORRECTION_KERNEL)
    sample_shape = torch.Size(sample_shape)
    with seeded(seed, ebm.base_dist.mean.device):
        z = ebm.base_dist.sample(sample_shape).reshape(-1, *ebm.batch_shape, *ebm.event_shape)
        with torch.no_grad():
            ebm.check_energy(ebm.transform(z).reshape(-1, *ebm.event_shape))
        state = kernel.init(z, ebm.chain_potential)
        adaptation = kernel.adaptation(z, mcmc_steps // 2)
        for i in range(mcmc_steps):
            state, _ = advance(kernel, adaptation, ebm.chain_potential, state, i < mcmc_steps // 2)
    with torch.no_grad():
        x = ebm.transform(state.position)
    return x.reshape(sample_shape + ebm.batch_shape + ebm.event_shape)
