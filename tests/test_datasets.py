"""Toy data sets against their known structure and log densities; loading and validation; images."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Z99, z_bound
from scipy import stats
from torch import Tensor

from pyro_flowebm import datasets
from pyro_flowebm.datasets import (
    IMAGE_SETS,
    TOYS,
    ImageSet,
    Toy,
    dequantize,
    images,
    load,
    load_file,
    load_images,
    toys,
    validate_data,
)

MIXTURES = ["eight_gaussians", "mixture_unequal"]
WITH_LOG_PROB = ["eight_gaussians", "mixture_unequal", "rings", "checkerboard"]
N = 20000


def draws(name: str, n: int = N, seed: int = 0) -> Tensor:
    return TOYS[name].sample(n, generator=torch.Generator().manual_seed(seed))


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
    radii, sd = toys._RING_RADII, toys._RING_SD
    theta = torch.arange(4096) * (2 * math.pi / 4096)
    circles = radii[:, None, None] * torch.stack([theta.cos(), theta.sin()], -1)
    d2 = ((x[:, None, None, :] - circles) ** 2).sum(-1)
    density = (torch.exp(-d2 / (2 * sd**2)) / (2 * math.pi * sd**2)).mean((1, 2))
    assert torch.allclose(TOYS["rings"].log_prob(x).exp(), density, rtol=1e-9, atol=1e-300)


def test_rings_radii_cluster_at_the_stated_radii_in_equal_shares():
    radii, sd = toys._RING_RADII, toys._RING_SD
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
    t = torch.linspace(0, toys._SPIRAL_TURNS, 1500)
    arm = toys._spiral_curve(t)
    assert torch.linalg.vector_norm(arm[-1]) == pytest.approx(4.0)
    dist, which = nearest_curve(x, [arm, -arm])
    assert dist.max() < 6 * toys._SPIRAL_SD
    assert binomial_z(which.sum().double(), n, torch.tensor(0.5)) < Z99
    # x -> -x maps one arm onto the other: the mean is zero.
    assert (mean_z(x, 0.0) < z_bound(2)).all()


def test_two_moons_are_two_equal_half_circles():
    n = 4000
    x = draws("two_moons", n)
    t = torch.linspace(0, math.pi, 1000)
    upper = 2 * torch.stack([t.cos() - 0.5, t.sin() - 0.25], -1)
    dist, which = nearest_curve(x, [upper, -upper])
    assert dist.max() < 6 * toys._MOONS_SD
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


# Images: the digits.


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def test_image_sets_are_named():
    assert IMAGE_SETS == ("digits", "cifar10", "svhn")


@pytest.mark.parametrize("split, n", [("train", 1500), ("validation", 297), ("all", 1797)])
def test_digits_splits_have_the_documented_sizes_shapes_and_levels(split, n):
    s = load_images("digits", split)
    assert isinstance(s, ImageSet) and s.name == "digits" and s.levels == 17
    assert s.images.shape == (n, 1, 8, 8) and s.images.dtype == torch.float32
    assert s.labels.shape == (n,) and s.labels.dtype == torch.int64
    assert set(s.labels.tolist()) == set(range(10))


def test_digits_are_sklearn_digits_on_the_lattice_k_over_17():
    pixels, target = sklearn_digits()
    s = load_images("digits", "all")
    k = s.images * 17
    # Exactly on the lattice: float32(k) / 17 is the correctly rounded k / 17.
    assert torch.equal(s.images, k.round() / 17)
    assert k.round().min() == 0 and k.round().max() == 16
    assert torch.equal(k.round().double(), torch.as_tensor(pixels)[:, None])
    assert torch.equal(s.labels, torch.as_tensor(target))


def test_digits_split_is_a_disjoint_cover_of_the_data_set():
    whole = load_images("digits", "all")
    train_idx, val_idx = images._digits_split(whole.labels.numpy())
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(1797))
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        s = load_images("digits", split)
        assert torch.equal(s.images, whole.images[idx]) and torch.equal(s.labels, whole.labels[idx])


def test_digits_split_is_stratified_and_never_changes():
    whole = load_images("digits", "all").labels
    val = load_images("digits", "validation").labels
    # Each class in proportion to its size, within one image (largest remainders).
    share = torch.bincount(whole).double() * 297 / 1797
    assert ((torch.bincount(val).double() - share).abs() < 1).all()
    a, b = load_images("digits", "validation"), load_images("digits", "validation")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # Pinned: a change of the split (or of torch's randperm) would make old numbers moot.
    _, val_idx = images._digits_split(whole.numpy())
    assert val_idx[:8].tolist() == [1, 2, 6, 13, 16, 22, 25, 29] and val_idx.sum() == 271953


# Images: .npy files.


def save(tmp_path: Path, array: np.ndarray, name: str = "images.npy") -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


def numbered(n: int, shape: tuple[int, ...] = (1, 2, 2)) -> np.ndarray:
    """n images, image i filled with the level i: images identify themselves."""
    return np.broadcast_to(np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1), (n, *shape)).copy()


@pytest.mark.parametrize(
    "array, levels",
    [
        (np.array([[[0, 7], [255, 3]]], dtype=np.uint8), 256),
        (np.array([[[0, 7], [16, 3]]], dtype=np.int16), 17),
        (np.array([[[0, 7], [16, 3]]], dtype=np.uint32), 17),
        (np.zeros((1, 2, 2), dtype=np.int64), 2),
        (np.array([[[0, 1], [2, 65535]]], dtype=np.uint16), 65536),
    ],
)
def test_npy_integer_levels_follow_the_documented_rule(tmp_path: Path, array, levels):
    s = load_images(save(tmp_path, array), "all")
    assert s.levels == levels and s.labels is None and s.images.dtype == torch.float32
    assert s.images.shape == (1, 1, 2, 2)
    assert torch.equal(s.images * levels, torch.as_tensor(array[:, None]).float())


def test_npy_floats_in_the_unit_interval_are_8_bit_images(tmp_path: Path):
    v = np.array([[[0.0, 1.0], [0.5, 0.2]]], dtype=np.float64)
    s = load_images(save(tmp_path, v), "all")
    assert s.levels == 256
    expected = torch.tensor([[0.0, 255.0], [128.0, 51.0]]) / 256  # round(v * 255) / 256
    assert torch.equal(s.images[0, 0], expected)


def test_npy_keeps_channels_and_odd_sizes_and_names_the_file(tmp_path: Path):
    array = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 7), dtype=np.uint8)
    path = save(tmp_path, array)
    s = load_images(str(path), "all")
    assert s.images.shape == (4, 3, 5, 7) and s.name == str(path)
    assert torch.equal(s.images * 256, torch.as_tensor(array).float())


@pytest.mark.parametrize("n", [2, 9, 10, 25, 101])
def test_npy_split_holds_out_a_fixed_tenth(tmp_path: Path, n):
    path = save(tmp_path, numbered(n).astype(np.uint16))
    train, val = load_images(path), load_images(path, "validation")
    ids_train = (train.images[:, 0, 0, 0] * train.levels).round().long()
    ids_val = (val.images[:, 0, 0, 0] * val.levels).round().long()
    assert len(ids_val) == max(1, n // 10) and len(ids_train) == n - len(ids_val)
    assert sorted(ids_train.tolist() + ids_val.tolist()) == list(range(n))
    # The documented rule: the last images of a seed-0 permutation, in file order.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert ids_val.tolist() == sorted(order[n - len(ids_val) :].tolist())
    assert torch.equal(load_images(path, "validation").images, val.images)
    assert load_images(path, "all").images.shape[0] == n


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array([[[0.5, np.nan]]]), "finite pixel values .* got 1 NaN and 0 infinite"),
        (np.array([[[np.inf, -np.inf]]]), "got 0 NaN and 2 infinite"),
        (np.array([[[0.5, -0.1]]]), "float pixel values in \\[0, 1\\] .* got values in \\[-0.1"),
        (np.array([[[0.5, 2.0]]]), "got values in \\[0.5, 2.0\\]"),
        (np.array([[[3, -1]]]), "integer pixel levels >= 0 .* got minimum -1"),
        (np.array([[[0, 70000]]], dtype=np.int32), "at most 65535 .* got maximum 70000"),
        (np.zeros((4, 4)), "\\(N, C, H, W\\) or \\(N, H, W\\) .* got 2-D shape \\(4, 4\\)"),
        (np.zeros((1, 1, 1, 2, 2)), "got 5-D"),
        (np.zeros((0, 2, 2)), "at least one image .* got shape \\(0, 1, 2, 2\\)"),
        (np.zeros((2, 1, 0, 2)), "at least one image .* got shape \\(2, 1, 0, 2\\)"),
        (np.ones((2, 2, 2), dtype=bool), "integer or float array .* got dtype bool"),
        (np.ones((2, 2, 2), dtype=np.complex64), "got dtype complex64"),
    ],
)
def test_npy_refusals_say_what_was_expected_and_given(tmp_path: Path, array, match):
    path = save(tmp_path, array)
    with pytest.raises(ValueError, match=match) as info:
        load_images(path, "all")
    assert str(path) in str(info.value)


def test_npy_of_one_image_loads_whole_but_does_not_split(tmp_path: Path):
    path = save(tmp_path, np.zeros((1, 2, 2), dtype=np.uint8))
    assert load_images(path, "all").images.shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="at least 2 images .* got 1; use split='all'"):
        load_images(path, "train")


def test_missing_npy_unknown_sources_and_splits_are_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.npy: no such file"):
        load_images(tmp_path / "missing.npy")
    with pytest.raises(
        ValueError, match="digits, cifar10, svhn\\) or a path to a .npy file, got 'mnist'"
    ):
        load_images("mnist")
    with pytest.raises(ValueError, match="got 'images.pt'"):
        load_images("images.pt")
    with pytest.raises(
        ValueError, match="expected split in \\('train', 'validation', 'all'\\), got 'test'"
    ):
        load_images("digits", "test")


# Images: CIFAR-10 and SVHN from fake files in the exact on-disk formats.


# numpy's array unpickling function, whichever module numpy keeps it in.
_reconstruct = np.zeros(0).__reduce__()[0]


class Python2Pickler(pickle.Pickler):
    """Pickles uint8 arrays as numpy did under Python 2: byte strings for every str.

    Python 2's str became bytes under ``encoding="bytes"``, so its numpy pickles hand the
    dtype b"u1", the byte order b"|" and the raw data to numpy.core.multiarray as bytes.
    """

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            state = (1, obj.shape, obj.dtype, False, obj.tobytes())
            return _reconstruct, (np.ndarray, (0,), b"b"), state
        if isinstance(obj, np.dtype):
            return np.dtype, (b"u1", 0, 1), (3, b"|", None, None, None, -1, -1, 0)
        return NotImplemented


def write_cifar(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple]:
    """CIFAR-10 batches as the real files are: Python 2 pickles of dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in sizes.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        batch[b"filenames"] = [f"{i}.png".encode() for i in range(n)]
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(batch)
        # Python 2's numpy lived at numpy.core, which numpy 2 still unpickles.
        (folder / name).write_bytes(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))
        batches[name] = (data, labels)
    return batches


CIFAR_SIZES = {f"data_batch_{i}": i for i in range(1, 6)} | {"test_batch": 3}


def test_cifar10_reads_the_pickled_batches_channel_planes_first(tmp_path: Path):
    batches = write_cifar(tmp_path, CIFAR_SIZES)
    train = load_images("cifar10", root=tmp_path)
    val = load_images("cifar10", "validation", root=str(tmp_path))
    every = load_images("cifar10", "all", root=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and val.images.shape == (3, 3, 32, 32)
    assert train.levels == val.levels == 256 and train.name == "cifar10"
    order = [f"data_batch_{i}" for i in range(1, 6)]
    data = np.concatenate([batches[b][0] for b in order])
    labels = sum((batches[b][1] for b in order), [])
    assert train.labels.tolist() == labels and train.labels.dtype == torch.int64
    # Pixel (c, h, w) of image i is byte c * 1024 + h * 32 + w of its row.
    i, c, h, w = 7, 2, 5, 30
    assert train.images[i, c, h, w] * 256 == data[i, c * 1024 + h * 32 + w]
    assert torch.equal(train.images * 256, torch.as_tensor(data).float().reshape(15, 3, 32, 32))
    assert torch.equal(val.labels, torch.as_tensor(batches["test_batch"][1]))
    assert torch.equal(every.images, torch.cat([train.images, val.images]))


def test_cifar10_refuses_pickles_that_name_anything_but_arrays(tmp_path: Path):
    write_cifar(tmp_path, CIFAR_SIZES)
    import datetime

    evil = pickle.dumps({b"data": datetime.date(2020, 1, 1), b"labels": []}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(ValueError, match="only NumPy arrays .* got a reference to datetime.date"):
        load_images("cifar10", "validation", root=tmp_path)


def test_svhn_reads_the_mat_files_and_maps_label_10_to_digit_0(tmp_path: Path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [5], [2]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": y[:2].astype(np.float64)})
    train = load_images("svhn", root=tmp_path)
    val = load_images("svhn", "validation", root=tmp_path)
    assert train.images.shape == (6, 3, 32, 32) and train.levels == 256
    assert train.labels.tolist() == [0, 1, 9, 0, 5, 2] and val.labels.tolist() == [0, 1]
    # X[h, w, c, i] is pixel (c, h, w) of image i.
    assert train.images[4, 1, 3, 20] * 256 == x[3, 20, 1, 4]
    assert torch.equal(train.images * 256, torch.as_tensor(x).permute(3, 2, 0, 1).float())
    assert load_images("svhn", "all", root=tmp_path).images.shape == (8, 3, 32, 32)


def test_image_sets_default_to_data_under_the_working_directory(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", CIFAR_SIZES)
    monkeypatch.chdir(tmp_path)
    assert load_images("cifar10", "validation").images.shape == (3, 3, 32, 32)


@pytest.mark.parametrize(
    "source, missing",
    [("cifar10", "cifar-10-batches-py/data_batch_1"), ("svhn", "train_32x32.mat")],
)
def test_missing_image_files_name_the_path_and_download_nothing(tmp_path, source, missing):
    with pytest.raises(FileNotFoundError) as info:
        load_images(source, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / missing) in message and "nothing is downloaded" in message


# Images: the container and dequantization.


def test_image_set_is_frozen_and_checks_its_fields():
    images = torch.zeros(2, 1, 2, 2, dtype=torch.float32)
    s = ImageSet(images, torch.tensor([0, 1]), 2, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.levels = 3
    with pytest.raises(ValueError, match="float32 of shape \\(N, C, H, W\\), got torch.float64"):
        ImageSet(images.double(), None, 2, "x")
    with pytest.raises(ValueError, match="got torch.float32 of shape \\(2, 2, 2\\)"):
        ImageSet(images[:, 0], None, 2, "x")
    with pytest.raises(
        ValueError, match="int64 of shape \\(2,\\), got torch.int64 of shape \\(3,\\)"
    ):
        ImageSet(images, torch.tensor([0, 1, 2]), 2, "x")
    with pytest.raises(ValueError, match="levels >= 2, got 1"):
        ImageSet(images, None, 1, "x")


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantize_adds_uniform_noise_within_each_cell(levels):
    n = 200_000
    g = torch.Generator().manual_seed(levels)
    x = torch.randint(levels, (n,), generator=g).double() / levels
    y = dequantize(x, levels, generator=g)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert (y >= 0).all() and (y < 1).all()
    # Each value stays in its own cell [k / L, (k + 1) / L).
    assert torch.equal(torch.floor(y * levels), (x * levels).round())
    # u = L (y - x) is U(0, 1): mean 1/2, E (u - 1/2)^2 = 1/12, with known standard errors
    # sqrt(1/12 / n) and sqrt((1/80 - 1/144) / n).
    u = levels * (y - x)
    z_mean = abs(u.mean().item() - 0.5) / math.sqrt(1 / 12 / n)
    z_var = abs(((u - 0.5) ** 2).mean().item() - 1 / 12) / math.sqrt((1 / 80 - 1 / 144) / n)
    assert max(z_mean, z_var) < z_bound(2), (z_mean, z_var)


def test_dequantize_is_reproducible_and_keeps_float32(monkeypatch):
    x = load_images("digits", "validation").images
    a = dequantize(x, 17, generator=torch.Generator().manual_seed(3))
    b = dequantize(x, 17, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    # The top level plus the largest draw of torch.rand rounds to 1 in float32: kept below 1.
    top = torch.full((4,), 255 / 256, dtype=torch.float32)
    largest = 1 - 2.0**-24
    assert (top + largest / 256 == 1).all()  # what the clamp is for

    def rand(shape, *, generator=None, dtype=None, device=None):
        return torch.full(shape, largest, dtype=dtype, device=device)

    monkeypatch.setattr(torch, "rand", rand)
    y = dequantize(top, 256)
    assert (y < 1).all() and (y >= top).all()


def test_dequantize_refuses_integers_and_too_few_levels():
    with pytest.raises(ValueError, match="floating images .* got dtype torch.int64"):
        dequantize(torch.zeros(3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="levels >= 2, got 1"):
        dequantize(torch.zeros(3), 1)
