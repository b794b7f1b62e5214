"""What kernels exchange: chain states, step infos, tuning parameters, and gradients of U."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ChainState",
    "Params",
    "Potential",
    "StepInfo",
    "combine_infos",
    "expand_chains",
    "select_chains",
    "sum_event",
    "value_and_grad",
]

Potential = Callable[[Tensor], Tensor]


class ChainState(NamedTuple):
    """The state of a batch of chains.

    Attributes:
        position: positions, shape ``(C, *event_shape)``, one row per chain.
        potential: :math:`U` at the positions, shape ``(C,)``.
        grad: :math:`\\nabla U` at the positions, same shape as ``position``.
    """

    position: Tensor
    potential: Tensor
    grad: Tensor


class StepInfo(NamedTuple):
    """What one step did, per chain.

    Attributes:
        accept_prob: Metropolis acceptance probability of the proposal, ``(C,)``
            (1 for the unadjusted Langevin kernel).
        accepted: whether the proposal was taken, ``(C,)`` bool.
        diverging: proposal rejected for a non-finite or huge energy error, ``(C,)`` bool.
        energy: Hamiltonian (potential plus kinetic energy) at the kept state, ``(C,)``:
            ArviZ's ``energy`` for BFMI; the potential for kernels without momentum.
        step_size: step size used by each chain, ``(C,)`` (NaN for kernels without one).
        num_grad_evals: gradient evaluations per chain in this step.
        proposal: HMC only: the end of the trajectory, before the accept test.
        momentum: HMC only: the momentum at the end of the trajectory.
        jitter: HMC with a jittered trajectory length only: the fraction :math:`u` of the
            length this step used.
    """

    accept_prob: Tensor
    accepted: Tensor
    diverging: Tensor
    energy: Tensor
    step_size: Tensor
    num_grad_evals: int
    proposal: Tensor | None = None
    momentum: Tensor | None = None
    jitter: float = 1.0


class Params(NamedTuple):
    """The tuning parameters of one step of an HMC-family kernel.

    Attributes:
        step_size: leapfrog step size, shape ``()`` (shared by all chains) or ``(C,)``
            (one per chain).
        inverse_mass: the diagonal inverse mass matrix :math:`M^{-1}`, shape
            ``event_shape`` (ones: the identity).
        num_steps: leapfrog steps per iteration.
        trajectory_length: with a jittered length (ChEES), :math:`T`: each iteration runs
            :math:`\\lceil uT/\\epsilon \\rceil` leapfrog steps, :math:`u \\sim U(0, 1)`, and
            ``num_steps`` is ignored; ``None`` otherwise.
    """

    step_size: Tensor
    inverse_mass: Tensor
    num_steps: int
    trajectory_length: float | None = None


def value_and_grad(potential: Potential, position: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`U` and :math:`\\nabla U` for a batch of chains, detached.

    The potential must treat chains independently (no batch normalization across chains),
    so a NaN in one chain stays in that chain.

    Example:
        >>> u, g = value_and_grad(lambda q: 0.5 * q.pow(2).sum(-1), torch.ones(3, 2))
        >>> u.tolist(), g.tolist()
        ([1.0, 1.0, 1.0], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    """
    with torch.enable_grad():
        q = position.detach().requires_grad_(True)
        u = potential(q)
        if u.shape != position.shape[:1]:
            raise ValueError(
                f"expected the potential to return shape ({position.shape[0]},) for "
                f"positions of shape {tuple(position.shape)}, got {tuple(u.shape)}"
            )
        if not u.requires_grad:  # a potential that does not depend on the position
            return u.detach(), torch.zeros_like(q)
        (grad,) = torch.autograd.grad(u.sum(), q)
    return u.detach(), grad.detach()


def expand_chains(per_chain: Tensor, like: Tensor) -> Tensor:
    """A ``(C,)`` tensor shaped to broadcast against ``(C, *event)``."""
    return per_chain.reshape(-1, *([1] * (like.dim() - 1)))


def sum_event(x: Tensor) -> Tensor:
    """Sum over everything but the chain dimension: ``(C, *event)`` to ``(C,)``."""
    return x.reshape(x.shape[0], -1).sum(-1)


def select_chains(mask: Tensor, new: ChainState, old: ChainState) -> ChainState:
    """``new`` where ``mask`` (``(C,)`` bool) holds, ``old`` elsewhere, chain by chain."""
    pairs = zip(new, old, strict=True)
    return ChainState(*(torch.where(expand_chains(mask, n), n, o) for n, o in pairs))


def combine_infos(infos: list[StepInfo]) -> StepInfo:
    """One :class:`StepInfo` for several sub-steps taken as one step (a cycle of kernels).

    Acceptance probability averaged over the sub-steps, accepted or diverging if any
    sub-step was, the energy of the last sub-step, the step size of the first kernel that
    has one, and the total number of gradient evaluations.
    """
    step_size = next(
        (i.step_size for i in infos if not torch.isnan(i.step_size).all()), infos[0].step_size
    )
    return StepInfo(
        accept_prob=torch.stack([i.accept_prob for i in infos]).mean(0),
        accepted=torch.stack([i.accepted for i in infos]).any(0),
        diverging=torch.stack([i.diverging for i in infos]).any(0),
        energy=infos[-1].energy,
        step_size=step_size,
        num_grad_evals=sum(i.num_grad_evals for i in infos),
    )
