"""Hamiltonian Monte Carlo over a batch of chains, and MALA as its one-step case."""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..core import chain_draws, check_int, check_nonnegative, check_positive, check_probability
from ..core.checks import Checked
from .adaptation import HMCAdaptation
from .integrators import compiled, functional_leapfrog_step, leapfrog_step
from .kernel import Kernel
from .state import ChainState, Params, Potential, StepInfo, expand_chains, select_chains, sum_event

__all__ = ["HMC", "MALA"]


def _check_jitter(name: str, value: object) -> float:
    number = check_nonnegative(name, value)
    if number >= 1:
        raise ValueError(f"expected 0 <= {name} < 1, got {value}")
    return number


class HMC(Kernel):
    r"""Hamiltonian Monte Carlo over a batch of chains, each accepted on its own.

    Each step draws momenta :math:`p \sim \mathcal N(0, M)`, runs ``num_steps`` leapfrog
    steps of size :math:`\epsilon` and accepts per chain with probability
    :math:`\min(1, e^{-\Delta H})`. An energy error above ``max_energy_error`` or a
    non-finite one is a divergence: rejected and counted, the chain stays put and no
    other chain is touched.

    The step size, the diagonal mass and the number of leapfrog steps of a step are its
    :class:`~pyro_flowebm.infer.Params`. The constructor's values are where warm-up
    (:meth:`adaptation`, a :class:`~pyro_flowebm.infer.adaptation.HMCAdaptation`) starts:
    dual averaging of the step size towards ``target_accept_prob`` (one per chain or
    one shared), a diagonal mass matrix (``adapt_mass_matrix``), and with ``chees=True``
    a trajectory length :math:`T = \epsilon L` adapted by the ChEES criterion, every step
    then using a jittered length :math:`u T`, :math:`u \sim U(0, 1)`.

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
        >>> potential = lambda q: 0.5 * q.pow(2).sum(-1)
        >>> state = kernel.init(torch.zeros(100, 2), potential)
        >>> params = kernel.init_params(state.position)
        >>> state, info = kernel.step(state, potential, params)
        >>> state.position.shape, info.accept_prob.shape, info.num_grad_evals
        (torch.Size([100, 2]), torch.Size([100]), 5)

    References:
        Neal. MCMC using Hamiltonian dynamics. arXiv:1206.1901.
    """

    # Checked when set, in the constructor or later (``kernel.step_size = 0.05``).
    step_size = Checked(check_positive)
    num_steps = Checked(partial(check_int, minimum=1))
    target_accept_prob = Checked(check_probability)
    init_trajectory_length = Checked(check_positive)
    max_num_steps = Checked(partial(check_int, minimum=1))
    max_energy_error = Checked(check_positive)
    step_size_jitter = Checked(_check_jitter)

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
        step_size_jitter: float = 0.1,
        compile: bool = False,
    ) -> None:
        self.step_size = step_size
        self.num_steps = num_steps
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept_prob = target_accept_prob
        self.per_chain_step_size = bool(per_chain_step_size)
        self.adapt_mass_matrix = bool(adapt_mass_matrix)
        self.chees = bool(chees)
        self.init_trajectory_length = init_trajectory_length
        self.max_num_steps = max_num_steps
        self.max_energy_error = max_energy_error
        self.step_size_jitter = step_size_jitter
        self.compile = bool(compile)
        self._leapfrog_step = compiled(functional_leapfrog_step) if compile else leapfrog_step

    def init_params(self, position: Tensor) -> Params:
        """The constructor's step size (one shared, or one per chain), the identity mass,
        ``num_steps``, and ``init_trajectory_length`` with ChEES."""
        n = position.shape[0] if self.per_chain_step_size else 1
        factory = {"dtype": position.dtype, "device": position.device}
        # On the log scale, as the adaptation keeps it: no warm-up and a warm-up of zero
        # steps give the same step size to the last bit.
        log_step = torch.full((n,), math.log(self.step_size), **factory)
        return Params(
            step_size=log_step.exp(),
            inverse_mass=torch.ones(position.shape[1:], **factory),
            num_steps=self.num_steps,
            trajectory_length=self.init_trajectory_length if self.chees else None,
        )

    def adaptation(self, position: Tensor, num_warmup: int | None) -> HMCAdaptation:
        return HMCAdaptation(self, position, num_warmup)

    def settings(self) -> dict[str, Any]:
        names = (
            "step_size num_steps adapt_step_size target_accept_prob per_chain_step_size "
            "adapt_mass_matrix chees init_trajectory_length max_num_steps max_energy_error "
            "step_size_jitter compile"
        ).split()
        return {"name": type(self).__name__} | {name: getattr(self, name) for name in names}

    def _num_steps(self, params: Params, step_size: Tensor, jitter: float) -> int:
        if params.trajectory_length is None:
            return params.num_steps
        steps = math.ceil(params.trajectory_length * jitter / float(step_size.mean()))
        return max(1, min(self.max_num_steps, steps))

    def transition(
        self,
        state: ChainState,
        potential: Potential,
        params: Params,
        generator: torch.Generator | None = None,
    ) -> tuple[ChainState, StepInfo]:
        q0, u0, g0 = state
        factory = {"dtype": q0.dtype, "device": q0.device}
        eps = params.step_size.to(q0.dtype).expand(q0.shape[0])  # the chains keep their dtype
        jittered = params.trajectory_length is not None
        jitter = float(torch.rand((), generator=generator, device=q0.device)) if jittered else 1.0
        num_steps = self._num_steps(params, eps, jitter)
        if self.step_size_jitter and not jittered:
            u = chain_draws(torch.rand, eps.shape, generator=generator, **factory)
            eps = eps * (1 + self.step_size_jitter * (2 * u - 1))
        inv_mass = params.inverse_mass
        p0 = chain_draws(torch.randn, q0.shape, generator=generator, **factory) / inv_mass.sqrt()
        h0 = u0 + 0.5 * sum_event(inv_mass * p0.pow(2))
        q, p, u, g = q0, p0, u0, g0
        eps_b = expand_chains(eps, q0)
        for _ in range(num_steps):
            q, p, u, g = self._leapfrog_step(potential, q, p, g, eps_b, inv_mass)
        h = u + 0.5 * sum_event(inv_mass * p.pow(2))
        delta = h - h0
        delta = torch.where(torch.isfinite(delta), delta, torch.full_like(delta, math.inf))
        diverging = delta > self.max_energy_error
        accept_prob = torch.exp(-delta.clamp(min=0.0))
        uniform = chain_draws(torch.rand, accept_prob.shape, generator=generator, **factory)
        accepted = (uniform < accept_prob) & ~diverging
        info = StepInfo(
            accept_prob=accept_prob,
            accepted=accepted,
            diverging=diverging,
            energy=torch.where(accepted, h, h0),
            step_size=eps,
            num_grad_evals=num_steps,
            proposal=q,
            momentum=p,
            jitter=jitter,
        )
        return select_chains(accepted, ChainState(q, u, g), state), info

    # -- deprecated: the adaptation state the 0.1 protocol bound to the kernel ------------

    def _legacy_params(self, name: str) -> Params:
        warnings.warn(
            f"HMC.{name} is deprecated: kernels keep no adaptation state; run_chains records "
            "the adapted values in idata.posterior.attrs ('adapted_step_size', "
            "'adapted_trajectory_length', 'adapted'), and an adaptation object has them in "
            "adaptation.params",
            DeprecationWarning,
            stacklevel=3,
        )
        if self._legacy is None:
            raise AttributeError(
                f"HMC.{name} exists only after the deprecated kernel.init(potential, position, "
                "warmup_steps); see the adaptation's params instead"
            )
        return self._legacy.adaptation.params

    @property
    def current_step_size(self) -> Tensor:
        """Deprecated: the step size of a kernel bound by the 0.1 protocol."""
        return self._legacy_params("current_step_size").step_size

    @property
    def trajectory_length(self) -> float:
        """Deprecated: :math:`T` (ChEES) or ``step_size * num_steps`` of a bound kernel."""
        params = self._legacy_params("trajectory_length")
        if params.trajectory_length is not None:
            return params.trajectory_length
        return float(params.step_size.mean()) * params.num_steps

    @property
    def inverse_mass(self) -> Tensor:
        """Deprecated: the diagonal inverse mass matrix of a bound kernel."""
        return self._legacy_params("inverse_mass").inverse_mass


class MALA(HMC):
    r"""Metropolis-adjusted Langevin: HMC with one leapfrog step.

    The proposal :math:`z' = z - \tfrac{\epsilon^2}{2} M^{-1}\nabla U(z) + \epsilon
    M^{-1/2}\xi` with a Metropolis correction is exactly one-step HMC, so this kernel is
    :class:`HMC` with ``num_steps=1`` and the same adaptation options.

    Example:
        >>> kernel = MALA(step_size=0.5)
        >>> potential = lambda q: 0.5 * q.pow(2).sum(-1)
        >>> state = kernel.init(torch.zeros(10, 2), potential)
        >>> kernel.step(state, potential, kernel.init_params(state.position))[1].num_grad_evals
        1

    References:
        Roberts, Tweedie. Exponential convergence of Langevin distributions and their
        discrete approximations. Bernoulli 1996.
    """

    def __init__(self, step_size: float = 0.1, **kwargs: Any) -> None:
        if "num_steps" in kwargs or "chees" in kwargs:
            raise TypeError("MALA takes exactly one leapfrog step; use HMC for more")
        # One step cannot come back to where it started: no jitter is needed.
        kwargs.setdefault("step_size_jitter", 0.0)
        super().__init__(step_size, num_steps=1, **kwargs)
