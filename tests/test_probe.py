"""The digits probe against its purpose, and the Fréchet distance against closed forms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor

from pyro_flowebm.datasets import ImageSet, dequantize, load_images
from pyro_flowebm.io import load_tensors
from pyro_flowebm.metrics import probe as probe_module
from pyro_flowebm.metrics.probe import (
    DigitsProbe,
    fit_probe,
    frechet_distance,
    gaussian_frechet_distance,
    load_or_fit_probe,
    probe_summary,
)


@pytest.fixture(scope="module")
def train() -> ImageSet:
    return load_images("digits", "train")


@pytest.fixture(scope="module")
def validation() -> ImageSet:
    return load_images("digits", "validation")


@pytest.fixture(scope="module")
def probe(train: ImageSet) -> DigitsProbe:
    """The probe with its defaults: the one the package's users get."""
    return fit_probe(train, progress_bar=False)


def random_cov(d: int, generator: torch.Generator) -> Tensor:
    """A well-conditioned random covariance: eigenvalues in [0.5, 2], random eigenvectors."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    values = 0.5 + 1.5 * torch.rand(d, generator=generator)
    return (q * values) @ q.T


def gaussian_draws(n: int, mean: Tensor, cov: Tensor, generator: torch.Generator) -> Tensor:
    return mean + torch.randn(n, len(mean), generator=generator) @ torch.linalg.cholesky(cov).T


# The Fréchet distance of two Gaussians: closed forms.


def test_diagonal_covariances_give_the_sum_of_squared_root_differences():
    m_a, m_b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = 1 + 9 + 0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
    assert gaussian_frechet_distance(m_a, a.diag(), m_b, b.diag()) == pytest.approx(expected)
    # One dimension: (m_a - m_b)^2 + (s_a - s_b)^2.
    one = gaussian_frechet_distance(
        torch.tensor([2.0]), torch.tensor([[0.25]]), torch.tensor([-1.0]), torch.tensor([[4.0]])
    )
    assert one == pytest.approx(9 + (0.5 - 2) ** 2)


def test_commuting_covariances_give_the_eigenvalue_formula():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    a, b = torch.rand(5, generator=g) + 0.1, torch.rand(5, generator=g) + 0.1
    m = torch.randn(5, generator=g)
    got = gaussian_frechet_distance(m, (q * a) @ q.T, torch.zeros(5), (q * b) @ q.T)
    assert got == pytest.approx(float(m.square().sum() + (a.sqrt() - b.sqrt()).square().sum()))


def test_two_dimensional_non_commuting_covariances_match_the_closed_form():
    """For 2 x 2 M = A^½ B A^½: tr M^½ = sqrt(tr AB + 2 sqrt(det A det B))."""
    a = torch.tensor([[2.0, 0.8], [0.8, 1.0]])
    b = torch.tensor([[0.5, -0.3], [-0.3, 3.0]])
    assert not torch.allclose(a @ b, b @ a)
    m = torch.tensor([0.3, -0.4])
    cross = math.sqrt(float((a @ b).trace()) + 2 * math.sqrt(float(a.det() * b.det())))
    expected = 0.25 + float(a.trace() + b.trace()) - 2 * cross
    got = gaussian_frechet_distance(m, a, torch.zeros(2), b)
    assert got == pytest.approx(expected, rel=1e-12)


def test_higher_dimensions_match_scipy_sqrtm():
    g = torch.Generator().manual_seed(1)
    a, b = random_cov(8, g), random_cov(8, g)
    m_a, m_b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    root = scipy.linalg.sqrtm(a.numpy() @ b.numpy())
    expected = float((m_a - m_b).square().sum() + a.trace() + b.trace()) - 2 * np.trace(root).real
    assert gaussian_frechet_distance(m_a, a, m_b, b) == pytest.approx(expected, rel=1e-10)


def test_gaussian_frechet_distance_refuses_mismatched_shapes():
    m, s = torch.zeros(2), torch.eye(2)
    with pytest.raises(ValueError, match="mean_a of shape \\(d,\\), got \\(1, 2\\)"):
        gaussian_frechet_distance(m[None], s, m, s)
    with pytest.raises(ValueError, match="cov_b of shape \\(2, 2\\) .* got \\(3, 3\\)"):
        gaussian_frechet_distance(m, s, m, torch.eye(3))


# The Fréchet distance of two feature sets.


def w2_bound(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """An upper bound on the 2-Wasserstein distance of N(mean_hat, cov_hat) from N(mean, cov).

    W2² = |m̂ - m|² + d_B(Ŝ, S)² with the Bures distance d_B(A, B) <= |A^½ - B^½|_F, and
    |A^½ - B^½|_F <= |A - B|_F / (sqrt(λmin A) + sqrt(λmin B)) for positive definite A, B
    (from A - B = A^½ (A^½ - B^½) + (A^½ - B^½) B^½). Computed from the sample alone.
    """
    mean_hat, cov_hat = x.mean(0), torch.cov(x.T)
    low = torch.linalg.eigvalsh(cov_hat)[0].sqrt() + torch.linalg.eigvalsh(cov)[0].sqrt()
    bures = torch.linalg.matrix_norm(cov_hat - cov) / low
    return math.sqrt(float((mean_hat - mean).square().sum() + bures**2))


@pytest.mark.parametrize("n", [2000, 50000])
def test_sample_distances_converge_within_a_bound_from_the_sample(n):
    """sqrt(FD) is a metric (W2 of Gaussians), so |sqrt(FD̂) - sqrt(FD)| <= W2(â, a) + W2(b̂, b).

    The bound is deterministic given the draws, and shrinks like 1 / sqrt(n).
    """
    g = torch.Generator().manual_seed(2)
    cov_a, cov_b = random_cov(3, g), random_cov(3, g)
    mean_a, mean_b = torch.zeros(3), torch.tensor([1.0, -1.0, 2.0])
    truth = math.sqrt(gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b))
    xa, xb = gaussian_draws(n, mean_a, cov_a, g), gaussian_draws(n, mean_b, cov_b, g)
    bound = w2_bound(xa, mean_a, cov_a) + w2_bound(xb, mean_b, cov_b)
    error = abs(math.sqrt(frechet_distance(xa, xb)) - truth)
    assert error <= bound, (error, bound)
    # Its mean is below sqrt((tr S + (tr S² + (tr S)²) / 2 λmin) / n) <= 5.5 / sqrt(n) per set
    # (eigenvalues in [0.5, 2], d = 3): so it does shrink, to 1/30 of the distance at 50,000.
    assert bound < 20 / math.sqrt(n), bound


def test_frechet_distance_is_symmetric_translation_invariant_and_zero_on_itself():
    g = torch.Generator().manual_seed(3)
    a = gaussian_draws(500, torch.zeros(6), random_cov(6, g), g)
    b = gaussian_draws(700, torch.ones(6), random_cov(6, g), g)
    d_ab = frechet_distance(a, b)
    assert d_ab > 1 and frechet_distance(b, a) == pytest.approx(d_ab, rel=1e-10)
    shift = 100 * torch.randn(6, generator=g)
    assert frechet_distance(a + shift, b + shift) == pytest.approx(d_ab, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-10)
    # Fewer points than features: singular covariances, still exact to round-off.
    few = torch.randn(10, 40, generator=g)
    assert frechet_distance(few, few) == pytest.approx(0, abs=1e-10)
    assert frechet_distance(few, few + 1) == pytest.approx(40, rel=1e-12)


def test_frechet_distance_computes_in_float64_from_any_input():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(300, 4, generator=g).float(), torch.randn(300, 4, generator=g).float()
    expected = frechet_distance(a.double(), b.double())
    assert frechet_distance(a, b) == expected
    assert frechet_distance(a.numpy(), b.numpy()) == expected


@pytest.mark.parametrize(
    "a, b, match",
    [
        (
            torch.zeros(5),
            torch.zeros(5, 1),
            "features_a of shape \\(n, d\\) with n >= 2, got shape \\(5,\\)",
        ),
        (torch.zeros(5, 2), torch.zeros(1, 2), "features_b .* got shape \\(1, 2\\)"),
        (torch.zeros(5, 2), torch.zeros(5, 3), "same width d, got 2 and 3"),
        (torch.full((5, 2), math.nan), torch.zeros(5, 2), "finite features_a"),
    ],
)
def test_frechet_distance_refuses_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# The probe.


def test_probe_classifies_validation_digits_at_95_percent_or_better(probe, validation):
    g = torch.Generator().manual_seed(5)
    for images in (validation.images, dequantize(validation.images, 17, g)):
        classes, _ = probe.classify(images)
        assert (classes == validation.labels).double().mean() >= 0.95
    # Most of every class, not only most images.
    for digit in range(10):
        mine = validation.labels == digit
        assert (classes[mine] == digit).double().mean() >= 0.8, digit


def test_classify_returns_classes_and_softmax_confidence(probe, validation):
    images = validation.images[:50].double()
    classes, confidence = probe.classify(images)
    assert classes.dtype == torch.int64 and classes.shape == (50,)
    assert ((classes >= 0) & (classes < 10)).all()
    assert confidence.dtype == torch.float64
    assert ((confidence >= 0.1) & (confidence <= 1)).all()
    # The confidence is the softmax probability of the argmax of the logits.
    logits = probe(images).double()
    assert torch.equal(classes, logits.argmax(-1))
    assert torch.allclose(confidence, logits.softmax(-1).amax(-1), rtol=1e-6)


def test_features_are_the_penultimate_layer(probe, validation):
    images = validation.images[:40]
    features = probe.features(images)
    assert features.shape == (40, 128) and features.dtype == torch.float32
    assert (features >= 0).all()  # after a ReLU
    assert torch.allclose(probe.head(features), probe(images), atol=1e-5)
    assert not features.requires_grad


def test_probe_refuses_images_of_another_shape(probe):
    with pytest.raises(
        ValueError, match="shape \\(N, 1, 8, 8\\) .* got torch.float64 of shape \\(3, 1, 28"
    ):
        probe.classify(torch.rand(3, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match="got torch.int64"):
        probe.features(torch.zeros(3, 1, 8, 8, dtype=torch.int64))


def test_summary_tells_digits_from_noise(probe, train, validation):
    g = torch.Generator().manual_seed(6)
    reference = dequantize(train.images, 17, g)
    digits = probe_summary(probe, dequantize(validation.images, 17, g), reference)
    noise = probe_summary(probe, torch.rand(297, 1, 8, 8, generator=g), reference)
    assert digits["num_images"] == 297
    assert digits["frechet_distance"] * 20 < noise["frechet_distance"]
    assert digits["mean_confidence"] > 0.9
    fractions = torch.tensor(digits["class_fractions"])
    assert fractions.sum() == pytest.approx(1)
    shares = torch.bincount(validation.labels, minlength=10) / 297
    assert (fractions - shares).abs().max() < 0.02


def test_fit_probe_is_reproducible_and_leaves_the_global_stream_alone(train):
    state = torch.get_rng_state()
    a = fit_probe(train, steps=3, progress_bar=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_probe(train, steps=3, progress_bar=False)
    c = fit_probe(train, steps=3, seed=1, progress_bar=False)
    for name, value in a.state_dict().items():
        assert value.dtype == torch.float32  # whatever the default dtype (float64 here)
        assert torch.equal(value, b.state_dict()[name])
    assert not torch.equal(a.head.weight, c.head.weight)


def test_fit_probe_refuses_other_data(train):
    with pytest.raises(
        ValueError, match="digits of shape \\(N, 1, 8, 8\\), got shape \\(2, 3, 8, 8\\)"
    ):
        fit_probe(ImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.float32), None, 256, "rgb"))
    with pytest.raises(ValueError, match="labelled images .* none from 'x'"):
        fit_probe(ImageSet(train.images, None, 17, "x"))
    with pytest.raises(ValueError, match="labels in 0..9, got 0..11"):
        fit_probe(ImageSet(train.images[:2], torch.tensor([0, 11]), 17, "x"))
    with pytest.raises(ValueError, match="expected steps >= 1, got 0"):
        fit_probe(train, steps=0)


def test_probe_state_round_trips_through_torch_save(probe, validation, tmp_path: Path):
    torch.save(probe.state_dict(), tmp_path / "p.pt")
    copy = DigitsProbe()
    copy.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    assert torch.equal(copy.features(validation.images), probe.features(validation.images))


def test_load_or_fit_probe_caches_by_settings(tmp_path: Path, monkeypatch, validation):
    path = tmp_path / "cache" / "probe.pt"
    first = load_or_fit_probe(path, steps=3)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again instead of loading")

    with monkeypatch.context() as m:
        m.setattr(probe_module, "fit_probe", no_fit)
        loaded = load_or_fit_probe(path, steps=3)
    assert torch.equal(loaded.features(validation.images), first.features(validation.images))
    # Other settings: refitted and overwritten.
    refit = load_or_fit_probe(path, steps=4)
    assert not torch.equal(refit.head.weight, first.head.weight)
    assert load_tensors(path)["settings"] == {"steps": 4, "seed": 0}


def test_load_or_fit_probe_leaves_a_foreign_file_alone(tmp_path: Path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for foreign in (path, text):
        before = foreign.read_bytes()
        with pytest.raises(ValueError, match="expected a digits probe .* delete it"):
            load_or_fit_probe(foreign, steps=3)
        assert foreign.read_bytes() == before
