"""Independence Metropolis with the flow's base N(0, I) as proposal: exact global moves."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import chain_draws
from .integrators import evaluation
from .kernel import Kernel
from .state import ChainState, Potential, StepInfo, select_chains, sum_event

__all__ = ["IndependenceMH"]


class IndependenceMH(Kernel):
    r"""Independence Metropolis with the flow's base :math:`\mathcal N(0, I)` as proposal.

    Proposes :math:`z' \sim \mathcal N(0, I)` for every chain and accepts with probability
    :math:`\min(1, e^{-U(z') + U(z) + \frac12|z|^2 - \frac12|z'|^2})`; for a FlowEBM's
    latent potential that is :math:`\min(1, e^{E(g(z)) - E(g(z'))})`. Exact, and a global
    move: it jumps between modes whenever the backbone covers them. Use it in latent space,
    alone or in a :class:`~pyro_flowebm.infer.Cycle` with HMC. It has no tuning
    parameters (``params`` is ignored).

    Args:
        compile: evaluate the potential and its gradient at the proposals through
            ``torch.compile``: by HMC's compiled leapfrog step, of size zero, so a cycle
            with ``HMC(compile=True)`` compiles one graph, not two.

    Example:
        >>> kernel = IndependenceMH()
        >>> potential = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> state = kernel.init(torch.zeros(10, 2), potential)
        >>> bool(kernel.step(state, potential)[1].accepted.all())  # E = 0: every proposal taken
        True
    """

    def __init__(self, *, compile: bool = False) -> None:
        self.compile = bool(compile)
        self._value_and_grad = evaluation(compile)

    def settings(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "compile": self.compile}

    def transition(
        self,
        state: ChainState,
        potential: Potential,
        params: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[ChainState, StepInfo]:
        q0 = state.position
        factory = {"dtype": q0.dtype, "device": q0.device}
        z = chain_draws(torch.randn, q0.shape, generator=generator, **factory)
        u, g = self._value_and_grad(potential, z)
        half_sq = 0.5 * sum_event(z.pow(2))
        old_half_sq = 0.5 * sum_event(q0.pow(2))
        log_ratio = (state.potential - old_half_sq) - (u - half_sq)
        log_ratio = torch.where(torch.isnan(log_ratio), torch.full_like(u, -math.inf), log_ratio)
        accept_prob = log_ratio.clamp(max=0.0).exp()
        diverging = ~torch.isfinite(u)
        uniform = chain_draws(torch.rand, u.shape, generator=generator, **factory)
        accepted = (uniform < accept_prob) & ~diverging
        new_state = select_chains(accepted, ChainState(z, u, g), state)
        return new_state, StepInfo(
            accept_prob=accept_prob,
            accepted=accepted,
            diverging=diverging,
            energy=new_state.potential,
            step_size=torch.full_like(u, math.nan),
            num_grad_evals=1,
        )
