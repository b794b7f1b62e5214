"""The kernel interface: a kernel holds its settings; everything else is an argument of a step.

The potential, the tuning parameters (step size, mass, trajectory length) and the random
generator are arguments of every step, so one kernel moves chains on a potential that
changes between steps (an annealing temperature, a new training batch). Warm-up
adaptation is a separate object that wraps a kernel (:mod:`pyro_flowebm.infer.adaptation`).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..core.checks import check_differentiable, check_floating
from .adaptation import Adaptation
from .state import ChainState, Potential, StepInfo

__all__ = ["Kernel"]


class _Legacy(NamedTuple):
    """What the deprecated ``init(potential, position, warmup_steps)`` bound to a kernel."""

    potential: Potential
    adaptation: Adaptation


def _first_value_and_grad(potential: Potential, position: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`~pyro_flowebm.infer.value_and_grad` at the chains' start, with the checks of
    what the potential returns that later steps skip: a floating-point tensor of shape
    ``(C,)``, differentiable in the positions (or constant where finite)."""
    check_floating("position", position)
    with torch.enable_grad():
        q = position.detach().requires_grad_(True)
        u = potential(q)
        if not isinstance(u, Tensor):
            raise TypeError(
                f"expected the potential to return a tensor of shape ({q.shape[0]},), "
                f"got {type(u).__name__} {u!r}"
            )
        if not u.is_floating_point():
            raise TypeError(
                f"expected the potential to return floating-point values, got {u.dtype}"
            )
        if u.shape != q.shape[:1]:
            raise ValueError(
                f"expected the potential to return shape ({q.shape[0]},) for positions of "
                f"shape {tuple(q.shape)}, got {tuple(u.shape)}"
            )
        grad = torch.autograd.grad(u.sum(), q, allow_unused=True)[0] if u.requires_grad else None
    check_differentiable("the potential", u, grad)
    return u.detach(), torch.zeros_like(q) if grad is None else grad.detach()


class Kernel:
    """Base class of the kernels: ``init`` and ``step`` with everything as arguments.

    ``state = kernel.init(position, potential)`` evaluates the potential and its gradient;
    ``state, info = kernel.step(state, potential, params, generator)`` moves every chain
    once with tuning parameters ``params`` (from a warm-up :meth:`adaptation`; ``None``:
    :meth:`init_params`) and randomness from ``generator`` (``None``: torch's global one).
    Subclasses implement :meth:`transition` and, if they have tuning parameters,
    :meth:`init_params` and :meth:`adaptation`.

    The form of 0.1, ``kernel.init(potential, position, warmup_steps)`` and then
    ``kernel.step(state)``, still works with a :class:`DeprecationWarning`: it binds the
    potential and a warm-up adaptation to the kernel.
    """

    _legacy: _Legacy | None = None

    def init(
        self, position: Tensor, potential: Potential, *legacy: Any, **legacy_kwargs: Any
    ) -> ChainState:
        """The state of chains at ``position`` ``(C, *event_shape)`` on ``potential``.

        The one evaluation of the potential here is checked: it must return a
        floating-point tensor of shape ``(C,)`` that autograd traces back to the positions
        (a ``.detach()`` or ``torch.no_grad()`` inside it would leave the chains moving on a
        wrong gradient), unless it is constant where finite. ``legacy`` and
        ``legacy_kwargs`` take the ``warmup_steps`` of the deprecated form.
        """
        if callable(position) and isinstance(potential, Tensor):
            warnings.warn(
                "kernel.init(potential, position, warmup_steps) is deprecated: use "
                "kernel.init(position, potential) and kernel.step(state, potential, params), "
                "with params from kernel.adaptation(position, warmup_steps)",
                DeprecationWarning,
                stacklevel=2,
            )
            position, potential = potential, position
            warmup_steps = legacy[0] if legacy else legacy_kwargs.get("warmup_steps", 0)
            self._legacy = _Legacy(potential, self.adaptation(position, warmup_steps))
        return ChainState(position.detach(), *_first_value_and_grad(potential, position))

    def init_params(self, position: Tensor) -> Any:
        """The tuning parameters the kernel starts with, for chains shaped like ``position``."""
        return None

    def adaptation(self, position: Tensor, num_warmup: int | None) -> Adaptation:
        """A warm-up adaptation of this kernel's tuning parameters over ``num_warmup``
        steps (``None``: adapt for as long as it is stepped); here, none."""
        return Adaptation(self, self.init_params(position))

    def settings(self) -> dict[str, Any]:
        """The kernel's name and constructor settings, as JSON-ready values."""
        return {"name": type(self).__name__}

    def step(
        self,
        state: ChainState,
        potential: Potential | None = None,
        params: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One move of every chain: :meth:`transition`, or the deprecated bound form."""
        if potential is None:
            if self._legacy is None:
                raise TypeError(
                    "expected kernel.step(state, potential, params, generator), got no potential"
                )
            return self._legacy.adaptation.step(state, self._legacy.potential, generator)
        if params is None:
            params = self.init_params(state.position)
        return self.transition(state, potential, params, generator)

    def transition(
        self,
        state: ChainState,
        potential: Potential,
        params: Any,
        generator: torch.Generator | None,
    ) -> tuple[ChainState, StepInfo]:
        raise NotImplementedError
