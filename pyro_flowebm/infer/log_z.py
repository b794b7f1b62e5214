"""The normalizing constant of a FlowEBM, by importance sampling or annealed SMC, and SMC draws.

Because the backbone is normalized, :math:`Z = \\int q(x) e^{-E(x)} dx =
\\mathbb E_{z \\sim \\mathcal N(0, I)}[e^{-E(g(z))}]`, an expectation under a law drawn
exactly. Importance sampling estimates it directly; annealed SMC in latent space carries
exact draws of :math:`\\mathcal N(0, I)` to :math:`p(z) \\propto \\mathcal N(z; 0, I)
e^{-E(g(z))}` where the importance weights degenerate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import check_choice, check_int, seeded
from ..distributions import FlowEBM, kish_ess, log_mean_exp, resampled_order
from ..io import pareto_khat
from .hmc import HMC
from .smc import SMCResult, anneal

__all__ = ["KHAT_THRESHOLD", "LogZEstimate", "SMCResampler", "estimate_log_z"]

# Above this Pareto k-hat the importance weights' tail is too heavy to trust (Vehtari et al.).
KHAT_THRESHOLD = 0.7


@dataclass(frozen=True)
class LogZEstimate:
    r"""An estimate of :math:`\log Z` and what it rests on.

    Attributes:
        log_z: the estimate of :math:`\log Z`, the logarithm of an unbiased estimate of
            :math:`Z`.
        stderr: its standard error on the log scale (see ``stderr_method``).
        ess: Kish's effective sample size of the final weights.
        method: ``"is"`` or ``"smc"``.
        num_particles: particles used.
        num_nonfinite: particles whose energy was not finite, given weight zero (for SMC,
            particle-stages).
        khat: importance sampling: the Pareto :math:`\hat k` of the weights (ArviZ's PSIS);
            ``None`` for SMC.
        reliable: importance sampling: :math:`\hat k \le 0.7`; SMC: every stage's moves
            were accepted at least 5% of the time.
        stderr_method: how ``stderr`` was computed.
        particles: the final latent particles ``z``, ``(N, *event_shape)``.
        log_weights: their normalized log-weights, ``(N,)``.
        betas: SMC: the temperature schedule, 0 to 1.
        stage_ess: SMC: Kish's ESS after each reweighting.
        stage_acceptance: SMC: mean acceptance of each stage's moves.
        num_grad_evals: gradient evaluations per particle (0 for importance sampling).
        wall_time: seconds.
    """

    log_z: float
    stderr: float
    ess: float
    method: str
    num_particles: int
    num_nonfinite: int
    khat: float | None
    reliable: bool
    stderr_method: str
    particles: Tensor = field(repr=False)
    log_weights: Tensor = field(repr=False)
    betas: tuple[float, ...] = ()
    stage_ess: tuple[float, ...] = ()
    stage_acceptance: tuple[float, ...] = ()
    num_grad_evals: int = 0
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the particles, as JSON-ready values."""
        out = {k: v for k, v in vars(self).items() if k not in ("particles", "log_weights")}
        return out | {k: list(out[k]) for k in ("betas", "stage_ess", "stage_acceptance")}

    def resample(self, num_draws: int) -> Tensor:
        """``num_draws`` latent draws from the weighted particles (systematic resampling,
        in random order)."""
        return self.particles[resampled_order(self.log_weights, num_draws)]


def estimate_log_z(
    ebm: FlowEBM,
    num_particles: int,
    *,
    method: str = "smc",
    seed: int | None = None,
    progress_bar: bool = True,
    kernel: HMC | None = None,
    num_groups: int = 16,
    num_moves: int = 4,
    target_ess: float = 0.9,
    batch_size: int = 8192,
) -> LogZEstimate:
    r"""Estimate :math:`\log Z` of a FlowEBM, :math:`Z = \mathbb E_{z \sim \mathcal N(0, I)}
    [e^{-E(g(z))}]`, with a standard error.

    - ``method="is"``: importance sampling from the backbone. :math:`\hat Z` is the mean
      weight :math:`e^{-E(g(z_i))}`; the standard error of :math:`\log\hat Z` is the delta
      method's :math:`\mathrm{sd}(w) / (\sqrt N\, \bar w)`. Pareto :math:`\hat k` above 0.7
      flags it unreliable: then the standard error cannot be trusted either.
    - ``method="smc"``: annealed SMC in latent space (:func:`~pyro_flowebm.infer.smc.anneal`)
      on :math:`p_\beta(z) \propto \mathcal N(z; 0, I) e^{-\beta E(g(z))}` from exact draws
      at :math:`\beta = 0`. The particles form ``num_groups`` independent particle systems
      moved in one batch; :math:`\hat Z` is the mean of their unbiased estimates, and the
      standard error the delta method over them (their spread, divided by
      :math:`\sqrt K`).

    Args:
        ebm: the model (its batch shape is ignored: one :math:`Z` for the event).
        num_particles: particles :math:`N`, at least 2 (SMC: a multiple of
            ``num_groups``, at least 2 per group).
        method: ``"smc"`` or ``"is"``.
        seed: seeds torch's generator for this call only.
        progress_bar: SMC: a tqdm bar over :math:`\beta`.
        kernel: SMC: the move kernel (:class:`~pyro_flowebm.infer.HMC` or ``MALA``).
        num_groups: SMC: independent particle systems for the standard error.
        num_moves: SMC: kernel steps per temperature.
        target_ess: SMC: conditional ESS fraction kept by each temperature step.
        batch_size: importance sampling: particles per energy evaluation.

    Returns:
        A :class:`LogZEstimate`.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> estimate = estimate_log_z(ebm, 1024, method="is", seed=0)
        >>> estimate.log_z, estimate.khat is not None  # E = 0 at initialization: Z = 1
        (0.0, True)
    """
    if not isinstance(ebm, FlowEBM):
        raise TypeError(f"expected a FlowEBM, got {type(ebm).__name__}")
    check_choice("method", method, ("smc", "is"))
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 2:
        raise ValueError(f"expected num_particles >= 2 (an integer), got {num_particles!r}")
    start = time.perf_counter()
    with seeded(seed, ebm.base_dist.mean.device):
        if method == "is":
            estimate = _importance(ebm, num_particles, batch_size)
        else:
            options = {"num_groups": num_groups, "num_moves": num_moves, "target_ess": target_ess}
            estimate = _from_smc(_smc(ebm, num_particles, kernel, progress_bar, **options))
    return _with_time(estimate, time.perf_counter() - start)


def _with_time(estimate: LogZEstimate, seconds: float) -> LogZEstimate:
    return LogZEstimate(**(vars(estimate) | {"wall_time": round(seconds, 3)}))


def _importance(ebm: FlowEBM, num_particles: int, batch_size: int) -> LogZEstimate:
    z, log_w = ebm.importance_draws(num_particles, batch_size)
    log_w = log_w.double()
    finite = torch.isfinite(log_w)
    if not bool(finite.any()):
        raise ValueError(
            f"expected a finite energy at some of the {num_particles} backbone draws, got "
            "none: every importance weight is zero"
        )
    w = (log_w - log_w.max()).exp()
    khat = pareto_khat(log_w) if int(finite.sum()) >= 2 else math.inf
    return LogZEstimate(
        log_z=float(log_mean_exp(log_w)),
        stderr=float(w.std() / (math.sqrt(num_particles) * w.mean())),
        ess=float(kish_ess(log_w)),
        method="is",
        num_particles=num_particles,
        num_nonfinite=int((~finite).sum()),
        khat=khat,
        reliable=khat <= KHAT_THRESHOLD,
        stderr_method="delta method over the importance weights",
        particles=z,
        log_weights=log_w - torch.logsumexp(log_w, 0),
    )


def _smc(
    ebm: FlowEBM, num_particles: int, kernel: HMC | None, progress_bar: bool, **options: Any
) -> SMCResult:
    loc = ebm.base_dist.mean
    z = torch.randn((num_particles, *ebm.event_shape), dtype=loc.dtype, device=loc.device)
    dims = tuple(range(1, 1 + len(ebm.event_shape)))

    def base(q: Tensor) -> Tensor:
        return 0.5 * q.pow(2).sum(dims)

    def tilt(q: Tensor) -> Tensor:
        return ebm.energy_of(ebm.transform(q))

    return anneal(z, base, tilt, kernel, progress_bar=progress_bar, **options)


def _from_smc(result: SMCResult) -> LogZEstimate:
    log_z, stderr = result.log_z()
    k = result.group_log_z.shape[0]
    return LogZEstimate(
        log_z=log_z,
        stderr=stderr,
        ess=float(kish_ess(result.log_weights)),
        method="smc",
        num_particles=result.position.shape[0],
        num_nonfinite=result.num_nonfinite,
        khat=None,
        reliable=all(a >= 0.05 for a in result.acceptance if not math.isnan(a)),
        stderr_method=f"delta method over {k} independent particle systems",
        particles=result.position,
        log_weights=result.log_weights,
        betas=tuple(result.betas),
        stage_ess=tuple(result.ess),
        stage_acceptance=tuple(result.acceptance),
        num_grad_evals=result.num_grad_evals,
    )


class SMCResampler:
    r"""Draws of a :class:`~pyro_flowebm.FlowEBM` by annealed SMC: a sampler for
    ``FlowEBM(..., sampler=SMCResampler())`` or ``ebm.with_sampler(SMCResampler())`` where
    importance resampling degenerates (its :math:`\hat k` above 0.7: high dimension, a
    strong tilt).

    For ``n`` draws it runs one particle system of
    :math:`\max(\text{min\_particles}, \text{particles\_per\_draw}\cdot n)` particles to
    :math:`\beta = 1` and keeps ``n`` of the final particles by systematic resampling.

    Args:
        particles_per_draw: particles per draw.
        min_particles: particles for any call.
        kernel: the move kernel (default as in :func:`~pyro_flowebm.infer.smc.anneal`).
        num_moves: kernel steps per temperature.

    Example:
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> ebm.with_sampler(SMCResampler(min_particles=256)).sample((10,)).shape
        torch.Size([10, 2])
    """

    def __init__(
        self,
        particles_per_draw: int = 4,
        min_particles: int = 1024,
        kernel: HMC | None = None,
        num_moves: int = 4,
    ) -> None:
        self.particles_per_draw = check_int("particles_per_draw", particles_per_draw, 1)
        self.min_particles = check_int("min_particles", min_particles, 2)
        self.kernel = kernel
        self.num_moves = check_int("num_moves", num_moves, 0)

    def __repr__(self) -> str:
        return (
            f"SMCResampler(particles_per_draw={self.particles_per_draw}, "
            f"min_particles={self.min_particles}, num_moves={self.num_moves})"
        )

    def __call__(self, ebm: FlowEBM, num_draws: int) -> Tensor:
        num_particles = max(self.min_particles, self.particles_per_draw * num_draws)
        with torch.enable_grad():
            result = _smc(
                ebm, num_particles, self.kernel, False, num_groups=1, num_moves=self.num_moves
            )
        return _from_smc(result).resample(num_draws)
