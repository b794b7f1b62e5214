"""MCMC kernels vectorized over chains: HMC (with ChEES), MALA, ULA, independence moves, cycles."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from pyro.ops.dual_averaging import DualAveraging
from pyro.ops.welford import WelfordCovariance
from torch import Tensor

__all__ = [
    "HMC",
    "MALA",
    "ULA",
    "ChainState",
    "Cycle",
    "IndependenceMH",
    "Kernel",
    "StepInfo",
    "value_and_grad",
]

Potential = Callable[[Tensor], Tensor]

# Inductor settings for the compiled leapfrog step, local to that one function. Measured on
# the overhead benchmark's potential (RealNVP with tanh coupling nets, 1024 chains, float32,
# one thread; benchmarks/results/overhead.md): Inductor's CPU code for tanh calls Sleef's
# tanh, about 6x slower than eager's; the decomposition 2 / (1 + exp(-2x)) - 1 (Inductor's
# CPU default before PyTorch 2.7) differs from it by float32 rounding in absolute terms, and
# the C++ wrapper, which launches the step's ~150 kernels without Python, together take the
# compiled step from 0.80-0.87 to 0.55-0.58 of the eager one (the wrapper's share is about
# 0.03); the first (compiling) step still takes about 16 s.
_COMPILE_OPTIONS = {"cpp.use_decompose_tanh": True, "cpp_wrapper": True}


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
        step_size: step size used by each chain, ``(C,)``.
        num_grad_evals: gradient evaluations per chain in this step.
    """

    accept_prob: Tensor
    accepted: Tensor
    diverging: Tensor
    energy: Tensor
    step_size: Tensor
    num_grad_evals: int


def value_and_grad(potential_fn: Potential, position: Tensor) -> tuple[Tensor, Tensor]:
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
        u = potential_fn(q)
        if u.shape != position.shape[:1]:
            raise ValueError(
                f"expected the potential to return shape ({position.shape[0]},) for "
                f"positions of shape {tuple(position.shape)}, got {tuple(u.shape)}"
            )
        if not u.requires_grad:  # a potential that does not depend on the position
            return u.detach(), torch.zeros_like(q)
        (grad,) = torch.autograd.grad(u.sum(), q)
    return u.detach(), grad.detach()


def _expand(per_chain: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (C,) tensor against (C, *event)."""
    return per_chain.reshape(-1, *([1] * (like.dim() - 1)))


def _sum_event(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(-1)


def _select(mask: Tensor, new: ChainState, old: ChainState) -> ChainState:
    return ChainState(*(torch.where(_expand(mask, n), n, o) for n, o in zip(new, old, strict=True)))


class Kernel:
    """Base class: a kernel holds its settings and its adaptation state.

    ``init(potential_fn, position, warmup_steps)`` returns the first
    :class:`ChainState` and resets adaptation; ``step(state)`` returns the next state and
    a :class:`StepInfo`, adapting during the first ``warmup_steps`` calls.
    """

    potential_fn: Potential

    def init(self, potential_fn: Potential, position: Tensor, warmup_steps: int = 0) -> ChainState:
        self.potential_fn = potential_fn
        self._warmup_steps = warmup_steps
        self._t = 0
        self._setup(position)
        return ChainState(position.detach(), *value_and_grad(potential_fn, position))

    def _setup(self, position: Tensor) -> None:
        """Reset adaptation state for chains shaped like ``position``."""

    def step(self, state: ChainState) -> tuple[ChainState, StepInfo]:
        raise NotImplementedError

    @property
    def warming_up(self) -> bool:
        return self._t < self._warmup_steps


class HMC(Kernel):
    r"""Hamiltonian Monte Carlo over a batch of chains, each accepted on its own.

    Each step draws momenta :math:`p \sim \mathcal N(0, M)`, runs ``num_steps`` leapfrog
    steps of size :math:`\epsilon` and accepts per chain with probability
    :math:`\min(1, e^{-\Delta H})`. An energy error above ``max_energy_error`` or a
    non-finite one is a divergence: rejected and counted, the chain stays put and no
    other chain is touched.

    During warm-up the step size is adapted by dual averaging (Hoffman and Gelman, 2014;
    ``pyro.ops.dual_averaging``) towards ``target_accept_prob``, one step size per chain
    or one shared (mean acceptance), and optionally a diagonal mass matrix
    (``pyro.ops.welford``, each chain's variance over the middle 60% of warm-up,
    averaged over chains). With ``chees=True`` the trajectory length
    :math:`T = \epsilon L` is adapted across chains by maximizing the ChEES criterion
    (Hoffman, Radul and Sountsov, 2021) with Adam, and every step uses a jittered length
    :math:`u T`, :math:`u \sim U(0, 1)`.

    Args:
        step_size: initial step size :math:`\epsilon`.
        num_steps: leapfrog steps per iteration (ignored with ``chees=True``).
        adapt_step_size: adapt :math:`\epsilon` during warm-up.
        target_accept_prob: target of the step-size adaptation.
        per_chain_step_size: one step size per chain (else one shared by all).
        adapt_mass_matrix: adapt a diagonal mass matrix during warm-up.
        chees: adapt the trajectory length by ChEES.
        init_trajectory_length: initial :math:`T` for ChEES.
        max_num_steps: cap on leapfrog steps per iteration with ChEES.
        max_energy_error: energy error above which a proposal is a divergence.
        compile: run the leapfrog step through ``torch.compile`` (pays a compile once).

    Example:
        >>> kernel = HMC(step_size=0.5, num_steps=5)
        >>> state = kernel.init(lambda q: 0.5 * q.pow(2).sum(-1), torch.zeros(100, 2))
        >>> state, info = kernel.step(state)
        >>> state.position.shape, info.accept_prob.shape, info.num_grad_evals
        (torch.Size([100, 2]), torch.Size([100]), 5)

    References:
        Hoffman, Gelman. The No-U-Turn Sampler. arXiv:1111.4246.
        Hoffman, Radul, Sountsov. An adaptive MCMC scheme for setting trajectory
        lengths in Hamiltonian Monte Carlo. AISTATS 2021.
    """

    def __init__(
        self,
        step_size: float = 0.1,
        num_steps: int = 10,
        *,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.8,
        per_chain_step_size: bool = False,
        adapt_mass_matrix: bool = False,
        chees: bool = False,
        init_trajectory_length: float = 1.0,
        max_num_steps: int = 256,
        max_energy_error: float = 1000.0,
        compile: bool = False,
    ) -> None:
        if step_size <= 0 or num_steps < 1:
            raise ValueError(
                f"expected step_size > 0 and num_steps >= 1, got {step_size}, {num_steps}"
            )
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"expected 0 < target_accept_prob < 1, got {target_accept_prob}")
        self.step_size = step_size
        self.num_steps = num_steps
        self.adapt_step_size = adapt_step_size
        self.target_accept_prob = target_accept_prob
        self.per_chain_step_size = per_chain_step_size
        self.adapt_mass_matrix = adapt_mass_matrix
        self.chees = chees
        self.init_trajectory_length = init_trajectory_length
        self.max_num_steps = max_num_steps
        self.max_energy_error = max_energy_error
        self.compile = compile
        self._leapfrog_step = (
            torch.compile(_functional_leapfrog_step, options=_COMPILE_OPTIONS)
            if compile
            else _leapfrog_step
        )

    # -- adaptation state ------------------------------------------------------------------

    def _setup(self, position: Tensor) -> None:
        n = position.shape[0] if self.per_chain_step_size else 1
        factory = {"dtype": position.dtype, "device": position.device}
        self._log_step = torch.full((n,), math.log(self.step_size), **factory)
        self._inv_mass = torch.ones(position.shape[1:], **factory)
        self._dual = DualAveraging(prox_center=self._log_step + math.log(10.0))
        self._welford = WelfordCovariance(diagonal=True)
        self._log_length = torch.tensor(math.log(self.init_trajectory_length), **factory)
        self._log_length.requires_grad_(True)
        self._length_optimizer = torch.optim.Adam([self._log_length], lr=0.025, betas=(0.0, 0.95))
        self._length_history: list[float] = []
        w = self._warmup_steps
        self._mass_window = (int(0.15 * w), int(0.75 * w)) if self.adapt_mass_matrix else (w, w)

    @property
    def current_step_size(self) -> Tensor:
        return self._log_step.exp()

    @property
    def trajectory_length(self) -> float:
        """The trajectory length :math:`T` (ChEES), or ``step_size * num_steps``."""
        if self.chees:
            return math.exp(self._log_length.item())
        return float(self.current_step_size.mean()) * self.num_steps

    @property
    def inverse_mass(self) -> Tensor:
        """The diagonal inverse mass matrix :math:`M^{-1}`, shape ``event_shape``."""
        return self._inv_mass

    def _num_steps_now(self, step_size: Tensor, jitter: float) -> int:
        if not self.chees:
            return self.num_steps
        length = math.exp(self._log_length.item()) * jitter
        return max(1, min(self.max_num_steps, math.ceil(length / float(step_size.mean()))))

    def _adapt(self, state: ChainState, proposal: Tensor, momentum: Tensor, info: StepInfo,
               jitter: float) -> None:  # fmt: skip
        t = self._t
        if self.adapt_step_size:
            accept = info.accept_prob.nan_to_num(0.0)
            g = self.target_accept_prob - (accept if self.per_chain_step_size else accept.mean())
            self._dual.step(g.reshape(-1))
            self._log_step = self._dual.get_state()[0]
        start, stop = self._mass_window
        if start <= t < stop:
            self._welford.update(state.position)
        if t == stop - 1 and self._welford.n_samples >= 2:
            self._inv_mass = self._welford.get_covariance(regularize=True).mean(0)
            self._dual = DualAveraging(prox_center=self._log_step + math.log(10.0))
        if self.chees:
            self._chees_update(state, proposal, momentum, info, jitter)
        if t == self._warmup_steps - 1:
            self._finish_adaptation()

    def _chees_update(self, state: ChainState, proposal: Tensor, momentum: Tensor,
                      info: StepInfo, jitter: float) -> None:  # fmt: skip
        # The gradient of ChEES = E[(|q' - E q'|^2 - |q - E q|^2)^2] / 4 in the trajectory
        # length, estimated across chains and weighted by acceptance (Hoffman et al., 2021).
        weight = info.accept_prob.nan_to_num(0.0) * (~info.diverging)
        if weight.sum() <= 0:
            return
        w = _expand(weight / weight.sum(), proposal)
        q_prev = state.position - state.position.mean(0)
        q_new = proposal - (w * proposal).sum(0)
        velocity = self._inv_mass * momentum
        diff_sq = _sum_event(q_new.pow(2)) - _sum_event(q_prev.pow(2))
        per_chain = jitter * diff_sq * _sum_event(q_new * velocity)
        grad = (weight * per_chain.nan_to_num(0.0)).sum() / weight.sum()
        length = self._log_length.detach().exp()
        self._length_optimizer.zero_grad()
        # Adam minimizes: ascend ChEES in log T (chain rule: dT/dlogT = T).
        self._log_length.grad = -(grad * length).reshape(())
        self._length_optimizer.step()
        with torch.no_grad():
            self._log_length.clamp_(
                max=math.log(self.max_num_steps * float(self.current_step_size.mean()))
            )
        if self._t >= self._warmup_steps // 2:
            self._length_history.append(self._log_length.item())

    def _finish_adaptation(self) -> None:
        if self.adapt_step_size:
            self._log_step = self._dual.get_state()[1]
        if self.chees and self._length_history:
            with torch.no_grad():
                self._log_length.fill_(sum(self._length_history) / len(self._length_history))

    # -- one step --------------------------------------------------------------------------

    def step(self, state: ChainState) -> tuple[ChainState, StepInfo]:
        q0, u0, g0 = state
        eps = self.current_step_size.expand(q0.shape[0])
        jitter = float(torch.rand(())) if self.chees else 1.0
        num_steps = self._num_steps_now(eps, jitter)
        inv_mass = self._inv_mass
        p0 = torch.randn_like(q0) / inv_mass.sqrt()
        h0 = u0 + 0.5 * _sum_event(inv_mass * p0.pow(2))
        q, p, u, g = q0, p0, u0, g0
        eps_b = _expand(eps, q0)
        for _ in range(num_steps):
            q, p, u, g = self._leapfrog_step(self.potential_fn, q, p, g, eps_b, inv_mass)
        h = u + 0.5 * _sum_event(inv_mass * p.pow(2))
        delta = h - h0
        delta = torch.where(torch.isfinite(delta), delta, torch.full_like(delta, math.inf))
        diverging = delta > self.max_energy_error
        accept_prob = torch.exp(-delta.clamp(min=0.0))
        accepted = (torch.rand_like(accept_prob) < accept_prob) & ~diverging
        new_state = _select(accepted, ChainState(q, u, g), state)
        info = StepInfo(
            accept_prob=accept_prob,
            accepted=accepted,
            diverging=diverging,
            energy=torch.where(accepted, h, h0),
            step_size=eps,
            num_grad_evals=num_steps,
        )
        if self.warming_up:
            self._adapt(state, q, p, info, jitter)
        self._t += 1
        return new_state, info


def _leapfrog_step(
    potential_fn: Potential, q: Tensor, p: Tensor, grad: Tensor, eps: Tensor, inv_mass: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One velocity-Verlet step for all chains."""
    p = p - 0.5 * eps * grad
    q = q + eps * inv_mass * p
    u, grad = value_and_grad(potential_fn, q)
    p = p - 0.5 * eps * grad
    return q, p, u, grad


def _functional_leapfrog_step(
    potential_fn: Potential, q: Tensor, p: Tensor, grad: Tensor, eps: Tensor, inv_mass: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same step through ``torch.func``, which ``torch.compile`` traces without breaks."""

    def total(x: Tensor) -> tuple[Tensor, Tensor]:
        u = potential_fn(x)
        return u.sum(), u

    p = p - 0.5 * eps * grad
    q = q + eps * inv_mass * p
    grad, (_, u) = torch.func.grad_and_value(total, has_aux=True)(q)
    p = p - 0.5 * eps * grad
    # Detach: with trainable parameters inside the potential, u would otherwise carry an
    # autograd graph to them that grows with every step of the chain.
    return q, p.detach(), u.detach(), grad.detach()


class MALA(HMC):
    r"""Metropolis-adjusted Langevin: HMC with one leapfrog step.

    The proposal :math:`z' = z - \tfrac{\epsilon^2}{2} M^{-1}\nabla U(z) + \epsilon
    M^{-1/2}\xi` with a Metropolis correction is exactly one-step HMC, so this kernel is
    :class:`HMC` with ``num_steps=1`` and the same adaptation options.

    Example:
        >>> kernel = MALA(step_size=0.5)
        >>> state = kernel.init(lambda q: 0.5 * q.pow(2).sum(-1), torch.zeros(10, 2))
        >>> kernel.step(state)[1].num_grad_evals
        1
    """

    def __init__(self, step_size: float = 0.1, **kwargs: object) -> None:
        if "num_steps" in kwargs or "chees" in kwargs:
            raise TypeError("MALA takes exactly one leapfrog step; use HMC for more")
        super().__init__(step_size, num_steps=1, **kwargs)


class ULA(Kernel):
    r"""Unadjusted Langevin: :math:`z' = z - \tfrac{\epsilon^2}{2}\nabla U(z) + \epsilon\xi`.

    No Metropolis step: biased for any :math:`\epsilon > 0` (the bias shrinks with
    :math:`\epsilon`), the classic short-run sampler of EBM training and our data-space
    baseline. Non-finite proposals are still refused and counted as divergences.

    Args:
        step_size: :math:`\epsilon`; the drift is :math:`\epsilon^2/2` times the gradient.

    Example:
        >>> kernel = ULA(step_size=0.1)
        >>> state = kernel.init(lambda q: 0.5 * q.pow(2).sum(-1), torch.zeros(10, 2))
        >>> bool(kernel.step(state)[1].accepted.all())
        True
    """

    def __init__(self, step_size: float = 0.1) -> None:
        if step_size <= 0:
            raise ValueError(f"expected step_size > 0, got {step_size}")
        self.step_size = step_size

    def step(self, state: ChainState) -> tuple[ChainState, StepInfo]:
        eps = self.step_size
        q = state.position - 0.5 * eps**2 * state.grad + eps * torch.randn_like(state.position)
        u, g = value_and_grad(self.potential_fn, q)
        finite = torch.isfinite(u) & torch.isfinite(_sum_event(g))
        new_state = _select(finite, ChainState(q, u, g), state)
        self._t += 1
        return new_state, StepInfo(
            accept_prob=finite.to(u.dtype),
            accepted=finite,
            diverging=~finite,
            energy=new_state.potential,
            step_size=torch.full_like(u, eps),
            num_grad_evals=1,
        )


class IndependenceMH(Kernel):
    r"""Independence Metropolis with the flow's base :math:`\mathcal N(0, I)` as proposal.

    Proposes :math:`z' \sim \mathcal N(0, I)` for every chain and accepts with probability
    :math:`\min(1, e^{-U(z') + U(z) + \frac12|z|^2 - \frac12|z'|^2})`; for a FlowEBM's
    latent potential that is :math:`\min(1, e^{E(g(z)) - E(g(z'))})`. Exact, and a global
    move: it jumps between modes whenever the backbone covers them. Use it in latent space,
    alone or in a :class:`Cycle` with HMC.

    Example:
        >>> kernel = IndependenceMH()
        >>> state = kernel.init(lambda z: 0.5 * z.pow(2).sum(-1), torch.zeros(10, 2))
        >>> bool(kernel.step(state)[1].accepted.all())  # E = 0: every proposal is taken
        True
    """

    def step(self, state: ChainState) -> tuple[ChainState, StepInfo]:
        z = torch.randn_like(state.position)
        u, g = value_and_grad(self.potential_fn, z)
        half_sq = 0.5 * _sum_event(z.pow(2))
        old_half_sq = 0.5 * _sum_event(state.position.pow(2))
        log_ratio = (state.potential - old_half_sq) - (u - half_sq)
        log_ratio = torch.where(torch.isnan(log_ratio), torch.full_like(u, -math.inf), log_ratio)
        accept_prob = log_ratio.clamp(max=0.0).exp()
        diverging = ~torch.isfinite(u)
        accepted = (torch.rand_like(u) < accept_prob) & ~diverging
        new_state = _select(accepted, ChainState(z, u, g), state)
        self._t += 1
        return new_state, StepInfo(
            accept_prob=accept_prob,
            accepted=accepted,
            diverging=diverging,
            energy=new_state.potential,
            step_size=torch.full_like(u, math.nan),
            num_grad_evals=1,
        )


class Cycle(Kernel):
    """Run kernels in turn, each ``repeats[i]`` times, as one step.

    The info of a cycle: acceptance probability averaged over its sub-steps, diverging
    if any sub-step diverged, the energy of the last sub-step, the step size of the first
    kernel that has one, and the total number of gradient evaluations. Each kernel adapts
    on its own sub-steps during warm-up.

    Args:
        kernels: the kernels.
        repeats: how many times each runs per cycle (default once each).

    Example:
        >>> kernel = Cycle([HMC(step_size=0.3, num_steps=5), IndependenceMH()], [3, 1])
        >>> state = kernel.init(lambda z: 0.5 * z.pow(2).sum(-1), torch.zeros(10, 2))
        >>> kernel.step(state)[1].num_grad_evals
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
        if any(r < 1 for r in self.repeats):
            raise ValueError(f"expected repeats >= 1, got {self.repeats}")

    def init(self, potential_fn: Potential, position: Tensor, warmup_steps: int = 0) -> ChainState:
        state = super().init(potential_fn, position, warmup_steps)
        for kernel, r in zip(self.kernels, self.repeats, strict=True):
            kernel.init(potential_fn, position, warmup_steps * r)
        return state

    def step(self, state: ChainState) -> tuple[ChainState, StepInfo]:
        infos = []
        for kernel, r in zip(self.kernels, self.repeats, strict=True):
            for _ in range(r):
                state, info = kernel.step(state)
                infos.append(info)
        step_size = next(
            (i.step_size for i in infos if not torch.isnan(i.step_size).all()), infos[0].step_size
        )
        self._t += 1
        return state, StepInfo(
            accept_prob=torch.stack([i.accept_prob for i in infos]).mean(0),
            accepted=torch.stack([i.accepted for i in infos]).any(0),
            diverging=torch.stack([i.diverging for i in infos]).any(0),
            energy=infos[-1].energy,
            step_size=step_size,
            num_grad_evals=sum(i.num_grad_evals for i in infos),
        )
