"""A digits image-quality probe: a small ConvNet's confidence, classes and features; not FID."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import check_int, check_positive, seeded
from ..datasets import ImageSet, dequantize, load_images
from ..io import load_tensors, save_tensors

__all__ = [
    "DigitsProbe",
    "fit_probe",
    "frechet_distance",
    "gaussian_frechet_distance",
    "load_or_fit_probe",
    "probe_summary",
]

_SHAPE = (1, 8, 8)
_CLASSES = 10
_FEATURES = 128
# Images go through the network this many at a time: bounded memory for any N.
_CHUNK = 4096
# What load_or_fit_probe writes, so that it never loads (or overwrites) a foreign file.
_FORMAT = "pyro_flowebm.DigitsProbe/1"


class DigitsProbe(nn.Module):
    """A ConvNet classifier of 8 x 8 digits whose penultimate layer gives image features.

    A probe for the digits of :func:`pyro_flowebm.datasets.load_images` (``"digits"``), not
    FID. FID (Heusel et al., 2017, arXiv:1706.08500) compares Inception-v3 features of
    natural images; here this small network, trained in the package on the digits training
    split in seconds, supplies the features, so its Fréchet distances compare with one
    another (same probe, same sample sizes) but not with any published FID.

    Two 3 x 3 convolutions (32 and 64 channels, ReLU), a 2 x 2 max-pool, a fully
    connected layer of 128 ReLU features (:meth:`features`) and a 10-way linear head
    (:meth:`forward` gives the logits). Parameters are float32 whatever torch's default
    dtype; inputs are cast to them, outputs come back in the input's dtype. Fit it with
    :func:`fit_probe` (or :func:`load_or_fit_probe`) on dequantized digits, so that it takes
    continuous images in :math:`[0, 1]` such as a model's samples. It has no dropout or
    batch norm: train and eval mode compute the same function.

    Example:
        >>> probe = DigitsProbe()
        >>> probe.features(torch.rand(5, 1, 8, 8)).shape
        torch.Size([5, 128])
    """

    def __init__(self) -> None:
        super().__init__()
        kw: dict[str, Any] = {"dtype": torch.float32}
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, **kw),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, **kw),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, _FEATURES, **kw),
            nn.ReLU(),
        )
        self.head = nn.Linear(_FEATURES, _CLASSES, **kw)

    def _input(self, images: Tensor) -> Tensor:
        if not images.is_floating_point() or tuple(images.shape[1:]) != _SHAPE:
            raise ValueError(
                f"expected floating images of shape (N, 1, 8, 8) with values in [0, 1], got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        return images.to(self.head.weight)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits, shape ``(N, 10)``, in the probe's dtype (differentiable)."""
        return self.head(self.body(self._input(images)))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate features of ``images`` ``(N, 1, 8, 8)``: shape ``(N, 128)``, no gradient."""
        x = self._input(images)
        out = [self.body(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]
        return (torch.cat(out) if out else x.new_zeros(0, _FEATURES)).to(images.dtype)

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The most probable class of each image and its softmax probability.

        Args:
            images: ``(N, 1, 8, 8)``, values in :math:`[0, 1]`.

        Returns:
            ``(classes, confidence)``: int64 ``(N,)`` in 0..9, and ``(N,)`` in
            :math:`(0, 1]` (at least 1/10), in the input's dtype.
        """
        x = self._input(images)
        chunks = [self.head(self.body(x[i : i + _CHUNK])) for i in range(0, len(x), _CHUNK)]
        logits = torch.cat(chunks) if chunks else x.new_zeros(0, _CLASSES)
        confidence, classes = logits.softmax(-1).max(-1)
        return classes, confidence.to(images.dtype)


def fit_probe(
    train: ImageSet,
    steps: int = 500,
    *,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress_bar: bool = True,
) -> DigitsProbe:
    """Train a :class:`DigitsProbe` on labelled digits by cross-entropy, with Adam.

    Each step draws ``batch_size`` images with replacement and dequantizes them afresh
    (:func:`~pyro_flowebm.datasets.dequantize`), so the probe learns the continuous images
    that density models see; the learning rate decays from ``lr`` to 0 on a cosine (what
    the defaults cost and reach is in ``docs/image_data.md``). Everything random (initial
    weights, batches, noise) comes from ``seed``: torch's global random state is left as
    it was.

    Args:
        train: labelled images of shape ``(N, 1, 8, 8)``, normally
            ``load_images("digits", "train")``.
        steps: optimizer steps.
        batch_size: images per step.
        lr: initial Adam learning rate.
        seed: seed of the initial weights, the batches and the dequantization noise.
        progress_bar: show a tqdm bar with the running loss.

    Returns:
        The trained probe, in eval mode.

    Raises:
        ValueError: images not of shape ``(N, 1, 8, 8)``, no labels or labels outside 0..9,
            or ``steps``, ``batch_size`` or ``lr`` not positive.

    Example:
        >>> from pyro_flowebm.datasets import load_images
        >>> probe = fit_probe(load_images("digits"), steps=20, progress_bar=False)
        >>> probe.classify(load_images("digits", "validation").images)[0].shape
        torch.Size([297])
    """
    if tuple(train.images.shape[1:]) != _SHAPE:
        raise ValueError(
            f"expected digits of shape (N, 1, 8, 8), got shape {tuple(train.images.shape)} "
            f"from {train.name!r}"
        )
    if train.labels is None or len(train.labels) == 0:
        raise ValueError(f"expected labelled images to fit the probe, got none from {train.name!r}")
    if train.labels.min() < 0 or train.labels.max() >= _CLASSES:
        raise ValueError(
            f"expected labels in 0..9, got {int(train.labels.min())}..{int(train.labels.max())}"
        )
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_positive("lr", lr)
    with seeded(seed):
        probe = DigitsProbe()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    images, labels = train.images.to(torch.float32), train.labels
    probe.train()
    with tqdm(range(steps), desc="fit probe", disable=not progress_bar) as bar:
        for _ in bar:
            index = torch.randint(len(images), (batch_size,), generator=generator)
            x = dequantize(images[index], train.levels, generator)
            loss = F.cross_entropy(probe(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return probe.eval()


def load_or_fit_probe(
    path: str | Path, *, steps: int = 500, seed: int = 0, progress_bar: bool = False
) -> DigitsProbe:
    """The probe saved at ``path``, or one fitted on the digits training split and saved there.

    The file holds the probe's weights and the settings it was fitted with; a file fitted
    with other ``steps`` or ``seed`` is refitted and overwritten. It is read with
    ``torch.load(weights_only=True)`` and written atomically (a crash leaves the old file
    or the new one), creating missing folders.

    Args:
        path: the cache file, e.g. ``"digits_probe.pt"``.
        steps: training steps of :func:`fit_probe`.
        seed: seed of :func:`fit_probe`.
        progress_bar: show :func:`fit_probe`'s bar when fitting.

    Returns:
        The probe, in eval mode.

    Raises:
        ValueError: ``path`` exists but is not a probe written by this function (it is left
            alone: delete it or choose another path).
    """
    path = Path(path)
    settings = {"steps": steps, "seed": seed}
    if path.exists():
        try:
            saved = load_tensors(path)
        except ValueError as e:
            saved = e  # refused below, like any other foreign file
        if not (isinstance(saved, dict) and saved.get("format") == _FORMAT):
            raise ValueError(
                f"expected a digits probe written by load_or_fit_probe at {path}, got another "
                "file; delete it or choose another path"
            )
        if saved.get("settings") == settings:
            probe = DigitsProbe()
            probe.load_state_dict(saved["state_dict"])
            return probe.eval()
    probe = fit_probe(load_images("digits", "train"), steps, seed=seed, progress_bar=progress_bar)
    state = {"format": _FORMAT, "settings": settings, "state_dict": probe.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(state, path)
    return probe


def _frechet(mean_a: Tensor, root_a: Tensor, mean_b: Tensor, root_b: Tensor) -> float:
    r"""The Fréchet distance from means and factors ``S = L L^T`` of the covariances.

    The eigenvalues of :math:`S_a^{1/2} S_b S_a^{1/2}` are those of
    :math:`(L_a^T L_b)(L_a^T L_b)^T`, so the trace of its square root is the sum of the
    singular values of :math:`L_a^T L_b`, and :math:`\operatorname{tr} S = |L|_F^2`:
    no matrix square root of a product, and no loss of precision where it is singular.
    """
    cross = torch.linalg.svdvals(root_a.mT @ root_b).sum()
    distance = (
        (mean_a - mean_b).square().sum() + root_a.square().sum() + root_b.square().sum() - 2 * cross
    )
    # Cancellation can leave a tiny negative number for (nearly) equal Gaussians.
    return max(float(distance), 0.0)


def _eigh_factor(cov: Tensor) -> Tensor:
    # L = V diag(sqrt(λ)): a real factor, with round-off negative eigenvalues set to 0.
    values, vectors = torch.linalg.eigh((cov + cov.mT) / 2)
    return vectors * values.clamp_min(0).sqrt()


def gaussian_frechet_distance(
    mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor
) -> float:
    r"""The Fréchet (squared 2-Wasserstein) distance between two Gaussians, in float64.

    .. math::

        d^2 = |m_a - m_b|^2 + \operatorname{tr}\bigl(S_a + S_b
            - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}\bigr)

    (Dowson and Landau, 1982). With factors :math:`S = L L^T` from symmetric
    eigendecompositions (round-off negative eigenvalues set to 0), the trace of the
    square root is the sum of the singular values of :math:`L_a^T L_b`: the result is real,
    unlike ``scipy.linalg.sqrtm`` of the non-symmetric :math:`S_a S_b`, and it is clipped
    at 0. For singular covariances the round-off in eigenvalues that should be 0 costs a
    few digits (about :math:`10^{-10}` relative where the rank is well below :math:`d`);
    :func:`frechet_distance` factors the data instead and keeps full precision.

    Args:
        mean_a: mean ``(d,)``.
        cov_a: covariance ``(d, d)``, symmetric positive semi-definite.
        mean_b: mean ``(d,)``.
        cov_b: covariance ``(d, d)``.

    Returns:
        :math:`d^2 \ge 0`.

    Example:
        >>> m, s = torch.zeros(2), torch.eye(2)
        >>> round(gaussian_frechet_distance(m, s, m + torch.tensor([3.0, 4.0]), 4 * s), 12)
        27.0
    """
    if mean_a.ndim != 1:
        raise ValueError(f"expected mean_a of shape (d,), got {tuple(mean_a.shape)}")
    d = mean_a.shape[0]
    for name, value, shape in (
        ("mean_a", mean_a, (d,)),
        ("cov_a", cov_a, (d, d)),
        ("mean_b", mean_b, (d,)),
        ("cov_b", cov_b, (d, d)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(
                f"expected {name} of shape {shape} (means (d,), covariances (d, d)), got "
                f"{tuple(value.shape)}"
            )
    return _frechet(
        mean_a.double(),
        _eigh_factor(cov_a.double()),
        mean_b.double().to(mean_a.device),
        _eigh_factor(cov_b.double().to(cov_a.device)),
    )


def _mean_and_factor(name: str, features: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """The mean and a factor L, L L^T the unbiased covariance, from R of the centred data."""
    x = torch.as_tensor(features)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"expected {name} of shape (n, d) with n >= 2, got shape {tuple(x.shape)}")
    x = x.double()
    if not torch.isfinite(x).all():
        raise ValueError(f"expected finite {name}, got NaN or infinite entries")
    mean = x.mean(0)
    # (x - m) = Q R gives the covariance R^T R / (n - 1) without forming it.
    r = torch.linalg.qr(x - mean, mode="r").R
    return mean, r.mT / math.sqrt(len(x) - 1)


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features.

    The formula of :func:`gaussian_frechet_distance` with the means and unbiased
    covariances of each set, in float64; the covariances enter through the R factors of
    the centred data (QR), which keeps full precision even when a covariance is singular
    (fewer points than features). With probe features (:meth:`DigitsProbe.features`) this
    is FID's formula on another network's features: a probe for digits, not FID. The
    estimate is biased upward by :math:`O(d / n)`: compare distances computed from equal
    numbers of images.

    Args:
        features_a: ``(n_a, d)``, ``n_a >= 2``.
        features_b: ``(n_b, d)``, ``n_b >= 2``.

    Returns:
        The distance, ``>= 0``; 0 for identical sets.

    Raises:
        ValueError: not 2-D, fewer than 2 rows, different ``d``, or NaN or infinite entries.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(4000, 2, generator=g, dtype=torch.float64)
        >>> round(frechet_distance(a, a + torch.tensor([3.0, 4.0])), 9)
        25.0
    """
    mean_a, root_a = _mean_and_factor("features_a", features_a)
    mean_b, root_b = _mean_and_factor("features_b", features_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(
            f"expected features of the same width d, got {mean_a.shape[0]} and {mean_b.shape[0]}"
        )
    return _frechet(mean_a, root_a, mean_b.to(mean_a.device), root_b.to(root_a.device))


def probe_summary(probe: DigitsProbe, images: Tensor, reference_images: Tensor) -> dict[str, Any]:
    """What the probe sees in ``images``: confidence, class shares, distance to a reference.

    Args:
        probe: a fitted :class:`DigitsProbe`.
        images: ``(N, 1, 8, 8)`` images to judge, e.g. a model's samples in :math:`[0, 1]`.
        reference_images: ``(M, 1, 8, 8)``, e.g. held-out digits; dequantize them
            (:func:`~pyro_flowebm.datasets.dequantize`) when ``images`` are continuous.

    Returns:
        A dict (JSON-ready) with ``num_images`` (N), ``mean_confidence`` (mean softmax
        probability of the predicted class: 0.99 on held-out digits, but a classifier can
        be confident on noise too, 0.83 on uniform noise images),
        ``class_fractions`` (10 fractions summing to 1: how often each digit is predicted;
        about 0.1 each for the digits data) and ``frechet_distance``
        (:func:`frechet_distance` of the probe's features of ``images`` and
        ``reference_images``).

    Example:
        >>> from pyro_flowebm.datasets import load_images
        >>> probe = fit_probe(load_images("digits"), steps=20, progress_bar=False)
        >>> validation = load_images("digits", "validation").images
        >>> summary = probe_summary(probe, validation[:100], validation[100:])
        >>> sorted(summary)
        ['class_fractions', 'frechet_distance', 'mean_confidence', 'num_images']
    """
    classes, confidence = probe.classify(images)
    n = len(classes)
    counts = torch.bincount(classes, minlength=_CLASSES).double()
    return {
        "num_images": n,
        "mean_confidence": float(confidence.double().mean()),
        "class_fractions": (counts / max(n, 1)).tolist(),
        "frechet_distance": frechet_distance(
            probe.features(images), probe.features(reference_images)
        ),
    }
