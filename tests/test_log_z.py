"""log Z by importance sampling and annealed SMC: closed forms, a grid, bad input."""

from __future__ import annotations

import math
import statistics

import pyro.distributions as dist
import pytest
import torch
from conftest import Z99
from torch import Tensor
from torch.distributions.transforms import AffineTransform

from pyro_flowebm import FlowEBM
from pyro_flowebm.infer import HMC, MALA, LogZEstimate, anneal, estimate_log_z
from pyro_flowebm.metrics import compare_nll

# "Within 3 standard errors", as the estimates are asked to be.
WITHIN = 3.0


def affine_backbone(m: Tensor, s: Tensor) -> dist.TransformedDistribution:
    """The Gaussian backbone x = m + s z, z ~ N(0, I)."""
    base = dist.Normal(torch.zeros_like(m), torch.ones_like(m)).to_event(1)
    return dist.TransformedDistribution(base, [AffineTransform(m, s, event_dim=1)])


def quadratic_case(d: int, seed: int = 0) -> tuple[FlowEBM, float]:
    """x = m + s z tilted by E(x) = sum_i a_i (x_i - c_i)^2 / 2, and its log Z in closed form:
    log Z = sum_i [-log(1 + a_i s_i^2) / 2 - a_i (m_i - c_i)^2 / (2 (1 + a_i s_i^2))]."""
    g = torch.Generator().manual_seed(seed)
    m, s = torch.randn(d, generator=g), 0.5 + torch.rand(d, generator=g)
    a, c = 0.5 + torch.rand(d, generator=g), torch.randn(d, generator=g)

    def energy(x: Tensor) -> Tensor:
        return 0.5 * (a * (x - c) ** 2).sum(-1)

    precision = 1 + a * s**2
    log_z = (-0.5 * precision.log() - 0.5 * a * (m - c) ** 2 / precision).sum()
    return FlowEBM(affine_backbone(m, s), energy), float(log_z)


def z_score(estimate: LogZEstimate, truth: float) -> float:
    return abs(estimate.log_z - truth) / estimate.stderr


@pytest.mark.parametrize("d, num_particles", [(2, 1024), (16, 1024), (64, 2048)])
def test_smc_matches_the_closed_form(d: int, num_particles: int):
    ebm, truth = quadratic_case(d)
    estimate = estimate_log_z(ebm, num_particles, method="smc", seed=d, progress_bar=False)
    assert z_score(estimate, truth) < WITHIN, (estimate.log_z, truth, estimate.stderr)
    assert estimate.method == "smc" and estimate.reliable and estimate.khat is None
    assert estimate.betas[0] == 0 and estimate.betas[-1] == 1
    assert all(b < c for b, c in zip(estimate.betas, estimate.betas[1:], strict=False))
    assert len(estimate.stage_ess) == len(estimate.stage_acceptance) == len(estimate.betas) - 1
    assert estimate.particles.shape == (num_particles, d)
    assert torch.logsumexp(estimate.log_weights, 0).abs() < 1e-9
    assert 1 <= estimate.ess <= num_particles


def test_smc_standard_error_matches_the_spread_of_repeats():
    # 20 independent runs at d = 16: the mean reported standard error is the spread of the
    # estimates within a factor 1.5 (the spread of 20 has a relative error of ~16%).
    ebm, truth = quadratic_case(16)
    runs = [estimate_log_z(ebm, 1024, seed=s, progress_bar=False) for s in range(20)]
    spread = statistics.stdev(r.log_z for r in runs)
    reported = statistics.mean(r.stderr for r in runs)
    assert 1 / 1.5 < reported / spread < 1.5, (reported, spread)
    mean = statistics.mean(r.log_z for r in runs)
    assert abs(mean - truth) / (spread / math.sqrt(20)) < Z99


def test_importance_sampling_passes_in_2d_and_flags_high_dimensions():
    ebm, truth = quadratic_case(2)
    estimate = estimate_log_z(ebm, 4096, method="is", seed=0)
    assert z_score(estimate, truth) < WITHIN
    assert estimate.reliable and estimate.khat <= 0.7 and estimate.num_grad_evals == 0
    assert estimate.stderr_method.startswith("delta method")
    ebm, truth = quadratic_case(64)
    estimate = estimate_log_z(ebm, 4096, method="is", seed=0)
    # It fails there (the weights have collapsed), and says so.
    assert abs(estimate.log_z - truth) > 1
    assert estimate.khat > 0.7 and not estimate.reliable and estimate.ess < 10


def test_the_estimate_of_z_is_unbiased_not_its_log():
    # IS with a weight that takes two values: E[Z_hat] = Z exactly, so the mean of many
    # small-sample estimates of Z (not of log Z) is within its Monte Carlo error of Z.
    ebm, truth = quadratic_case(2, seed=3)
    estimates = torch.tensor(
        [estimate_log_z(ebm, 16, method="is", seed=s).log_z for s in range(400)]
    ).exp()
    se = estimates.std() / math.sqrt(estimates.numel())
    assert abs(float(estimates.mean()) - math.exp(truth)) / se < Z99


def grid_log_z(ebm: FlowEBM, half_width: float = 20.0, n: int = 1601) -> tuple[float, float]:
    """log Z of a 2-D model by a Riemann sum, and the backbone's mass on the grid."""
    line = torch.linspace(-half_width, half_width, n, dtype=ebm.base_dist.mean.dtype)
    h = float(line[1] - line[0])
    points = torch.stack(torch.meshgrid(line, line, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        chunks = points.split(50_000)
        log_q = torch.cat([ebm.backbone.log_prob(c) for c in chunks]).double()
        energy = torch.cat([ebm.energy_of(c) for c in chunks]).double()
    area = 2 * math.log(h)
    return float(torch.logsumexp(log_q - energy, 0) + area), float((log_q + area).exp().sum())


@pytest.mark.parametrize("method", ["is", "smc"])
def test_both_methods_agree_with_a_grid_on_a_trained_model(trained: FlowEBM, method: str):
    truth, mass = grid_log_z(trained)
    assert abs(mass - 1) < 1e-3  # the grid holds the backbone: the Riemann sum is the truth
    estimate = estimate_log_z(trained, 4096, method=method, seed=1, progress_bar=False)
    assert z_score(estimate, truth) < WITHIN, (estimate.log_z, truth, estimate.stderr)
    assert estimate.reliable


def half_plane_case(value: float) -> tuple[FlowEBM, float]:
    """x = m + s z with E = 0 where x_0 < 0 and ``value`` (inf or NaN) elsewhere: Z is the
    backbone's mass on the half plane, Phi(-m_0 / s_0)."""
    m, s = torch.tensor([0.5, 0.0]), torch.tensor([1.0, 2.0])

    def energy(x: Tensor) -> Tensor:
        return torch.where(x[..., 0] < 0, 0.0, value) + 0.0 * x.sum(-1)

    log_z = math.log(0.5 * math.erfc(0.5 / math.sqrt(2)))
    return FlowEBM(affine_backbone(m, s), energy), log_z


@pytest.mark.parametrize("value", [math.inf, math.nan])
@pytest.mark.parametrize("method", ["is", "smc"])
def test_non_finite_energies_get_zero_weight_and_are_counted(value: float, method: str):
    ebm, truth = half_plane_case(value)
    estimate = estimate_log_z(ebm, 2048, method=method, seed=0, progress_bar=False)
    assert z_score(estimate, truth) < WITHIN, (estimate.log_z, truth, estimate.stderr)
    # About 69% of the backbone lies where the energy is not finite.
    assert estimate.num_nonfinite > 0.5 * 2048
    assert torch.isfinite(estimate.log_weights).sum() > 0


@pytest.mark.parametrize("method", ["is", "smc"])
def test_bad_input_is_a_clear_error(method: str):
    ebm, _ = half_plane_case(math.nan)
    nowhere = FlowEBM(ebm.backbone, lambda x: torch.full(x.shape[:-1], math.nan))
    with pytest.raises(ValueError, match="expected a finite .* got .*(none|all have weight zero)"):
        estimate_log_z(nowhere, 64, method=method, num_groups=2, progress_bar=False)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match=f"expected num_particles >= 2 .* got {bad!r}"):
            estimate_log_z(ebm, bad, method=method)
    with pytest.raises(ValueError, match="expected method"):
        estimate_log_z(ebm, 64, method="mcmc")
    with pytest.raises(TypeError, match="expected a FlowEBM"):
        estimate_log_z(lambda x: x, 64, method=method)


def test_smc_takes_the_package_kernels_and_refuses_others():
    ebm, truth = quadratic_case(2)
    estimate = estimate_log_z(ebm, 512, kernel=MALA(0.5), seed=0, progress_bar=False)
    assert z_score(estimate, truth) < WITHIN
    with pytest.raises(TypeError, match="expected an HMC or MALA kernel"):
        estimate_log_z(ebm, 512, kernel=HMC(chees=True), progress_bar=False)
    with pytest.raises(ValueError, match="divisible by num_groups=16, got 100"):
        estimate_log_z(ebm, 100, progress_bar=False)


def test_anneal_between_two_gaussians_in_closed_form():
    # pi_0 = N(0, I), pi_1 = N(0, I / (1 + k)): Z_1 / Z_0 = (1 + k)^(-d / 2).
    d, k = 8, 3.0

    def base(z: Tensor) -> Tensor:
        return 0.5 * z.pow(2).sum(-1)

    def tilt(z: Tensor) -> Tensor:
        return 0.5 * k * z.pow(2).sum(-1)

    torch.manual_seed(0)
    result = anneal(torch.randn(2048, d), base, tilt, num_groups=16, progress_bar=False)
    r = (result.group_log_z - result.group_log_z.max()).exp()
    estimate = float(result.group_log_z.logsumexp(0) - math.log(16))
    stderr = float(r.std() / (4 * r.mean()))
    assert abs(estimate + 0.5 * d * math.log(1 + k)) / stderr < WITHIN
    # The particles follow pi_1: variance 1 / (1 + k) per coordinate.
    w = result.log_weights.exp()[:, None]
    variance = (w * result.position.double().pow(2)).sum(0)
    assert ((variance - 1 / (1 + k)).abs() < 0.05).all(), variance
    assert result.num_grad_evals > 0 and result.resampled[-1] >= 0


def test_the_normalized_ebm_gives_the_exact_held_out_likelihood():
    # p of the quadratic case is a Gaussian: precision 1/s^2 + a, mean (m/s^2 + a c) / that.
    # The EBM's per-point NLL from compare_nll is the exact one up to log Z's error.
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(2, generator=g), 0.5 + torch.rand(2, generator=g)
    a, c = 0.5 + torch.rand(2, generator=g), torch.randn(2, generator=g)
    precision = 1 / s**2 + a
    exact = dist.Normal((m / s**2 + a * c) / precision, precision.rsqrt()).to_event(1)
    ebm, _ = quadratic_case(2)
    estimate = estimate_log_z(ebm, 4096, method="is", seed=0)
    data = exact.sample((500,))
    nll = compare_nll(ebm.backbone, ebm.normalized(estimate), data)
    truth = -exact.log_prob(data).mean()
    assert abs(nll["ebm"]["value"] - truth) < WITHIN * estimate.stderr
    assert nll["ebm"]["stderr"] > estimate.stderr  # the points' spread, and log Z's error
    with pytest.raises(ValueError, match="expected a normalized model, got a FlowEBM without"):
        compare_nll(ebm.backbone, ebm, data)
