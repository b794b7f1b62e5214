"""run_chains: warm-up and sampling of many chains at once with a vectorized kernel."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diagnostics import to_inference_data
from ..distribution import FlowEBM
from .kernels import Kernel
from .nuts import _check_counts, _check_init, _seeded

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["run_chains"]


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
    chains move on it directly, e.g. a data-space baseline. Only kept draws are stored
    (``num_samples`` per chain, every ``thin``-th iteration), on the positions' device.

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
        (:math:`-U`); ``attrs`` with the kernel's settings, the seed, what warm-up
        adapted (``adapted_step_size``, ``adapted_trajectory_length`` for HMC kernels)
        and ``num_grad_evals``, the gradient evaluations per chain of the whole run, and
        ``sampling_time``, its wall seconds.

    Example:
        >>> from pyro_flowebm.infer import HMC
        >>> idata = run_chains(lambda q: 0.5 * q.pow(2).sum(-1), HMC(0.5, 4), 64, 50,
        ...                    warmup_steps=50, init=torch.zeros(64, 2), seed=0,
        ...                    progress_bar=False)
        >>> idata.posterior["x"].shape
        (64, 50, 2)
    """
    _check_counts(
        num_chains=(num_chains, 1),
        num_samples=(num_samples, 1),
        warmup_steps=(warmup_steps, 0),
        thin=(thin, 1),
    )
    if not isinstance(kernel, Kernel):
        raise TypeError(f"expected a pyro_flowebm.infer kernel, got {type(kernel).__name__}")
    ebm = target if isinstance(target, FlowEBM) else None
    if ebm is None and not callable(target):
        raise TypeError(f"expected a FlowEBM or a potential function, got {type(target).__name__}")
    if ebm is None and init is None:
        raise ValueError("expected init positions (num_chains, *event_shape) for a potential")
    potential_fn = ebm.chain_potential if ebm is not None else target
    device = init.device if init is not None else ebm.base_dist.mean.device

    start = time.perf_counter()
    with _seeded(seed, device):
        if init is None:
            init = ebm.base_dist.sample((num_chains,))
        if ebm is not None:
            _check_init(init, ebm, num_chains, "init")
        elif init.dim() < 1 or init.shape[0] != num_chains:
            raise ValueError(
                f"expected init with {num_chains} chains in its first dimension, "
                f"got shape {tuple(init.shape)}"
            )
        elif not torch.isfinite(init).all():
            raise ValueError("expected finite init, got non-finite entries")
        state = kernel.init(potential_fn, init, warmup_steps)
        bad = ~torch.isfinite(state.potential)
        if bad.any():
            raise ValueError(
                f"expected a finite potential at every initial point, got non-finite values "
                f"in chains {bad.nonzero().flatten().tolist()[:10]}"
            )
        draws = init.new_empty((num_samples, *init.shape))
        stats = {
            name: init.new_empty((num_samples, num_chains))
            for name in ("acceptance_rate", "step_size", "energy", "lp")
        }
        diverging = torch.zeros((num_samples, num_chains), dtype=torch.bool, device=device)
        n_steps = torch.zeros((num_samples, num_chains), dtype=torch.long, device=device)
        total = warmup_steps + num_samples * thin
        num_divergent = 0
        grad_evals = 0
        with tqdm(total=total, disable=not progress_bar, desc="warmup") as bar:
            for i in range(total):
                state, info = kernel.step(state)
                grad_evals += info.num_grad_evals
                kept = i - warmup_steps
                if kept >= 0 and (kept + 1) % thin == 0:
                    j = kept // thin
                    draws[j] = state.position
                    stats["acceptance_rate"][j] = info.accept_prob
                    stats["step_size"][j] = info.step_size
                    stats["energy"][j] = info.energy
                    stats["lp"][j] = -state.potential
                    diverging[j] = info.diverging
                    n_steps[j] = info.num_grad_evals
                if progress_bar:
                    num_divergent += int(info.diverging.sum()) if kept >= 0 else 0
                    bar.update()
                    if i == warmup_steps:
                        bar.set_description("sample")
                    if i % 10 == 0:
                        bar.set_postfix(
                            acc=f"{float(info.accept_prob.nan_to_num(0.0).mean()):.2f}",
                            step=f"{float(info.step_size.nanmean()):.3g}",
                            div=num_divergent,
                        )

    draws = draws.transpose(0, 1)
    posterior = {"x": draws}
    if ebm is not None:
        with torch.no_grad():
            posterior = {"x": ebm.transform(draws), "z": draws}
    sample_stats = {k: v.transpose(0, 1) for k, v in stats.items()}
    sample_stats["diverging"] = diverging.transpose(0, 1)
    sample_stats["n_steps"] = n_steps.transpose(0, 1)
    settings = {
        k: v
        for k, v in vars(kernel).items()
        if not k.startswith("_") and isinstance(v, bool | int | float | str)
    }
    if draws.device.type == "cuda":
        torch.cuda.synchronize(draws.device)  # kernels run asynchronously: wait for them
    # What warm-up settled on, and the whole run's cost, warm-up included.
    adapted = {"num_grad_evals": grad_evals, "sampling_time": round(time.perf_counter() - start, 3)}
    if hasattr(kernel, "current_step_size"):
        adapted["adapted_step_size"] = float(kernel.current_step_size.mean())
        adapted["adapted_trajectory_length"] = kernel.trajectory_length
    return to_inference_data(
        posterior,
        sample_stats,
        attrs={
            "inference_library": "pyro_flowebm",
            "inference_library_version": pyro.__version__,
            "sampler": type(kernel).__name__,
            "space": "latent" if ebm is not None else "potential",
            "num_chains": num_chains,
            "num_samples": num_samples,
            "warmup_steps": warmup_steps,
            "thin": thin,
            "seed": seed,
            **settings,
            **adapted,
        },
    )
