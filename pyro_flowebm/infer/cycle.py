"""Kernels run in turn, each a number of times, as one step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .adaptation import CycleAdaptation
from .kernel import Kernel
from .state import ChainState, Potential, StepInfo, combine_infos

__all__ = ["Cycle"]


class Cycle(Kernel):
    """Run kernels in turn, each ``repeats[i]`` times, as one step.

    Its parameters are the tuple of its kernels' parameters, and its warm-up adapts each
    kernel on its own sub-steps (:class:`~pyro_flowebm.infer.adaptation.CycleAdaptation`).
    The info of a cycle: acceptance probability averaged over its sub-steps, diverging if
    any sub-step diverged, the energy of the last sub-step, the step size of the first
    kernel that has one, and the total number of gradient evaluations.

    Args:
        kernels: the kernels.
        repeats: how many times each runs per cycle (default once each).

    Example:
        >>> from pyro_flowebm.infer import HMC, IndependenceMH
        >>> kernel = Cycle([HMC(step_size=0.3, num_steps=5), IndependenceMH()], [3, 1])
        >>> potential = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> state = kernel.init(torch.zeros(10, 2), potential)
        >>> kernel.step(state, potential, kernel.init_params(state.position))[1].num_grad_evals
        16
    """

    def __init__(self, kernels: Sequence[Kernel], repeats: Sequence[int] | None = None) -> None:
        self.kernels = list(kernels)
        self.repeats = list(repeats) if repeats is not None else [1] * len(self.kernels)
        if not self.kernels or len(self.repeats) != len(self.kernels):
            raise ValueError(
                f"expected one repeat count per kernel, got {len(self.kernels)} kernels and "
                f"{len(self.repeats)} repeats"
            )
        for kernel in self.kernels:
            if not isinstance(kernel, Kernel):
                raise TypeError(f"expected pyro_flowebm.infer kernels, got {type(kernel).__name__}")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.repeats):
            raise ValueError(f"expected repeats >= 1, got {self.repeats}")

    def init_params(self, position: Tensor) -> tuple[Any, ...]:
        return tuple(kernel.init_params(position) for kernel in self.kernels)

    def adaptation(self, position: Tensor, num_warmup: int | None) -> CycleAdaptation:
        members = [
            kernel.adaptation(position, None if num_warmup is None else num_warmup * r)
            for kernel, r in zip(self.kernels, self.repeats, strict=True)
        ]
        return CycleAdaptation(members, self.repeats)

    def settings(self) -> dict[str, Any]:
        return {
            "name": "Cycle",
            "repeats": list(self.repeats),
            "kernels": [kernel.settings() for kernel in self.kernels],
        }

    def transition(
        self,
        state: ChainState,
        potential: Potential,
        params: tuple[Any, ...],
        generator: torch.Generator | None = None,
    ) -> tuple[ChainState, StepInfo]:
        infos = []
        for kernel, r, kernel_params in zip(self.kernels, self.repeats, params, strict=True):
            for _ in range(r):
                state, info = kernel.step(state, potential, kernel_params, generator)
                infos.append(info)
        return state, combine_infos(infos)
