"""Unadjusted Langevin dynamics over a batch of chains."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import chain_draws, check_positive
from ..core.checks import Checked
from .kernel import Kernel
from .state import ChainState, Params, Potential, StepInfo, select_chains, sum_event, value_and_grad

__all__ = ["ULA"]


class ULA(Kernel):
    r"""Unadjusted Langevin: :math:`z' = z - \tfrac{\epsilon^2}{2}\nabla U(z) + \epsilon\xi`.

    No Metropolis step: biased for any :math:`\epsilon > 0` (the bias shrinks with
    :math:`\epsilon`), the classic short-run sampler of EBM training and our data-space
    baseline. Non-finite proposals are still refused and counted as divergences. The step
    size is the one tuning parameter; nothing adapts it.

    Args:
        step_size: :math:`\epsilon`; the drift is :math:`\epsilon^2/2` times the gradient.

    Example:
        >>> kernel = ULA(step_size=0.1)
        >>> potential = lambda q: 0.5 * q.pow(2).sum(-1)
        >>> state = kernel.init(torch.zeros(10, 2), potential)
        >>> params = kernel.init_params(state.position)
        >>> bool(kernel.step(state, potential, params)[1].accepted.all())
        True

    References:
        Roberts, Tweedie. Exponential convergence of Langevin distributions and their
        discrete approximations. Bernoulli 1996.
    """

    # Checked when set, in the constructor or later.
    step_size = Checked(check_positive)

    def __init__(self, step_size: float = 0.1) -> None:
        self.step_size = step_size

    def init_params(self, position: Tensor) -> Params:
        factory = {"dtype": position.dtype, "device": position.device}
        return Params(
            step_size=torch.tensor(self.step_size, **factory),
            inverse_mass=torch.ones(position.shape[1:], **factory),
            num_steps=1,
        )

    def settings(self) -> dict[str, Any]:
        return {"name": "ULA", "step_size": self.step_size}

    def transition(
        self,
        state: ChainState,
        potential: Potential,
        params: Params,
        generator: torch.Generator | None = None,
    ) -> tuple[ChainState, StepInfo]:
        eps = float(params.step_size)
        q0 = state.position
        noise = chain_draws(
            torch.randn, q0.shape, generator=generator, dtype=q0.dtype, device=q0.device
        )
        q = q0 - 0.5 * eps**2 * state.grad + eps * noise
        u, g = value_and_grad(potential, q)
        finite = torch.isfinite(u) & torch.isfinite(sum_event(g))
        new_state = select_chains(finite, ChainState(q, u, g), state)
        return new_state, StepInfo(
            accept_prob=finite.to(u.dtype),
            accepted=finite,
            diverging=~finite,
            energy=new_state.potential,
            step_size=torch.full_like(u, eps),
            num_grad_evals=1,
        )
