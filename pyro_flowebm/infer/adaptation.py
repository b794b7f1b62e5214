"""Warm-up adaptation: a kernel's tuning parameters, learned from the steps it takes.

An adaptation wraps a kernel: ``adaptation.step(state, potential)`` takes one step of the
kernel with the current parameters and then updates them; ``adaptation.params`` are the
parameters to sample with once warm-up is over. The chain runner, corrected sampling and
training all adapt through this module; nothing else sets a step size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from pyro.ops.dual_averaging import DualAveraging
from pyro.ops.welford import WelfordCovariance
from torch import Tensor

from ..core import all_chains
from .state import ChainState, Params, Potential, StepInfo, combine_infos, expand_chains, sum_event

__all__ = ["Adaptation", "CycleAdaptation", "HMCAdaptation"]


class _Stepper(Protocol):
    def step(
        self,
        state: ChainState,
        potential: Potential,
        params: Any,
        generator: torch.Generator | None,
    ) -> tuple[ChainState, StepInfo]: ...


class Adaptation:
    """Steps a kernel with fixed tuning parameters: the adaptation of kernels that have none
    to adapt, and the base of those that do.

    Attributes:
        kernel: the kernel stepped.
        params: the tuning parameters of the next step (after warm-up: the ones to keep).

    Example:
        >>> from pyro_flowebm.infer import IndependenceMH
        >>> kernel = IndependenceMH()
        >>> potential = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> adaptation = kernel.adaptation(torch.zeros(3, 2), num_warmup=10)
        >>> state, info = adaptation.step(kernel.init(torch.zeros(3, 2), potential), potential)
        >>> adaptation.adapted()
        {}
    """

    def __init__(self, kernel: _Stepper, params: Any) -> None:
        self.kernel = kernel
        self.params = params

    def step(
        self, state: ChainState, potential: Potential, generator: torch.Generator | None = None
    ) -> tuple[ChainState, StepInfo]:
        """One step of the kernel with :attr:`params`, then an update of them."""
        new_state, info = self.kernel.step(state, potential, self.params, generator)
        self.update(state, info)
        return new_state, info

    def update(self, state: ChainState, info: StepInfo) -> None:
        """Learn from one step taken from ``state``; here, nothing."""

    def adapted(self) -> dict[str, Any]:
        """What warm-up settled on, as JSON-ready values (empty: nothing is adapted)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The adaptation's state, for ``torch.save`` (``weights_only`` loadable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned."""


class _HMCSettings(_Stepper, Protocol):
    step_size: float
    num_steps: int
    adapt_step_size: bool
    target_accept_prob: float
    per_chain_step_size: bool
    adapt_mass_matrix: bool
    chees: bool
    init_trajectory_length: float
    max_num_steps: int


class HMCAdaptation(Adaptation):
    r"""Warm-up of an HMC-family kernel: step size, diagonal mass, trajectory length.

    - Step size: dual averaging (Hoffman and Gelman, 2014; ``pyro.ops.dual_averaging``)
      of :math:`\log\epsilon` towards the kernel's ``target_accept_prob``, one step size
      per chain (``per_chain_step_size``) or one shared (mean acceptance). During warm-up
      each step uses the current iterate; at its end the step size is the average iterate.
    - Mass (``adapt_mass_matrix``): each chain's variance over the middle 60% of warm-up
      (``pyro.ops.welford``), averaged over chains; the step size adaptation restarts there.
    - Trajectory length (``chees``): :math:`T` maximizes the ChEES criterion across
      chains (Hoffman, Radul and Sountsov, 2021) by Adam on :math:`\log T`; the final
      :math:`T` is the average over the second half of warm-up.

    With ``num_warmup=None`` the adaptation never ends: every step uses the current
    iterate of dual averaging, as training does on a potential that keeps changing (mass
    and ChEES adaptation need a warm-up length).

    Example:
        >>> from pyro_flowebm.infer import HMC
        >>> kernel = HMC(step_size=1.5, num_steps=3)
        >>> potential = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> adaptation = kernel.adaptation(torch.zeros(100, 2), num_warmup=100)
        >>> state = kernel.init(torch.zeros(100, 2), potential)
        >>> for _ in range(100):
        ...     state, info = adaptation.step(state, potential)
        >>> 0.3 < adaptation.adapted()["step_size"] < 1.5
        True

    References:
        Hoffman, Gelman. The No-U-Turn Sampler. arXiv:1111.4246.
        Hoffman, Radul, Sountsov. An adaptive MCMC scheme for setting trajectory
        lengths in Hamiltonian Monte Carlo. AISTATS 2021.
    """

    def __init__(self, kernel: _HMCSettings, position: Tensor, num_warmup: int | None) -> None:
        if num_warmup is None and (kernel.adapt_mass_matrix or kernel.chees):
            raise ValueError(
                "expected a warm-up length for mass matrix or ChEES adaptation, got "
                "num_warmup=None (adaptation without end adapts the step size only)"
            )
        self.kernel = kernel
        self.num_warmup = num_warmup
        self.t = 0
        n = position.shape[0] if kernel.per_chain_step_size else 1
        factory = {"dtype": position.dtype, "device": position.device}
        self.log_step = torch.full((n,), math.log(kernel.step_size), **factory)
        self.inverse_mass = torch.ones(position.shape[1:], **factory)
        self.dual = DualAveraging(prox_center=self.log_step + math.log(10.0))
        self.welford = WelfordCovariance(diagonal=True)
        self.log_length = torch.tensor(math.log(kernel.init_trajectory_length), **factory)
        self.log_length.requires_grad_(True)
        self.length_optimizer = torch.optim.Adam([self.log_length], lr=0.025, betas=(0.0, 0.95))
        self.length_history: list[float] = []
        w = num_warmup or 0
        self.mass_window = (int(0.15 * w), int(0.75 * w)) if kernel.adapt_mass_matrix else (w, w)

    @property
    def params(self) -> Params:  # type: ignore[override]
        chees = self.kernel.chees
        return Params(
            step_size=self.log_step.exp(),
            inverse_mass=self.inverse_mass,
            num_steps=self.kernel.num_steps,
            trajectory_length=math.exp(self.log_length.item()) if chees else None,
        )

    def update(self, state: ChainState, info: StepInfo) -> None:
        if self.num_warmup is not None and self.t >= self.num_warmup:
            return
        kernel, t = self.kernel, self.t
        if kernel.adapt_step_size:
            accept = info.accept_prob.nan_to_num(0.0)
            g = kernel.target_accept_prob - (
                accept if kernel.per_chain_step_size else all_chains(accept).mean()
            )
            self.dual.step(g.reshape(-1))
            self.log_step = self.dual.get_state()[0]
        start, stop = self.mass_window
        if start <= t < stop:
            self.welford.update(all_chains(state.position))
        if t == stop - 1 and self.welford.n_samples >= 2:
            self.inverse_mass = self.welford.get_covariance(regularize=True).mean(0)
            self.dual = DualAveraging(prox_center=self.log_step + math.log(10.0))
        if kernel.chees:
            self._chees_update(state, info)
        self.t += 1
        if self.t == self.num_warmup:
            self._finish()

    def _chees_update(self, state: ChainState, info: StepInfo) -> None:
        # The gradient of ChEES = E[(|q' - E q'|^2 - |q - E q|^2)^2] / 4 in the trajectory
        # length, estimated across chains and weighted by acceptance (Hoffman et al., 2021).
        # Across the chains of every process (sharded chains gather them first).
        proposal, momentum, position = map(
            all_chains, (info.proposal, info.momentum, state.position)
        )
        weight = all_chains(info.accept_prob.nan_to_num(0.0) * (~info.diverging))
        if weight.sum() <= 0:
            return
        w = expand_chains(weight / weight.sum(), proposal)
        q_prev = position - position.mean(0)
        q_new = proposal - (w * proposal).sum(0)
        velocity = self.inverse_mass * momentum
        diff_sq = sum_event(q_new.pow(2)) - sum_event(q_prev.pow(2))
        per_chain = info.jitter * diff_sq * sum_event(q_new * velocity)
        grad = (weight * per_chain.nan_to_num(0.0)).sum() / weight.sum()
        length = self.log_length.detach().exp()
        self.length_optimizer.zero_grad()
        # Adam minimizes: ascend ChEES in log T (chain rule: dT/dlogT = T).
        self.log_length.grad = -(grad * length).reshape(()).to(self.log_length.dtype)
        self.length_optimizer.step()
        with torch.no_grad():
            step_size = float(self.log_step.exp().mean())
            self.log_length.clamp_(max=math.log(self.kernel.max_num_steps * step_size))
        if self.t >= (self.num_warmup or 0) // 2:
            self.length_history.append(self.log_length.item())

    def _finish(self) -> None:
        if self.kernel.adapt_step_size:
            self.log_step = self.dual.get_state()[1]
        if self.kernel.chees and self.length_history:
            with torch.no_grad():
                self.log_length.fill_(sum(self.length_history) / len(self.length_history))

    def adapted(self) -> dict[str, Any]:
        params = self.params
        step_size = float(all_chains(params.step_size).mean())
        length = params.trajectory_length
        out: dict[str, Any] = {
            "step_size": step_size,
            "trajectory_length": length if length is not None else step_size * params.num_steps,
        }
        if self.kernel.adapt_mass_matrix:
            out["inverse_mass"] = params.inverse_mass.flatten().tolist()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "log_step": self.log_step,
            "inverse_mass": self.inverse_mass,
            "dual": dict(vars(self.dual)),
            "welford": dict(vars(self.welford)),
            "log_length": self.log_length.detach(),
            "length_optimizer": self.length_optimizer.state_dict(),
            "length_history": list(self.length_history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = state["t"]
        self.log_step = state["log_step"]
        self.inverse_mass = state["inverse_mass"]
        vars(self.dual).update(state["dual"])
        vars(self.welford).update(state["welford"])
        with torch.no_grad():
            self.log_length.copy_(state["log_length"])
        self.length_optimizer.load_state_dict(state["length_optimizer"])
        self.length_history = list(state["length_history"])


class CycleAdaptation(Adaptation):
    """The adaptations of the kernels of a cycle, each on its own sub-steps.

    Example:
        >>> from pyro_flowebm.infer import HMC, Cycle, IndependenceMH
        >>> kernel = Cycle([HMC(step_size=0.3, num_steps=3), IndependenceMH()], [2, 1])
        >>> potential = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> adaptation = kernel.adaptation(torch.zeros(5, 2), num_warmup=4)
        >>> state = kernel.init(torch.zeros(5, 2), potential)
        >>> adaptation.step(state, potential)[1].num_grad_evals
        7
    """

    def __init__(self, members: Sequence[Adaptation], repeats: Sequence[int]) -> None:
        self.members = list(members)
        self.repeats = list(repeats)

    @property
    def params(self) -> tuple[Any, ...]:  # type: ignore[override]
        return tuple(member.params for member in self.members)

    def step(
        self, state: ChainState, potential: Potential, generator: torch.Generator | None = None
    ) -> tuple[ChainState, StepInfo]:
        infos = []
        for member, r in zip(self.members, self.repeats, strict=True):
            for _ in range(r):
                state, info = member.step(state, potential, generator)
                infos.append(info)
        return state, combine_infos(infos)

    def adapted(self) -> dict[str, Any]:
        return {"kernels": [member.adapted() for member in self.members]}

    def state_dict(self) -> dict[str, Any]:
        return {"kernels": [member.state_dict() for member in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for member, member_state in zip(self.members, state["kernels"], strict=True):
            member.load_state_dict(member_state)
