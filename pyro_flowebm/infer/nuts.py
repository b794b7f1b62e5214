"""Pyro NUTS on a FlowEBM, in the flow's latent space or in data space, returning ArviZ data."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyro
import torch
from pyro.infer import MCMC, NUTS
from torch import Tensor

from ..core import check_int, check_probability, seeded
from ..distributions import FlowEBM
from ..io import to_inference_data
from .chains import check_counts, check_init

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["data_space_nuts", "latent_nuts"]


def _finite_potential(potential: Callable[[Tensor], Tensor]) -> Callable[[dict], Tensor]:
    def potential_fn(params: dict[str, Tensor]) -> Tensor:
        u = potential(params["value"]).sum()
        # NaN and -inf become +inf: Pyro's NUTS turns an infinite energy into a rejected,
        # counted divergence, where -inf would be accepted and NaN may poison the tree.
        return torch.where(torch.isfinite(u), u, torch.full_like(u, float("inf")))

    return potential_fn


def _run_chain(
    potential_fn: Callable[[dict], Tensor],
    start: Tensor,
    num_samples: int,
    warmup_steps: int,
    target_accept_prob: float,
    max_tree_depth: int,
    progress_bar: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One chain of Pyro NUTS; returns its draws and per-draw statistics."""
    mean_accept, step_size, num_divergent = [], [], []

    def hook(kernel: NUTS, params: dict, stage: str, i: int) -> None:
        if stage.startswith("Sample"):
            # Pyro keeps only a running mean of the per-draw acceptance probability; the
            # draw's own value is recovered from consecutive means below.
            mean_accept.append(kernel._mean_accept_prob)
            step_size.append(kernel.step_size)
            num_divergent.append(len(kernel.diagnostics()["divergences"]))

    kernel = NUTS(
        potential_fn=potential_fn,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        adapt_step_size=True,
        adapt_mass_matrix=True,
    )
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={"value": start.detach().clone()},
        hook_fn=hook,
        disable_progbar=not progress_bar,
    )
    mcmc.run()
    means = torch.tensor(mean_accept, dtype=torch.float64)
    n = torch.arange(1, len(means) + 1, dtype=torch.float64)
    previous = torch.cat([means.new_zeros(1), means[:-1]])
    stats = {
        "acceptance_rate": (n * means - (n - 1) * previous).clamp(0.0, 1.0),
        "step_size": torch.tensor(step_size, dtype=torch.float64),
        "diverging": torch.tensor([0, *num_divergent]).diff() > 0,
    }
    return mcmc.get_samples()["value"], stats


def _run_nuts(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    num_samples: int,
    warmup_steps: int,
    target_accept_prob: float,
    max_tree_depth: int,
    progress_bar: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Chains one after another; returns draws (chain, draw, ...) and per-draw statistics."""
    potential_fn = _finite_potential(potential)
    chains = []
    for c, start in enumerate(init):
        with torch.no_grad():
            u0 = potential_fn({"value": start})
        if not torch.isfinite(u0):
            raise ValueError(
                f"expected a finite potential at the initial point of chain {c}, got {u0.item()}"
            )
        chains.append(
            _run_chain(
                potential_fn,
                start,
                num_samples,
                warmup_steps,
                target_accept_prob,
                max_tree_depth,
                progress_bar,
            )
        )
    draws = torch.stack([d for d, _ in chains])
    stats = {k: torch.stack([s[k] for _, s in chains]) for k in chains[0][1]}
    return draws, stats


def _start(ebm: FlowEBM, latent: bool, init: Tensor | None, num_chains: int) -> Tensor:
    """The chains' starting points, checked (default: draws of the backbone, in latent
    or data space), and the energy checked there."""
    if init is None:
        q = ebm.base_dist if latent else ebm.backbone
        init = q.sample((num_chains,))
    check_init(init, num_chains, ebm)
    with torch.no_grad():
        x = ebm.transform(init) if latent else init
        ebm.check_energy(x.reshape(-1, *ebm.event_shape))
    return init


def _nuts(
    ebm: FlowEBM,
    space: str,
    num_samples: int,
    warmup_steps: int,
    num_chains: int,
    init: Tensor | None,
    seed: int | None,
    target_accept_prob: float,
    max_tree_depth: int,
    progress_bar: bool,
) -> InferenceData:
    """NUTS chains on ``ebm`` in ``space`` ("latent" or "data"), as InferenceData."""
    if not isinstance(ebm, FlowEBM):
        raise TypeError(f"expected a FlowEBM, got {type(ebm).__name__}")
    check_counts(num_chains, num_samples, warmup_steps, 1, seed)
    check_probability("target_accept_prob", target_accept_prob)
    check_int("max_tree_depth", max_tree_depth, 1)
    latent = space == "latent"
    start = time.perf_counter()
    with seeded(seed, ebm.base_dist.mean.device):
        init = _start(ebm, latent, init, num_chains)
        potential = ebm.latent_potential if latent else ebm.data_potential
        settings = (num_samples, warmup_steps, target_accept_prob, max_tree_depth, progress_bar)
        draws, stats = _run_nuts(potential, init, *settings)
    with torch.no_grad():
        if latent:
            x, z = ebm.transform(draws), draws
            stats["lp"] = ebm.latent_log_prob(z)
        else:
            x, z = draws, ebm.transform.inv(draws)
            stats["lp"] = ebm.log_prob(x)
    kernel = {
        "name": "NUTS",
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "adapt_step_size": True,
        "adapt_mass_matrix": True,
    }
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "sampler": "NUTS",
        "kernel": json.dumps(kernel),
        "space": space,
        "num_chains": num_chains,
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "sampling_time": round(time.perf_counter() - start, 3),
    }
    return to_inference_data({"x": x, "z": z}, stats, attrs=attrs)


def latent_nuts(
    ebm: FlowEBM,
    num_samples: int = 500,
    warmup_steps: int = 300,
    num_chains: int = 4,
    *,
    init: Tensor | None = None,
    seed: int | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool = True,
) -> InferenceData:
    r"""Sample a FlowEBM with Pyro's NUTS in its flow's latent space.

    NUTS runs on :math:`U(z) = \tfrac12|z|^2 + E(g(z))` and every draw is pushed through
    the flow, :math:`x = g(z)`. Where the backbone covers the data's modes, :math:`U` is
    close to a standard Gaussian and chains move between modes that trap data-space
    samplers. Chains run one after another, each with its own step size and diagonal
    mass matrix adapted during warm-up. A non-finite potential is a rejected, counted
    divergence.

    Args:
        ebm: the model.
        num_samples: kept draws per chain.
        warmup_steps: adaptation steps per chain (discarded).
        num_chains: number of chains.
        init: starting points ``z`` of shape ``(num_chains, *batch_shape, *event_shape)``;
            default: draws of the base distribution.
        seed: seeds torch's generator for this call only (the caller's stream is
            restored afterwards); ``None`` uses the current stream.
        target_accept_prob: NUTS's step-size adaptation target.
        max_tree_depth: NUTS's maximum tree depth.
        progress_bar: show Pyro's progress bar per chain.

    Returns:
        ``arviz.InferenceData`` with ``posterior`` ``x`` and ``z`` of shape
        ``(chain, draw, *batch_shape, *event_shape)``, ``sample_stats`` ``diverging``,
        ``acceptance_rate`` (the draw's mean Metropolis acceptance over its tree),
        ``step_size`` and ``lp`` (:math:`-U(z)`); ``attrs``: ``sampler``, ``kernel`` (JSON
        of NUTS's settings), the counts, the seed and the wall seconds (``sampling_time``).

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> idata = latent_nuts(ebm, num_samples=20, warmup_steps=50, num_chains=2,
        ...                     seed=0, progress_bar=False)
        >>> idata.posterior["x"].shape
        (2, 20, 2)
    """
    return _nuts(
        ebm, "latent", num_samples, warmup_steps, num_chains, init, seed, target_accept_prob,
        max_tree_depth, progress_bar,
    )  # fmt: skip


def data_space_nuts(
    ebm: FlowEBM,
    num_samples: int = 500,
    warmup_steps: int = 300,
    num_chains: int = 4,
    *,
    init: Tensor | None = None,
    seed: int | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress_bar: bool = True,
) -> InferenceData:
    r"""Sample the same FlowEBM with Pyro's NUTS in data space, for comparisons.

    NUTS runs on :meth:`~pyro_flowebm.FlowEBM.data_potential`, :math:`E(x) - \log q(x)`,
    which needs the backbone's inverse and log-determinant at every gradient. Same
    arguments and output as :func:`latent_nuts`, except that ``init`` holds starting
    points ``x`` (default: backbone draws), ``z = g^{-1}(x)`` is computed after sampling
    and ``lp`` is the unnormalized :math:`\log p(x)`.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> idata = data_space_nuts(ebm, num_samples=20, warmup_steps=50, num_chains=2,
        ...                         seed=0, progress_bar=False)
        >>> idata.posterior["z"].shape
        (2, 20, 2)
    """
    return _nuts(
        ebm, "data", num_samples, warmup_steps, num_chains, init, seed, target_accept_prob,
        max_tree_depth, progress_bar,
    )  # fmt: skip
