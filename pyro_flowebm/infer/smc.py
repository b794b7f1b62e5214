"""Annealed sequential Monte Carlo: from exact draws of one density to another, and their ratio Z.

Particles start as exact draws of :math:`\\pi_0(z) \\propto e^{-U_0(z)}` and are carried to
:math:`\\pi_1(z) \\propto e^{-U_0(z) - T(z)}` through the tempered densities
:math:`\\pi_\\beta \\propto e^{-U_0 - \\beta T}`: reweight to the next :math:`\\beta`, chosen so
that the conditional effective sample size stays at a target, resample when the ESS falls,
move with an HMC-family kernel that leaves :math:`\\pi_\\beta` invariant. The product of the
stages' mean incremental weights is an unbiased estimate of :math:`Z_1 / Z_0`. The same
engine anneals an EBM's tilt (:func:`~pyro_flowebm.infer.estimate_log_z`) and a likelihood.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import check_finite, check_int, check_probability
from ..distributions import kish_ess, systematic_resample
from .adaptation import HMCAdaptation
from .hmc import HMC
from .state import Potential, expand_chains

__all__ = ["SMCResult", "anneal"]

# Bisection steps of the next temperature: 2^-50 of the remaining interval.
_BISECTION_STEPS = 50


class SMCResult(NamedTuple):
    """What :func:`anneal` returns.

    Attributes:
        position: the final particles, ``(N, *event_shape)``, groups one after another.
        log_weights: their normalized log-weights over all ``N`` particles (each group's
            weights times its estimate of :math:`Z`), ``(N,)``, float64.
        group_log_z: each group's estimate of :math:`\\log(Z_1 / Z_0)`, ``(K,)``, float64.
        betas: the temperatures, from 0 to 1.
        ess: Kish's effective sample size of all particles after each reweighting.
        acceptance: mean acceptance probability of each stage's moves.
        resampled: how many groups were resampled at each stage.
        num_nonfinite: particle-stages whose :math:`T` was not finite (weight zero).
        num_grad_evals: gradient evaluations per particle.
    """

    position: Tensor
    log_weights: Tensor
    group_log_z: Tensor
    betas: list[float]
    ess: list[float]
    acceptance: list[float]
    resampled: list[int]
    num_nonfinite: int
    num_grad_evals: int

    def log_z(self) -> tuple[float, float]:
        """:math:`\\log(Z_1 / Z_0)`, the log of the mean of the groups' unbiased estimates,
        and its standard error by the delta method over the groups (their spread over
        :math:`\\sqrt K`; ``NaN`` for one group)."""
        group = self.group_log_z
        k = group.shape[0]
        r = (group - group.max()).exp()
        stderr = float(r.std() / (math.sqrt(k) * r.mean())) if k > 1 else math.nan
        return float(torch.logsumexp(group, 0)) - math.log(k), stderr


def _conditional_ess(log_w: Tensor, t: Tensor, delta: float) -> Tensor:
    """Mean over groups of the conditional ESS fraction of a step ``delta`` in
    :math:`\\beta` (Zhou, Johansen and Aston, 2016), particles with non-finite ``t`` left
    out."""
    inc = -delta * t
    return (2 * torch.logsumexp(log_w + inc, -1) - torch.logsumexp(log_w + 2 * inc, -1)).exp()


def _next_beta(log_w: Tensor, t: Tensor, beta: float, target: float) -> float:
    """The largest :math:`\\beta' \\le 1` whose conditional ESS fraction is at least
    ``target`` (mean over groups), by bisection."""
    finite = torch.isfinite(t)
    log_w = torch.where(finite, log_w, -math.inf)
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    t = torch.where(finite, t, 0.0)
    # Groups with no finite particle left are an error raised by the caller.
    ok = torch.isfinite(log_w).any(-1)
    log_w, t = log_w[ok], t[ok]
    if float(_conditional_ess(log_w, t, 1 - beta).mean()) >= target:
        return 1.0
    lo, hi = 0.0, 1 - beta
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if float(_conditional_ess(log_w, t, mid).mean()) >= target:
            lo = mid
        else:
            hi = mid
    return beta + max(lo, hi * 2**-_BISECTION_STEPS)


def _weighted_variance(position: Tensor, log_w: Tensor) -> Tensor:
    """Per-coordinate variance of the particles under their normalized weights ``(N,)``."""
    w = expand_chains(log_w.exp().to(position.dtype), position)
    mean = (w * position).sum(0)
    return (w * (position - mean).pow(2)).sum(0)


def _resample(z: Tensor, log_w: Tensor, which: Tensor) -> tuple[Tensor, Tensor]:
    """Systematic resampling within the groups ``which`` (``(K,)`` bool); equal weights
    there after."""
    k, m = log_w.shape
    index = systematic_resample(log_w, m)
    keep = torch.arange(m, device=index.device).expand(k, m)
    index = torch.where(which[:, None], index, keep)
    rows = torch.arange(k, device=index.device)[:, None]
    z = z.reshape(k, m, *z.shape[1:])[rows, index].reshape(k * m, *z.shape[1:])
    log_w = torch.where(which[:, None], torch.full_like(log_w, -math.log(m)), log_w)
    return z, log_w


def anneal(
    init: Tensor,
    base_potential: Potential,
    tempered: Potential,
    kernel: HMC | None = None,
    *,
    num_groups: int = 16,
    num_moves: int = 4,
    target_ess: float = 0.9,
    resample_ess: float = 0.5,
    max_stages: int = 1000,
    final_moves: int = 0,
    progress_bar: bool = True,
) -> SMCResult:
    r"""Annealed SMC from :math:`\pi_0 \propto e^{-U_0}` to :math:`\pi_1 \propto e^{-U_0 - T}`.

    The ``N`` particles form ``num_groups`` independent particle systems of ``N / K``
    particles (weights, resampling and the estimate of :math:`Z` are per group; the
    temperatures, the kernel's step size and its diagonal mass are shared), moved together
    in one batch. Each group's product of mean incremental weights is an unbiased estimate
    of :math:`Z_1 / Z_0` for the schedule used, and their spread gives the standard error.
    At every stage: the next :math:`\beta` keeps the conditional ESS (mean over groups) at
    ``target_ess``; a group whose ESS is below ``resample_ess`` is resampled
    (systematically); ``num_moves`` steps of ``kernel`` move every particle on
    :math:`U_0 + \beta T`, with the inverse mass set to the particles' weighted variance and
    the step size adapted by dual averaging across stages. A particle whose :math:`T` is not
    finite gets weight zero (it has no mass under any :math:`\pi_{\beta > 0}`).

    Args:
        init: exact draws of :math:`\pi_0`, ``(N, *event_shape)``, ``N`` divisible by
            ``num_groups``.
        base_potential: :math:`U_0`, positions ``(C, *event_shape)`` to ``(C,)``.
        tempered: :math:`T`, the same shapes.
        kernel: the move, an :class:`~pyro_flowebm.infer.HMC` or
            :class:`~pyro_flowebm.infer.MALA` (default ``HMC(step_size=0.3, num_steps=5,
            target_accept_prob=0.7)``; mass adaptation and ChEES are not used here).
        num_groups: independent particle systems :math:`K` (1: no standard error).
        num_moves: kernel steps per stage.
        target_ess: conditional ESS fraction kept by each temperature step, in (0, 1).
        resample_ess: ESS fraction below which a group is resampled, in (0, 1].
        max_stages: error if :math:`\beta = 1` is not reached in this many stages.
        final_moves: if positive, at :math:`\beta = 1` every group is resampled to equal
            weights (systematically: a particle's copies stay side by side) and every
            particle moves ``final_moves`` more kernel steps, so that the copies part.
        progress_bar: a tqdm bar over :math:`\beta`.

    Returns:
        An :class:`SMCResult`.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> base = lambda z: 0.5 * z.pow(2).sum(-1)
        >>> tilt = lambda z: 0.5 * z.pow(2).sum(-1)  # pi_1 = N(0, I / 2): Z_1/Z_0 = 1/2
        >>> result = anneal(torch.randn(1024, 2), base, tilt, progress_bar=False)
        >>> round(float(result.group_log_z.logsumexp(0) - math.log(16)), 1)
        -0.7

    References:
        Del Moral, Doucet, Jasra. Sequential Monte Carlo samplers. JRSS B 2006.
        Zhou, Johansen, Aston. Toward automatic model comparison: an adaptive sequential
        Monte Carlo approach. JCGS 2016.
    """
    num_groups = check_int("num_groups", num_groups, 1)
    check_int("num_moves", num_moves, 0)
    check_int("max_stages", max_stages, 1)
    check_int("final_moves", final_moves, 0)
    target_ess = check_probability("target_ess", target_ess)
    resample_ess = check_probability("resample_ess", resample_ess)
    if not 0 < target_ess < 1 or resample_ess <= 0:
        raise ValueError(
            f"expected 0 < target_ess < 1 and 0 < resample_ess <= 1, got {target_ess} and "
            f"{resample_ess}"
        )
    n = init.shape[0] if init.dim() else 0
    if n < 2 * num_groups or n % num_groups:
        raise ValueError(
            f"expected at least 2 particles per group, and a number of particles divisible "
            f"by num_groups={num_groups}, got {n}"
        )
    check_finite("init", init)
    kernel = kernel if kernel is not None else HMC(0.3, 5, target_accept_prob=0.7)
    if not isinstance(kernel, HMC) or kernel.chees or kernel.adapt_mass_matrix:
        raise TypeError(
            "expected an HMC or MALA kernel without ChEES or mass adaptation as the SMC move, "
            f"got {kernel.settings() if isinstance(kernel, HMC) else type(kernel).__name__}"
        )
    annealer = _Annealer(base_potential, tempered, kernel, num_groups, num_moves)
    annealer.final_moves = final_moves
    return annealer.run(init.detach(), target_ess, resample_ess, max_stages, progress_bar)


class _Annealer:
    """The loop of :func:`anneal` over its stages."""

    def __init__(
        self,
        base_potential: Potential,
        tempered: Potential,
        kernel: HMC,
        num_groups: int,
        num_moves: int,
    ) -> None:
        self.base_potential, self.tempered, self.kernel = base_potential, tempered, kernel
        self.k, self.num_moves = num_groups, num_moves
        self.final_moves = 0
        self.num_nonfinite = self.num_grad_evals = 0

    def potential(self, beta: float) -> Potential:
        def u(z: Tensor) -> Tensor:
            return self.base_potential(z) + beta * self.tempered(z)

        return u

    def evaluate(self, z: Tensor) -> Tensor:
        """:math:`T` at the particles, float64, shape ``(K, N / K)``; ``NaN`` and ``+inf``
        counted."""
        with torch.no_grad():
            t = self.tempered(z).double()
        if t.shape != z.shape[:1]:
            raise ValueError(f"expected T of shape ({z.shape[0]},), got {tuple(t.shape)}")
        bad = ~torch.isfinite(t)
        self.num_nonfinite += int(bad.sum())
        return t.masked_fill(bad, math.inf).reshape(self.k, -1)

    def run(
        self, z: Tensor, target_ess: float, resample_ess: float, max_stages: int, bar: bool
    ) -> SMCResult:
        m = z.shape[0] // self.k
        log_w = torch.full((self.k, m), -math.log(m), dtype=torch.float64, device=z.device)
        log_z = torch.zeros(self.k, dtype=torch.float64, device=z.device)
        adaptation = HMCAdaptation(self.kernel, z, None)
        betas, ess, acceptance, resampled = [0.0], [], [], []
        with tqdm(total=1.0, disable=not bar, desc="smc", bar_format="{l_bar}{bar}{postfix}") as b:
            while betas[-1] < 1:
                if len(betas) > max_stages:
                    raise RuntimeError(
                        f"expected annealing to reach beta = 1 within max_stages={max_stages} "
                        f"stages, got to beta = {betas[-1]:.3g}"
                    )
                t = self.evaluate(z)
                beta = _next_beta(log_w, t, betas[-1], target_ess)
                inc = torch.where(torch.isfinite(t), -(beta - betas[-1]) * t, -math.inf)
                step = torch.logsumexp(log_w + inc, -1)
                if not bool(torch.isfinite(step).all()):
                    raise ValueError(
                        f"expected a finite T at some particle of every group, got a group "
                        f"whose {m} particles all have weight zero at beta = {beta:.3g}"
                    )
                log_z, log_w = log_z + step, log_w + inc - step[:, None]
                ess.append(float(kish_ess(self.pooled(log_w, log_z))))
                low = kish_ess(log_w) < resample_ess * m
                z, log_w = _resample(z, log_w, low)
                resampled.append(int(low.sum()))
                z, accept = self.move(z, beta, adaptation, self.pooled(log_w, log_z))
                betas.append(beta)
                acceptance.append(accept)
                b.update(beta - betas[-2])
                b.set_postfix(beta=f"{beta:.3g}", ess=f"{ess[-1]:.0f}", acc=f"{accept:.2f}")
        if self.final_moves:
            z, log_w = _resample(z, log_w, torch.ones(self.k, dtype=torch.bool, device=z.device))
            z, accept = self.move(z, 1.0, adaptation, self.pooled(log_w, log_z), self.final_moves)
            acceptance.append(accept)
        return SMCResult(
            z,
            self.pooled(log_w, log_z),
            log_z,
            betas,
            ess,
            acceptance,
            resampled,
            self.num_nonfinite,
            self.num_grad_evals,
        )

    @staticmethod
    def pooled(log_w: Tensor, log_z: Tensor) -> Tensor:
        """Normalized log-weights of all particles: a group's weights times its estimate."""
        joint = log_w + log_z[:, None]
        return (joint - torch.logsumexp(joint.flatten(), 0)).flatten()

    def move(
        self,
        z: Tensor,
        beta: float,
        adaptation: HMCAdaptation,
        log_w: Tensor,
        num_moves: int | None = None,
    ) -> tuple[Tensor, float]:
        """``num_moves`` (default: the stages') kernel steps on :math:`U_0 + \\beta T`;
        the mean acceptance."""
        num_moves = self.num_moves if num_moves is None else num_moves
        if num_moves == 0:
            return z, math.nan
        variance = _weighted_variance(z, log_w)
        if bool((variance > 0).all()):
            # The mass follows the particles; the step size, in the whitened scale, carries on.
            adaptation.inverse_mass = variance
        potential = self.potential(beta)
        state = self.kernel.init(z, potential)
        total = 0.0
        for _ in range(num_moves):
            state, info = adaptation.step(state, potential)
            total += float(info.accept_prob.nan_to_num(0.0).mean())
            self.num_grad_evals += info.num_grad_evals
        self.num_grad_evals += 1
        return state.position, total / num_moves
