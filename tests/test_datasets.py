"""Toy data sets against their known structure and log densities; loading and validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Z99
from scipy import stats
from torch import Tensor

from pyro_flowebm import datasets
from pyro_flowebm.datasets import TOYS, Toy, load, load_file, validate_data

MIXTURES = ["eight_gaussians", "mixture_unequal"]
WITH_LOG_PROB = ["eight_gaussians", "mixture_unequal", "rings", "checkerboard"]
N = 20000


def draws(name: str, n: int = N, seed: int = 0) -> Tensor:
    return TOYS[name].sample(n, generator=torch.Generator().manual_seed(seed))


def z_bound(tests: int) -> float:
    """The two-sided 1% normal quantile for a family of ``tests`` z-tests (Bonferroni).

    One test is the suite's Z99; the max of K simultaneous z-scores is held to the
    1 - 0.01 / (2 K) quantile, so that a whole assert fails with probability <= 1%.
    """
    return Z99 if tests == 1 else float(stats.norm.ppf(1 - 0.005 / tests))


def binomial_z(count: Tensor, n: int, p: Tensor) -> Tensor:
    """|frequency - p| over its binomial standard error."""
    return (count / n - p).abs() / (p * (1 - p) / n).sqrt()


def mean_z(y: Tensor, truth: Tensor | float) -> Tensor:
    """|mean - truth| over the standard error estimated from the draws, per column."""
    return (y.mean(0) - truth).abs() / (y.std(0) / len(y) ** 0.5)


def grid(lo: float, hi: float, h: float) -> tuple[Tensor, Tensor]:
    """Midpoints of a square grid of spacing h on [lo, hi]²: the axis and the (m², 2) points."""
    axis = torch.arange(lo + h / 2, hi, h)
    return axis, torch.cartesian_prod(axis, axis)


def nearest_curve(x: Tensor, curves: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Distance of each point to the nearest of ``curves`` (dense point sets) and its index."""
    dist = torch.stack([torch.cdist(x, c).min(-1).values for c in curves], dim=-1)
    return dist.min(-1)


# The registry.


def test_registry_holds_the_toys_under_their_names():
    assert set(TOYS) == {
        "eight_gaussians",
        "rings",
        "two_spirals",
        "checkerboard",
        "two_moons",
        "pinwheel",
        "mixture_unequal",
    }
    for name, toy in TOYS.items():
        assert isinstance(toy, Toy) and toy.name == name and toy.description
        assert (toy.log_prob is not None) == (name in WITH_LOG_PROB)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOYS["rings"].sd = 1.0


@pytest.mark.parametrize("name", MIXTURES)
def test_mixtures_carry_modes_weights_and_sd(name):
    toy = TOYS[name]
    k = len(toy.weights)
    assert toy.modes.shape == (k, 2) and toy.sd > 0
    assert torch.allclose(toy.weights.sum(), torch.tensor(1.0, dtype=toy.weights.dtype))
    # Well separated: the nearest modes are more than 8 sd apart.
    gaps = torch.cdist(toy.modes, toy.modes) + torch.eye(k) * 1e9
    assert gaps.min() > 8 * toy.sd


def test_eight_gaussians_toy_is_the_existing_sampler():
    toy = TOYS["eight_gaussians"]
    assert torch.equal(toy.modes, datasets.eight_gaussians_modes(dtype=torch.float64))
    assert toy.sd == 0.15 and torch.allclose(toy.weights, torch.full((8,), 1 / 8))
    g = torch.Generator().manual_seed(3)
    expected = datasets.eight_gaussians(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(toy.sample(50, generator=g), expected)


def test_mixture_unequal_has_clearly_unequal_weights():
    w = TOYS["mixture_unequal"].weights
    assert torch.allclose(w, torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]))


# Sampling contract, for every toy.


@pytest.mark.parametrize("name", sorted(TOYS))
def test_draws_are_reproducible_and_in_the_requested_dtype(name):
    toy = TOYS[name]
    a, b, c = draws(name, 100, seed=1), draws(name, 100, seed=1), draws(name, 100, seed=2)
    assert a.shape == (100, 2) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.allclose(a, c)
    x32 = toy.sample(100, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert x32.dtype == torch.float32 and torch.equal(x32, a.float())
    # generator=None draws from the global stream.
    torch.manual_seed(5)
    first = toy.sample(10)
    torch.manual_seed(5)
    assert torch.equal(toy.sample(10), first)
    assert toy.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match="expected n >= 0"):
        toy.sample(-1)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_data_lies_within_the_plotting_box(name):
    x = draws(name)
    assert (x.abs() <= 5).all(-1).double().mean() > 0.999


# Gaussian mixtures: moments, mode frequencies, log density.


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_moments_match_the_analytic_ones(name):
    toy = TOYS[name]
    w, mu, sd = toy.weights, toy.modes, toy.sd
    mean = w @ mu
    cov = (w[:, None, None] * mu[:, :, None] * mu[:, None, :]).sum(0) - mean.outer(mean)
    cov = cov + sd**2 * torch.eye(2)
    x = draws(name)
    z_mean = (x.mean(0) - mean).abs() / (cov.diagonal() / N).sqrt()
    assert (z_mean < z_bound(2)).all(), z_mean
    d = x - mean
    products = torch.stack([d[:, 0] ** 2, d[:, 1] ** 2, d[:, 0] * d[:, 1]], dim=-1)
    z_cov = mean_z(products, torch.stack([cov[0, 0], cov[1, 1], cov[0, 1]]))
    assert (z_cov < z_bound(3)).all(), z_cov


@pytest.mark.parametrize("name", MIXTURES)
def test_mode_frequencies_match_the_weights(name):
    toy = TOYS[name]
    x = draws(name)
    nearest = torch.cdist(x, toy.modes).argmin(-1)
    counts = torch.bincount(nearest, minlength=len(toy.weights)).double()
    z = binomial_z(counts, N, toy.weights)
    assert (z < z_bound(len(z))).all(), z
    # Within a component, the spread is the stated sd.
    resid = x - toy.modes[nearest]
    assert (mean_z(resid**2, toy.sd**2) < z_bound(2)).all()


@pytest.mark.parametrize("name", WITH_LOG_PROB)
def test_log_prob_integrates_to_one(name):
    h = 0.02
    _, points = grid(-6.0, 6.0, h)
    total = TOYS[name].log_prob(points).exp().sum() * h**2
    assert abs(total.item() - 1) < 1e-3, total


@pytest.mark.parametrize("name", WITH_LOG_PROB)
def test_log_prob_matches_the_sample_histogram(name):
    """Chi-square test of counts in 0.5-wide bins against the integrated density."""
    lo, hi, width, sub = -5.0, 5.0, 0.5, 25
    bins = round((hi - lo) / width)
    _, points = grid(lo, hi, width / sub)
    dens = TOYS[name].log_prob(points).exp() * (width / sub) ** 2
    # Midpoints in row-major (x, y) order: fold each bin's sub-grid into one probability.
    prob = dens.reshape(bins, sub, bins, sub).sum((1, 3)).flatten()
    x = draws(name)
    inside = (x >= lo).all(-1) & (x < hi).all(-1)
    idx = ((x[inside] - lo) / width).floor().long()
    counts = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins**2).double()
    # No draw where the density is zero (the white squares of the checkerboard).
    assert counts[prob == 0].sum() == 0
    expected = N * prob
    big = expected >= 5
    observed = torch.cat([counts[big], (N - counts[big].sum()).reshape(1)])
    expected = torch.cat([expected[big], (N - expected[big].sum()).reshape(1)])
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < stats.chi2.ppf(0.99, len(observed) - 1), (chi2, len(observed))


def test_mixture_log_prob_is_the_weighted_sum_of_normal_densities():
    toy = TOYS["mixture_unequal"]
    x = torch.tensor([[0.3, -0.2], [-3.1, 2.5], [4.0, 4.0]])
    d2 = ((x[:, None, :] - toy.modes) ** 2).sum(-1)
    density = (toy.weights * torch.exp(-d2 / (2 * toy.sd**2)) / (2 * math.pi * toy.sd**2)).sum(-1)
    assert torch.allclose(toy.log_prob(x), density.log())


# Rings.


def test_rings_log_prob_is_the_circle_average_of_the_noise_density():
    """p(x) = mean over rings and angles of N(x; r (cos θ, sin θ), sd² I), by quadrature."""
    x = torch.tensor([[0.0, 0.0], [1.05, 0.0], [0.3, -2.9], [2.5, 2.5], [-4.1, 0.2]])
    radii, sd = datasets._RING_RADII, datasets._RING_SD
    theta = torch.arange(4096) * (2 * math.pi / 4096)
    circles = radii[:, None, None] * torch.stack([theta.cos(), theta.sin()], -1)
    d2 = ((x[:, None, None, :] - circles) ** 2).sum(-1)
    density = (torch.exp(-d2 / (2 * sd**2)) / (2 * math.pi * sd**2)).mean((1, 2))
    assert torch.allclose(TOYS["rings"].log_prob(x).exp(), density, rtol=1e-9, atol=1e-300)


def test_rings_radii_cluster_at_the_stated_radii_in_equal_shares():
    radii, sd = datasets._RING_RADII, datasets._RING_SD
    assert radii.tolist() == [1.0, 2.0, 3.0, 4.0]
    r = torch.linalg.vector_norm(draws("rings"), dim=-1)
    ring = (r[:, None] - radii).abs().argmin(-1)
    counts = torch.bincount(ring, minlength=4).double()
    assert (binomial_z(counts, N, torch.tensor(0.25)) < z_bound(4)).all(), counts
    # |x| = |r e1 + sd z|: E|x| by 2-D Gauss-Hermite quadrature, E|x|² = r² + 2 sd² exactly.
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = torch.as_tensor(weights / weights.sum())
    z1, z2 = torch.as_tensor(nodes)[:, None], torch.as_tensor(nodes)[None, :]
    for k, radius in enumerate(radii.tolist()):
        norm = ((radius + sd * z1) ** 2 + (sd * z2) ** 2).sqrt()
        mean = weights @ norm @ weights
        var = radius**2 + 2 * sd**2 - mean**2
        rk = r[ring == k, None]
        assert mean_z(rk, mean) < z_bound(8)
        assert mean_z((rk - mean) ** 2, var) < z_bound(8)


# Two spirals, two moons, checkerboard, pinwheel: structure.


def test_two_spirals_lie_on_two_point_symmetric_arms_in_equal_shares():
    n = 4000
    x = draws("two_spirals", n)
    t = torch.linspace(0, datasets._SPIRAL_TURNS, 1500)
    arm = datasets._spiral_curve(t)
    assert torch.linalg.vector_norm(arm[-1]) == pytest.approx(4.0)
    dist, which = nearest_curve(x, [arm, -arm])
    assert dist.max() < 6 * datasets._SPIRAL_SD
    assert binomial_z(which.sum().double(), n, torch.tensor(0.5)) < Z99
    # x -> -x maps one arm onto the other: the mean is zero.
    assert (mean_z(x, 0.0) < z_bound(2)).all()


def test_two_moons_are_two_equal_half_circles():
    n = 4000
    x = draws("two_moons", n)
    t = torch.linspace(0, math.pi, 1000)
    upper = 2 * torch.stack([t.cos() - 0.5, t.sin() - 0.25], -1)
    dist, which = nearest_curve(x, [upper, -upper])
    assert dist.max() < 6 * datasets._MOONS_SD
    assert binomial_z(which.sum().double(), n, torch.tensor(0.5)) < Z99
    assert (mean_z(x, 0.0) < z_bound(2)).all()
    # The moons interleave: the upper one's tips reach below the lower one's top.
    assert x[which == 0, 1].min() < 0 < x[which == 1, 1].max()


def test_checkerboard_points_fall_only_in_black_squares_uniformly():
    x = draws("checkerboard")
    cell = torch.floor(x / 2)
    assert ((x >= -4) & (x < 4)).all()
    assert (cell.sum(-1) % 2 == 0).all()
    cell_id = ((cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)).long()
    counts = torch.bincount(cell_id, minlength=16).double()
    black = counts > 0
    assert black.sum() == 8
    assert (binomial_z(counts[black], N, torch.tensor(1 / 8)) < z_bound(8)).all(), counts
    # Uniform within a square: the offset in it has mean 1 and variance 4 / 12.
    offset = x - 2 * cell
    assert (mean_z(offset, 1.0) < z_bound(2)).all()
    assert (mean_z((offset - 1) ** 2, 4 / 12) < z_bound(2)).all()


def test_pinwheel_is_invariant_under_rotation_by_72_degrees():
    x = draws("pinwheel")
    angle = torch.atan2(x[:, 1], x[:, 0])
    for start in (0.0, 0.6):
        sector = torch.floor((angle - start) % (2 * math.pi) / (2 * math.pi / 5)).long()
        counts = torch.bincount(sector, minlength=5).double()
        assert (binomial_z(counts, N, torch.tensor(0.2)) < z_bound(5)).all(), counts
    # 5-fold symmetry: E[z] = E[z²] = 0 for z = x1 + i x2 (isotropic covariance).
    z = torch.complex(x[:, 0], x[:, 1])
    moments = torch.stack([z.real, z.imag, (z**2).real, (z**2).imag], -1)
    assert (mean_z(moments, 0.0) < z_bound(4)).all()
    # ... but arms, not a disc: within a 72° period the angles are far from uniform.
    folded = torch.floor((angle % (2 * math.pi / 5)) / (2 * math.pi / 40)).long()
    counts = torch.bincount(folded, minlength=8).double()
    chi2 = ((counts - N / 8) ** 2 / (N / 8)).sum().item()
    assert chi2 > 100 * stats.chi2.ppf(0.99, 7)


# Loading and validation.


def test_load_file_round_trips_npy_pt_and_csv(tmp_path: Path):
    data = torch.tensor([[0.5, -1.0, 2.0], [3.0, 4.25, -5.0], [1e-3, 7.0, 8.0]])
    np.save(tmp_path / "d.npy", data.numpy())
    torch.save(data, tmp_path / "d.pt")
    rows = "\n".join(",".join(repr(v) for v in row) for row in data.tolist())
    (tmp_path / "plain.csv").write_text(rows + "\n")
    (tmp_path / "header.csv").write_text("a, b ,c\n" + rows + "\n\n")
    for file in ["d.npy", "d.pt", "plain.csv", "header.csv"]:
        x = load_file(tmp_path / file)
        assert x.dtype == torch.get_default_dtype() and torch.equal(x, data), file
    (tmp_path / "one_column.csv").write_text("x\n1\n2\n3\n")
    assert load_file(str(tmp_path / "one_column.csv")).shape == (3, 1)
    np.save(tmp_path / "ints.npy", np.arange(6).reshape(3, 2))
    assert torch.equal(load_file(tmp_path / "ints.npy"), torch.arange(6.0).reshape(3, 2))


def test_load_file_returns_the_default_dtype(tmp_path: Path):
    torch.save(torch.ones(4, 2, dtype=torch.float64), tmp_path / "d.pt")
    torch.set_default_dtype(torch.float32)  # restored by the conftest fixture
    assert load_file(tmp_path / "d.pt").dtype == torch.float32


@pytest.mark.parametrize(
    "file, content, match",
    [
        ("nan.npy", np.array([[1.0, np.nan], [2.0, 3.0]]), "got 1 NaN and 0 infinite"),
        ("inf.csv", "x,y\n1,inf\n2,-inf\n3,nan\n", "got 1 NaN and 2 infinite"),
        ("flat.npy", np.arange(5.0), "2-D of shape \\(n, d\\), got 1-D shape \\(5,\\)"),
        ("cube.pt", torch.zeros(2, 3, 4), "got 3-D shape \\(2, 3, 4\\)"),
        ("empty.npy", np.zeros((0, 2)), "n >= 2 rows, got 0 rows"),
        ("header_only.csv", "x,y\n", "n >= 2 rows, got 0 rows"),
        ("blank.csv", "", "n >= 2 rows, got 0 rows"),
        ("no_columns.npy", np.zeros((3, 0)), "d >= 1 columns"),
        ("one_row.csv", "x,y\n1,2\n", "n >= 2 rows, got 1 row \\(shape \\(1, 2\\)\\)"),
        ("words.csv", "x,y\n1,2\n3,four\n", "expected comma-separated numbers"),
        ("ragged.csv", "1,2\n3\n", "expected comma-separated numbers"),
        ("bool.npy", np.ones((3, 2), dtype=bool), "expected real numbers .* got dtype bool"),
        ("dict.pt", {"x": torch.zeros(3, 2)}, "expected one tensor .* got dict"),
        ("data.txt", "1,2\n3,4\n", "expected a .npy, .pt or .csv file, got .*data.txt"),
    ],
)
def test_load_file_refuses_bad_data_naming_the_file(tmp_path: Path, file, content, match):
    path = tmp_path / file
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=match) as info:
        load_file(path)
    assert str(path) in str(info.value)


def test_load_file_refuses_a_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_file(tmp_path / "missing.npy")


def test_validate_data_keeps_floats_converts_integers_and_names_the_data():
    x32 = torch.ones(3, 2, dtype=torch.float32)
    assert validate_data(x32) is x32
    assert validate_data(np.ones((2, 2))).dtype == torch.float64
    assert validate_data(np.ones((2, 2), dtype=np.int64)).dtype == torch.get_default_dtype()
    assert validate_data([[1, 2], [3, 4]]).shape == (2, 2)
    with pytest.raises(ValueError, match="expected finite values in train, got 2 NaN"):
        validate_data(torch.full((3, 2), math.nan).index_fill(0, torch.tensor([0, 1]), 0), "train")
    with pytest.raises(ValueError, match="expected real numbers in data, got dtype <U1"):
        validate_data(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="got dtype torch.complex"):
        validate_data(torch.ones(3, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="got 0-D shape \\(\\)"):
        validate_data(torch.tensor(1.0))


def test_load_by_name_is_the_toy_sampler():
    x = load("pinwheel", 300, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, draws("pinwheel", 300, seed=4))
    assert load("rings").shape == (1000, 2)


def test_load_by_path_reads_the_whole_file(tmp_path: Path):
    data = torch.arange(12.0).reshape(4, 3)
    torch.save(data, tmp_path / "d.pt")
    assert torch.equal(load(tmp_path / "d.pt", n=2), data)
    assert torch.equal(load(str(tmp_path / "d.pt")), data)


def test_load_of_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="got 'moons'") as info:
        load("moons")
    for name in TOYS:
        assert name in str(info.value)
