"""Sample-quality metrics against closed forms, exact identities and Monte Carlo z-tests."""

from __future__ import annotations

import json
import math

import normflows as nf
import numpy as np
import pytest
import scipy.stats
import torch
from conftest import Z99

from pyro_flowebm import NormflowsTransform, datasets, flow_backbone, flows, metrics
from pyro_flowebm.metrics import (
    ModeCoverage,
    bits_per_dim,
    energy_distance,
    evaluate_samples,
    grid_kl,
    mmd,
    mode_coverage,
    mode_weight_error,
    two_sample,
)


def standard_normal_2d(p: torch.Tensor) -> torch.Tensor:
    return -0.5 * (p**2).sum(-1)


def z_score(values: list[float], truth: float) -> float:
    """|mean - truth| / (sd / sqrt(R)) over R independent repeats."""
    v = torch.tensor(values)
    return float((v.mean() - truth).abs() / (v.std() / math.sqrt(len(values))))


# ------------------------------------------------------------------------------- MMD


def mmd_gaussian_1d(m: float, s: float, h: float) -> float:
    """Population MMD² between N(0, s²) and N(m, s²) with an RBF kernel of bandwidth h.

    E exp(-Z²/(2h²)) = h / sqrt(h² + τ²) exp(-μ²/(2(h² + τ²))) for Z ~ N(μ, τ²), and each
    difference X - X', Y - Y', X - Y has variance τ² = 2s².
    """
    c = h**2 + 2 * s**2
    return 2 * h / math.sqrt(c) * (1 - math.exp(-(m**2) / (2 * c)))


def test_mmd_of_the_same_law_is_zero_on_average():
    # The U-statistic is unbiased, also with the median bandwidth: given the pooled
    # points, within and cross pairs are exchangeable under the null.
    values = [float(mmd(torch.randn(100, 2), torch.randn(100, 2))) for _ in range(40)]
    assert min(values) < 0  # unbiased, so some estimates are negative
    assert z_score(values, 0.0) < Z99


def test_mmd_matches_the_gaussian_closed_form():
    m, s, h = 1.0, 1.0, 1.0
    truth = mmd_gaussian_1d(m, s, h)
    values = [
        float(mmd(s * torch.randn(300, 1), m + s * torch.randn(300, 1), bandwidth=h))
        for _ in range(30)
    ]
    assert z_score(values, truth) < Z99, (sum(values) / len(values), truth)


def test_mmd_is_large_for_shifted_laws():
    x = torch.randn(300, 2)
    near = mmd(x, torch.randn(300, 2))
    far = mmd(x, torch.randn(300, 2) + torch.tensor([3.0, 0.0]))
    assert far > 0.5 > 20 * near.abs()


def test_mmd_is_symmetric_and_accepts_numpy():
    x, y = torch.randn(50, 3), torch.randn(70, 3) + 0.5
    torch.testing.assert_close(mmd(x, y), mmd(y, x), rtol=1e-12, atol=0)
    torch.testing.assert_close(mmd(x.numpy(), y.numpy()), mmd(x, y), rtol=0, atol=0)


def test_blocked_sums_equal_the_unblocked_ones(monkeypatch: pytest.MonkeyPatch):
    x, y = torch.randn(40, 2), torch.randn(30, 2) + 1.0
    whole_mmd, whole_energy = mmd(x, y), energy_distance(x, y)
    monkeypatch.setattr(two_sample, "_BLOCK_ELEMENTS", 70)  # one or two rows per block
    # Each row is summed over the whole other sample and rows are added at the end, so
    # the block size does not change the order of summation: equal, not just close.
    assert torch.equal(mmd(x, y), whole_mmd)
    assert torch.equal(energy_distance(x, y), whole_energy)


def test_kernel_blocks_stay_under_the_budget(monkeypatch: pytest.MonkeyPatch):
    budget = 1 << 14
    monkeypatch.setattr(two_sample, "_BLOCK_ELEMENTS", budget)
    shapes = []
    cdist = torch.cdist

    def spy(a, b, **kwargs):
        shapes.append((a.shape[0], b.shape[0]))
        return cdist(a, b, **kwargs)

    monkeypatch.setattr(torch, "cdist", spy)
    mmd(torch.randn(1000, 2), torch.randn(800, 2), bandwidth=1.0)
    assert sum(r * c for r, c in shapes) == 1000**2 + 800**2 + 1000 * 800  # each pair once
    assert max(r * c for r, c in shapes) <= budget


@pytest.mark.parametrize("n", [60, 1500])
def test_median_bandwidth_is_the_median_pairwise_distance(n: int):
    x, y = torch.randn(n, 2), 2 * torch.randn(n, 2)
    pooled = torch.cat([x, y])
    if 2 * n > 2000:  # the documented deterministic subsample
        pooled = pooled[torch.arange(2000) * (2 * n) // 2000]
    i, j = torch.triu_indices(len(pooled), len(pooled), offset=1)
    h = torch.median(torch.cdist(pooled, pooled)[i, j])
    torch.testing.assert_close(metrics.median_bandwidth(x, y), h, rtol=1e-12, atol=0)
    torch.testing.assert_close(mmd(x, y), mmd(x, y, bandwidth=h), rtol=1e-12, atol=0)


def test_metrics_keep_dtype_and_promote():
    x32, y32 = torch.randn(30, 2, dtype=torch.float32), torch.randn(30, 2, dtype=torch.float32)
    assert mmd(x32, y32).dtype == torch.float32
    assert energy_distance(x32, y32).dtype == torch.float32
    assert mmd(x32, y32.double()).dtype == torch.float64


def test_mmd_has_gradients():
    x = torch.randn(20, 2, requires_grad=True)
    mmd(x, torch.randn(20, 2) + 1.0).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------- energy distance


def folded_normal_mean(mu: float, sigma: float) -> float:
    """E|N(μ, σ²)| = σ sqrt(2/π) exp(-μ²/(2σ²)) + μ (1 - 2Φ(-μ/σ))."""
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * (
        1 - 2 * scipy.stats.norm.cdf(-mu / sigma)
    )


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 1.0), (1.0, math.sqrt(2)), (-2.5, 0.7)])
def test_folded_normal_mean_formula(mu: float, sigma: float):
    expected = scipy.stats.foldnorm(abs(mu) / sigma, scale=sigma).mean()
    assert folded_normal_mean(mu, sigma) == pytest.approx(expected, rel=1e-12)


def test_energy_distance_matches_the_gaussian_closed_form():
    # X ~ N(0, 1), Y ~ N(m, 1): X - Y ~ N(-m, 2), X - X' ~ N(0, 2), Y - Y' ~ N(0, 2).
    m = 1.0
    truth = 2 * folded_normal_mean(-m, math.sqrt(2)) - 2 * folded_normal_mean(0.0, math.sqrt(2))
    values = [
        float(energy_distance(torch.randn(300, 1), m + torch.randn(300, 1))) for _ in range(30)
    ]
    assert z_score(values, truth) < Z99, (sum(values) / len(values), truth)


def test_energy_distance_is_symmetric_and_zero_for_the_same_law():
    x, y = torch.randn(80, 2), torch.randn(60, 2) + 1.0
    torch.testing.assert_close(energy_distance(x, y), energy_distance(y, x), rtol=1e-12, atol=0)
    values = [float(energy_distance(torch.randn(100, 2), torch.randn(100, 2))) for _ in range(40)]
    assert z_score(values, 0.0) < Z99


def test_energy_distance_of_two_points_each_by_hand():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0], [5.0]])
    # E|X-Y| = (3 + 5 + 2 + 4) / 4 = 3.5, E|X-X'| = 1, E|Y-Y'| = 2.
    assert float(energy_distance(x, y)) == 2 * 3.5 - 1 - 2


# ---------------------------------------------------------------------- mode metrics

MODES = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])


def test_mode_coverage_by_hand():
    x = torch.tensor([[0.0, 1.0], [5.0, 0.5], [5.0, -0.5], [10.0, 10.0], [0.0, 5.0]])
    c = mode_coverage(x, MODES, radius=1.0)  # [0, 1] lies exactly at the radius: counts
    assert isinstance(c, ModeCoverage)
    assert c.per_mode.tolist() == [0.2, 0.4, 0.2]
    assert (c.covered, c.fraction_near_modes) == (3, 0.8)
    c = mode_coverage(x, MODES, radius=0.6)
    assert c.per_mode.tolist() == [0.0, 0.4, 0.2]
    assert (c.covered, c.fraction_near_modes) == (2, 0.6)


def test_mode_coverage_counts_a_point_for_every_mode_within_radius():
    c = mode_coverage(torch.tensor([[2.5, 0.0]]), MODES, radius=3.0)
    assert c.per_mode.tolist() == [1.0, 1.0, 0.0]
    assert (c.covered, c.fraction_near_modes) == (2, 1.0)


def test_mode_coverage_of_exact_mixture_draws_within_three_sd():
    sd, n = 0.3, 20_000
    x = MODES[torch.randint(3, (n,))] + sd * torch.randn(n, 2)
    c = mode_coverage(x, MODES, radius=3 * sd)
    # |N(0, sd² I_2)| <= 3 sd has probability 1 - exp(-9/2) (chi with 2 degrees of freedom).
    p = 1 - math.exp(-4.5)
    assert c.covered == 3
    assert abs(c.fraction_near_modes - p) < Z99 * math.sqrt(p * (1 - p) / n)


def test_mode_weight_error_by_hand():
    x = torch.tensor([[0.1, 0.0], [4.9, 0.0], [5.1, 0.2], [0.0, 4.0], [20.0, 0.0]])
    w = torch.tensor([0.5, 0.25, 0.25])
    # Nearest centres: 0, 1, 1, 2, 1 -> [0.2, 0.6, 0.2]; L1 = 0.3 + 0.35 + 0.05.
    torch.testing.assert_close(mode_weight_error(x, MODES, w), torch.tensor(0.7))
    # Within radius 1.5: points 0, 1, 2, 3 -> [0.25, 0.5, 0.25]; L1 = 0.25 + 0.25 + 0.
    torch.testing.assert_close(mode_weight_error(x, MODES, w, radius=1.5), torch.tensor(0.5))
    # No point within radius: the maximum, 2.
    assert float(mode_weight_error(x + 100.0, MODES, w, radius=1.0)) == 2.0


@pytest.mark.parametrize("weights", [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
def test_mode_weight_error_of_exact_mixture_draws(weights: list[float]):
    w, n = torch.tensor(weights), 5000
    labels = torch.multinomial(w, n, replacement=True)
    x = MODES[labels] + 0.3 * torch.randn(n, 2)  # modes 5 apart: nearest centre = component
    counts = torch.bincount(labels, minlength=3) / n
    error = mode_weight_error(x, MODES, w)
    torch.testing.assert_close(error, (counts - w).abs().sum(), rtol=1e-12, atol=1e-15)
    # Each sampled weight is Binomial(n, w_k) / n: a z-test per mode bounds the sum.
    assert error < Z99 * torch.sqrt(w * (1 - w) / n).sum()


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_mode_weight_error_of_a_collapsed_sample(mode: int):
    w = torch.tensor([0.6, 0.3, 0.1])
    x = MODES[mode] + 0.3 * torch.randn(500, 2)
    error = mode_weight_error(x, MODES, w)
    torch.testing.assert_close(error, 2 - 2 * w[mode], rtol=0, atol=1e-15)
    torch.testing.assert_close(mode_weight_error(x, MODES, w, radius=2.0), error)


def test_mode_weight_error_with_radius_renormalizes_over_near_points():
    w = torch.tensor([0.5, 0.5, 0.0])
    near = torch.cat([MODES[0] + 0.1 * torch.randn(100, 2), MODES[1] + 0.1 * torch.randn(100, 2)])
    stray = torch.full((300, 2), 2.5)  # nearest to mode 0, far from every mode
    x = torch.cat([near, stray])
    assert float(mode_weight_error(x, MODES, w, radius=1.0)) == 0.0
    assert float(mode_weight_error(x, MODES, w)) == pytest.approx(2 * 0.3)


# ------------------------------------------------------------------------- grid KL


def test_grid_kl_of_true_samples_is_small_and_decreases_with_n():
    box = (-5.0, 5.0, -5.0, 5.0)
    kls = [
        float(grid_kl(torch.randn(n, 2), standard_normal_2d, extent=box, bins=50))
        for n in (
            1_000,
            10_000,
            100_000,
        )
    ]
    assert kls[0] > kls[1] > kls[2] > 0
    assert kls[2] < 0.05
    shifted = torch.randn(100_000, 2) + torch.tensor([1.0, 0.0])
    assert grid_kl(shifted, standard_normal_2d, extent=box, bins=50) > 10 * kls[2]


def test_grid_kl_matches_the_gaussian_closed_form():
    # KL(N(0, I) || N(mu, I)) = |mu|² / 2 = 0.5. Cell width 0.4: the centre-normalized
    # grid laws have KL 0.5 to 1e-6 and the cell integrals shift it by < 0.01; the
    # sampling noise has sd about sqrt((E_q[(p/q)²] - 1) / n) = sqrt((e - 1) / n) = 0.0013
    # at n = 1e6, so the tolerance 0.02 covers both with room.
    mu = torch.tensor([1.0, 0.0])
    x = torch.randn(1_000_000, 2) + mu
    kl = grid_kl(x, standard_normal_2d, extent=(-6, 6, -6, 6), bins=30)
    assert abs(float(kl) - 0.5) < 0.02


def test_grid_kl_counts_mass_off_the_grid():
    # A uniform law on the box: with 50 points per cell on average, no cell is empty.
    box, bins = (-4.0, 4.0, -4.0, 4.0), 20
    x = 8 * torch.rand(20_000, 2) - 4

    def uniform(p: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(p))

    inside = grid_kl(x, uniform, extent=box, bins=bins)
    # The same points plus as many off the grid: every cell's p̂ halves, so the KL grows
    # by log 2 (up to the 1e-10 smoothing).
    half_away = grid_kl(torch.cat([x, x + 100.0]), uniform, extent=box, bins=bins)
    assert float(half_away - inside) == pytest.approx(math.log(2), abs=1e-6)
    # Everything off the grid: every cell has p̂ = eps / (1 + eps bins²) and p = 1 / bins².
    eps, cells = 1e-10, bins**2
    far = grid_kl(x + 100.0, uniform, extent=box, bins=bins)
    assert float(far) == pytest.approx(math.log((1 + eps * cells) / (cells * eps)), rel=1e-12)


def test_grid_kl_ignores_the_normalizing_constant_of_log_prob():
    x = torch.randn(2000, 2)
    box = (-4.0, 4.0, -4.0, 4.0)
    shifted_log_prob = lambda p: standard_normal_2d(p) + 123.0  # noqa: E731
    torch.testing.assert_close(
        grid_kl(x, shifted_log_prob, extent=box, bins=10),
        grid_kl(x, standard_normal_2d, extent=box, bins=10),
    )


# ------------------------------------------------------------------- evaluate_samples


def test_evaluate_samples_returns_json_floats_with_the_expected_keys():
    w = torch.tensor([0.5, 0.3, 0.2])
    ref = MODES[torch.multinomial(w, 400, replacement=True)] + 0.3 * torch.randn(400, 2)
    x = MODES[torch.multinomial(w, 300, replacement=True)] + 0.3 * torch.randn(300, 2)

    def log_prob(p: torch.Tensor) -> torch.Tensor:
        comp = torch.distributions.Normal(MODES, 0.3).log_prob(p[:, None, :]).sum(-1)
        return torch.logsumexp(comp + w.log(), -1)

    assert sorted(evaluate_samples(x, ref)) == ["energy_distance", "mmd", "mmd_bandwidth"]
    out = evaluate_samples(x, ref, modes=MODES, weights=w, sd=0.3, log_prob=log_prob)
    assert sorted(out) == [
        "energy_distance",
        "fraction_near_modes",
        "grid_kl",
        "mmd",
        "mmd_bandwidth",
        "mode_weight_error",
        "modes_covered",
        "n_modes",
    ]
    assert all(type(v) is float for v in out.values())
    assert json.loads(json.dumps(out)) == out
    assert out["mmd"] == float(mmd(x, ref))
    assert out["energy_distance"] == float(energy_distance(x, ref))
    assert out["mode_weight_error"] == float(mode_weight_error(x, MODES, w, radius=0.9))
    assert (out["n_modes"], out["modes_covered"]) == (3.0, 3.0)
    lo, hi = ref.min(0).values, ref.max(0).values
    box = torch.stack([lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)], 1).flatten().tolist()
    assert out["grid_kl"] == float(grid_kl(x, log_prob, extent=box))

    only_weights = evaluate_samples(x.numpy(), ref.numpy(), modes=MODES.numpy(), weights=w)
    assert "mode_weight_error" in only_weights and "modes_covered" not in only_weights
    assert only_weights["mode_weight_error"] == float(mode_weight_error(x, MODES, w))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: mmd(torch.randn(5, 2), torch.randn(5, 3)),
            r"y of shape \(n, 2\).*got shape \(5, 3\)",
        ),
        (lambda: mmd(torch.randn(5), torch.randn(5, 1)), r"x of shape \(n, d\), got shape \(5,\)"),
        (lambda: energy_distance(torch.randn(1, 2), torch.randn(5, 2)), "at least 2 points"),
        (lambda: energy_distance(torch.randn(5, 2), torch.randn(1, 2)), "at least 2 points"),
        (lambda: mmd(torch.randn(5, 2), torch.randn(5, 2), bandwidth=0.0), "bandwidth > 0"),
        (lambda: mmd(torch.zeros(5, 2), torch.zeros(5, 2)), "pass bandwidth="),
        (lambda: mode_coverage(torch.randn(5, 2), torch.randn(3), radius=1.0), r"\(K, 2\)"),
        (lambda: mode_coverage(torch.randn(5, 2), torch.randn(3, 3), radius=1.0), r"\(K, 2\)"),
        (lambda: mode_coverage(torch.randn(5, 2), MODES, radius=-1.0), "radius > 0"),
        (
            lambda: mode_weight_error(torch.randn(5, 2), MODES, torch.tensor([0.5, 0.5])),
            r"weights of shape \(3,\).*got shape \(2,\)",
        ),
        (
            lambda: mode_weight_error(torch.randn(5, 2), MODES, torch.tensor([0.5, 0.3, 0.3])),
            "summing to 1",
        ),
        (
            lambda: mode_weight_error(torch.randn(5, 2), MODES, torch.tensor([1.2, -0.1, -0.1])),
            "non-negative",
        ),
        (
            lambda: grid_kl(torch.randn(5, 3), standard_normal_2d, extent=(-1, 1, -1, 1)),
            r"\(n, 2\) for a 2-D grid",
        ),
        (
            lambda: grid_kl(torch.randn(5, 2), standard_normal_2d, extent=(1, -1, -1, 1)),
            "increasing",
        ),
        (lambda: grid_kl(torch.randn(5, 2), standard_normal_2d, extent=(-1, 1)), "extent"),
        (
            lambda: grid_kl(torch.randn(5, 2), standard_normal_2d, extent=(-1, 1, -1, 1), bins=0),
            "bins a positive integer",
        ),
        (
            lambda: grid_kl(torch.randn(5, 2), lambda p: p, extent=(-1, 1, -1, 1), bins=3),
            r"return shape \(9,\)",
        ),
        (
            lambda: grid_kl(torch.randn(5, 2), lambda p: p[:, 0] * math.nan, extent=(-1, 1, -1, 1)),
            "NaN",
        ),
        (
            lambda: evaluate_samples(torch.randn(5, 2), torch.randn(5, 2), sd=1.0),
            "expected modes",
        ),
        (
            lambda: evaluate_samples(
                torch.randn(5, 3), torch.randn(5, 3), log_prob=standard_normal_2d
            ),
            "2-D samples for grid_kl",
        ),
    ],
)
def test_bad_inputs_raise(call, match: str):
    with pytest.raises(ValueError, match=match):
        call()


def test_numpy_points_give_the_same_metrics_as_tensors():
    x = np.random.default_rng(0).normal(size=(40, 2))
    t = torch.from_numpy(x)
    c_np, c_t = mode_coverage(x, MODES.numpy(), radius=2.0), mode_coverage(t, MODES, radius=2.0)
    assert torch.equal(c_np.per_mode, c_t.per_mode)
    assert float(energy_distance(x, x[::-1].copy() + 1)) == float(energy_distance(t, t.flip(0) + 1))


# -- bits per dimension ----------------------------------------------------------------------------


def _logit_normal(alpha: float) -> torch.distributions.Distribution:
    """Per pixel, v = (sigmoid(y) - alpha) / (1 - 2 alpha) with y ~ N(0, 1), built from
    torch.distributions alone: an independent computation of what glow's logit layer does."""
    beta = 1 - 2 * alpha
    return torch.distributions.TransformedDistribution(
        torch.distributions.Normal(torch.tensor(0.0), torch.tensor(1.0)),
        [
            torch.distributions.transforms.SigmoidTransform(),
            torch.distributions.transforms.AffineTransform(-alpha / beta, 1 / beta),
        ],
    )


def _logit_backbone(alpha: float, shape: tuple[int, ...]):
    return flow_backbone(NormflowsTransform([nf.transforms.Logit(alpha=alpha)], shape), shape)


def test_bits_per_dim_matches_quadrature_of_the_dequantization_bound():
    """A factorized model: E_u[log q((k + u) / L)] is a 1-D integral per pixel, computed by
    quadrature; the Monte Carlo estimate must agree within its exact standard error."""
    alpha, levels, shape = 0.05, 17, (1, 2, 2)
    images = torch.randint(levels, (30, *shape)) / levels
    u = (torch.arange(4000) + 0.5) / 4000  # midpoint rule on [0, 1)
    log_q = _logit_normal(alpha).log_prob(images.reshape(-1, 1) + u / levels)  # (pixels, 4000)
    mean, var = log_q.mean(-1), log_q.var(-1)
    d = 4
    bound = -(mean.reshape(30, d).sum(-1) - d * math.log(levels)) / (d * math.log(2))
    num_samples = 50
    # The estimator's variance: each image's bpd averages num_samples noise draws per pixel.
    sd = (var.reshape(30, d).sum(-1) / num_samples).sqrt() / (d * math.log(2))
    sd_mean = float(sd.pow(2).sum().sqrt() / 30)
    estimate, se = bits_per_dim(
        _logit_backbone(alpha, shape), images, levels, num_samples=num_samples,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert abs(estimate - float(bound.mean())) < Z99 * sd_mean
    assert se > 0


def test_dequantization_bound_is_above_the_exact_discrete_bits():
    """The exact probability of level k under the factorized model is a difference of normal
    CDFs; the bound (by quadrature) is above it, and close when levels are fine."""
    alpha, shape = 0.05, (1, 2, 2)
    normal = torch.distributions.Normal(0.0, 1.0)
    for levels in (4, 17, 256):
        k = torch.arange(levels, dtype=torch.float64)

        def logit_of(v):
            s = alpha + (1 - 2 * alpha) * v
            return torch.log(s) - torch.log1p(-s)

        exact = -torch.log(
            normal.cdf(logit_of((k + 1) / levels)) - normal.cdf(logit_of(k / levels))
        )
        u = (torch.arange(4000) + 0.5) / 4000
        log_q = _logit_normal(alpha).log_prob(k[:, None] / levels + u / levels)
        bound = -(log_q.mean(-1) - math.log(levels))  # nats per pixel, per level
        assert bool((bound >= exact - 1e-9).all())
        if levels == 256:
            assert float((bound - exact).max()) < 1e-3
        # and the function reports it for images holding every level
        images = (k / levels).reshape(-1, 1, 1, 1).expand(-1, *shape).contiguous()
        estimate, _ = bits_per_dim(
            _logit_backbone(alpha, shape), images, levels, num_samples=20,
            generator=torch.Generator().manual_seed(2),
        )  # fmt: skip
        assert estimate >= float(exact.mean()) / math.log(2) - 0.05


def test_bits_per_dim_of_an_image_flow_equals_the_change_of_variables_by_autograd():
    """Same noise, log q(v) recomputed as log N(g^-1(v)) + log|det J_{g^-1}(v)| by autograd."""
    t = flows.glow((1, 4, 4), num_levels=1, steps_per_level=2, hidden=4)
    t.inv(0.05 + 0.9 * torch.rand(16, 1, 4, 4))  # ActNorm's data-dependent initialization
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.1 * torch.randn_like(p))
    q = flow_backbone(t, (1, 4, 4))
    levels = 17
    images = torch.randint(levels, (4, 1, 4, 4)) / levels
    estimate, _ = bits_per_dim(q, images, levels, generator=torch.Generator().manual_seed(3))
    v = datasets.dequantize(images, levels, generator=torch.Generator().manual_seed(3))
    total = 0.0
    for vi in v:
        z = t.inv(vi[None])[0]
        jac = torch.autograd.functional.jacobian(lambda a: t.inv(a.reshape(1, 1, 4, 4))[0], vi)
        log_q = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        log_q = log_q + torch.linalg.slogdet(jac.reshape(16, 16))[1]
        total += float(-(log_q.detach() - 16 * math.log(levels)) / (16 * math.log(2)))
    assert estimate == pytest.approx(total / 4, abs=1e-9)


def test_bits_per_dim_refuses_bad_input():
    q = _logit_backbone(0.05, (1, 2, 2))
    with pytest.raises(ValueError, match="expected levels >= 2, got 1"):
        bits_per_dim(q, torch.zeros(4, 1, 2, 2), 1)
    with pytest.raises(
        ValueError, match=r"expected images of shape \(N, 1, 2, 2\), got \(4, 2, 2\)"
    ):
        bits_per_dim(q, torch.zeros(4, 2, 2), 17)
    with pytest.raises(ValueError, match="at least 2 images"):
        bits_per_dim(q, torch.zeros(1, 1, 2, 2), 17)
