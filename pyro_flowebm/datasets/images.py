"""Quantized images with fixed train/validation splits, and uniform dequantization."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core import check_int
from .files import npy_shape

__all__ = ["IMAGE_SETS", "ImageSet", "check_levels", "dequantize", "load_images"]

IMAGE_SETS: tuple[str, ...] = ("digits", "cifar10", "svhn")
_SPLITS = ("train", "validation", "all")

# scikit-learn's digits: 1,797 images, of which this many form the validation split.
_DIGITS_VALIDATION = 297
_DIGITS_LEVELS = 17
# The most intensity levels a .npy of integers may have: k / levels must stay exact and
# distinct in float32 (24-bit significand); 16-bit images fit.
_MAX_LEVELS = 1 << 16
# CIFAR-10 and SVHN as torchvision lays them out on disk.
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "validation": ["test_batch"],
}
_SVHN_FILES = {"train": ["train_32x32.mat"], "validation": ["test_32x32.mat"]}


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Quantized images with their number of intensity levels, and labels where known.

    Pixel level :math:`k \\in \\{0, \\dots, L - 1\\}` is stored as :math:`k / L`, so every
    value lies on the lattice :math:`\\{0, 1/L, \\dots, (L - 1)/L\\}` and the images have
    probability mass, not density. Uniform dequantization (:func:`dequantize`) adds
    :math:`U(0, 1/L)` noise to each pixel, which spreads each level uniformly over its cell
    :math:`[k/L, (k + 1)/L)`: the result is continuous in :math:`[0, 1)`, and for a density
    :math:`p` on it, :math:`\\mathbb{E}_u \\log p(x + u/L) - D \\log L \\le \\log P(x)`, the
    probability of the discrete image :math:`x` of :math:`D` pixels (Theis et al., 2016,
    arXiv:1511.01844). ``eq=False``: image sets compare by identity.

    Attributes:
        images: float32 tensor of shape ``(N, C, H, W)``, values ``k / levels``.
        labels: int64 tensor of shape ``(N,)`` (class indices), or ``None`` without labels.
        levels: number of intensity levels :math:`L`: 17 for the digits (0..16), 256 for
            8-bit images.
        name: where the images came from: a key of :data:`IMAGE_SETS` or the ``.npy`` path.

    Example:
        >>> pixels = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float32).reshape(1, 1, 2, 2)
        >>> s = ImageSet(pixels / 4, None, 4, "x")
        >>> (s.images * s.levels).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0]
    """

    images: Tensor
    labels: Tensor | None
    levels: int
    name: str

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        if self.images.dtype != torch.float32 or len(shape) != 4:
            raise ValueError(
                f"expected images as float32 of shape (N, C, H, W), got {self.images.dtype} "
                f"of shape {shape}"
            )
        if self.labels is not None and (
            self.labels.dtype != torch.int64 or tuple(self.labels.shape) != shape[:1]
        ):
            raise ValueError(
                f"expected labels as int64 of shape ({shape[0]},), got {self.labels.dtype} of "
                f"shape {tuple(self.labels.shape)}"
            )
        check_int("levels", self.levels, 2)


def check_levels(levels: int | None, name: str = "dequantize") -> None:
    """``None`` (continuous data) or a number of intensity levels of at least 2.

    Example:
        >>> check_levels(1)
        Traceback (most recent call last):
        ...
        ValueError: expected dequantize None or a number of levels >= 2, got 1
    """
    if levels is not None and (isinstance(levels, bool) or not levels >= 2):
        raise ValueError(f"expected {name} None or a number of levels >= 2, got {levels}")


def dequantize(images: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization: each pixel plus independent :math:`U(0, 1/L)` noise.

    For images on the lattice :math:`k / L`,

    .. math:: \\tilde x = x + u / L, \\qquad u \\sim U(0, 1)^{C \\times H \\times W},

    so :math:`\\tilde x` is uniform on the cell :math:`[k/L, (k+1)/L)` of its level and lies
    in :math:`[0, 1)`; the noise has mean :math:`1 / 2L` and variance :math:`1 / 12 L^2`.
    Fresh noise at every use (every training batch) makes a continuous density model see
    each discrete image as the whole cell around it (Theis et al., 2016, arXiv:1511.01844).
    In float32 a value within rounding of its cell's upper edge can round onto that edge;
    the last edge, 1, is excluded by clamping to the largest float below 1.

    Args:
        images: floating tensor of any shape, values ``k / levels`` (an
            :attr:`ImageSet.images`); the result has its dtype and device.
        levels: number of intensity levels :math:`L` (:attr:`ImageSet.levels`).
        generator: torch generator for reproducible noise (``None``: the global stream).

    Returns:
        Dequantized images of the same shape, in :math:`[0, 1)`.

    Example:
        >>> x = torch.tensor([0.0, 0.5])
        >>> y = dequantize(x, 2, generator=torch.Generator().manual_seed(0))
        >>> bool(((y >= x) & (y < x + 0.5)).all())
        True
    """
    if not images.is_floating_point():
        raise ValueError(
            f"expected floating images with values k / levels, got dtype {images.dtype}"
        )
    check_int("levels", levels, 2)
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    # In float32, (L - 1)/L + u/L can round up to exactly 1; keep the promise of [0, 1).
    below_one = torch.nextafter(
        torch.ones((), dtype=images.dtype), torch.zeros((), dtype=images.dtype)
    )
    return (images + u / levels).clamp_max(below_one.to(images.device))


def _split_indices(split: str, train: np.ndarray, validation: np.ndarray) -> np.ndarray:
    if split == "train":
        return train
    if split == "validation":
        return validation
    return np.arange(len(train) + len(validation))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"expected split in {_SPLITS}, got {split!r}")


def _to_image_set(
    levels_k: np.ndarray, labels: np.ndarray | None, levels: int, name: str
) -> ImageSet:
    # float32(k) / float32(L) is the correctly rounded k / L: the lattice is exact.
    images = torch.from_numpy(np.ascontiguousarray(levels_k, dtype=np.float32)) / levels
    label_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return ImageSet(images, label_tensor, levels, name)


def _digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed, stratified digits split: sorted train and validation indices."""
    counts = np.bincount(labels, minlength=10)
    share = counts * _DIGITS_VALIDATION / len(labels)
    per_class = np.floor(share).astype(np.int64)
    # Largest remainders take the images left over, so the sizes add up to 297 exactly.
    left = _DIGITS_VALIDATION - int(per_class.sum())
    per_class[np.argsort(per_class - share, kind="stable")[:left]] += 1
    generator = torch.Generator().manual_seed(0)
    chosen = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        order = torch.randperm(len(members), generator=generator).numpy()
        chosen.append(members[order[: per_class[c]]])
    validation = np.sort(np.concatenate(chosen))
    return np.setdiff1d(np.arange(len(labels)), validation), validation


def _load_digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Stored as float64 holding the integers 0..16.
    pixels = digits.images.round().astype(np.int64)[:, None]
    labels = np.asarray(digits.target, dtype=np.int64)
    index = _split_indices(split, *_digits_split(labels))
    return _to_image_set(pixels[index], labels[index], _DIGITS_LEVELS, "digits")


def _npy_levels(array: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Integer pixel levels and their number L, by the rules of :func:`load_images`."""
    kind = array.dtype.kind
    if kind not in "uif":
        raise ValueError(
            f"expected an integer or float array in {path}, got dtype {array.dtype}; "
            "convert it with .astype(np.uint8) for 8-bit images"
        )
    if kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            nan = int(np.isnan(array).sum())
            raise ValueError(
                f"expected finite pixel values in {path}, got {nan} NaN and "
                f"{int(bad.sum()) - nan} infinite entries"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"expected float pixel values in [0, 1] in {path} (taken as 8-bit, "
                f"round(v * 255)), got values in [{low}, {high}]; divide by the maximum, or "
                "save integer levels instead"
            )
        return np.rint(array * 255).astype(np.int64), 256
    if array.dtype == np.uint8:
        return array, 256
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(f"expected integer pixel levels >= 0 in {path}, got minimum {low}")
    levels = max(high + 1, 2)
    if levels > _MAX_LEVELS:
        raise ValueError(
            f"expected integer pixel levels of at most {_MAX_LEVELS - 1} (16-bit) in {path}, "
            f"got maximum {high}"
        )
    return array, levels


def _load_npy(path: Path, split: str) -> ImageSet:
    if not path.is_file():
        raise FileNotFoundError(
            f"expected an existing .npy file of images, got {path}: no such file"
        )
    # The header first: a file that is not a .npy of numbers, or whose data does not fit
    # in it, is refused before anything is read or allocated.
    shape = npy_shape(path)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"expected images of shape (N, C, H, W) or (N, H, W) in {path}, got "
            f"{len(shape)}-D shape {shape}"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"expected a numeric NumPy array in {path}, got: {e}") from e
    if array.ndim == 3:
        array = array[:, None]
    if 0 in array.shape:
        raise ValueError(
            f"expected at least one image of at least one pixel in {path}, got shape {array.shape}"
        )
    n = len(array)
    if split != "all" and n < 2:
        raise ValueError(
            f"expected at least 2 images in {path} to split into train and validation, got "
            f"{n}; use split='all'"
        )
    pixels, levels = _npy_levels(array, path)
    n_validation = max(1, n // 10)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    train, validation = np.sort(order[: n - n_validation]), np.sort(order[n - n_validation :])
    index = _split_indices(split, train, validation)
    return _to_image_set(pixels[index], None, levels, str(path))


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"expected {what} at {path}, got no such file; nothing is downloaded: put a copy "
        "there in torchvision's on-disk format (for example torchvision.datasets with "
        "download=True, run once elsewhere), or pass root= the folder that holds it"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and NumPy arrays only: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol 2 written by Python 3 stores bytes through codecs.encode.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"expected only NumPy arrays in a CIFAR-10 batch, got a reference to "
                f"{module}.{name}"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise _missing(path, "a CIFAR-10 batch file")
    try:
        with open(path, "rb") as f:
            # Python 2 pickles: encoding="bytes" keeps their str keys as bytes (b"data").
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"expected a CIFAR-10 batch in {path} (a pickled dict with b'data' uint8 of shape "
            f"(N, 3072) and b'labels'), got: {e!r}"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise ValueError(
            f"expected b'data' of shape (N, 3072) and N b'labels' in {path}, got shapes "
            f"{data.shape} and {labels.shape}"
        )
    # Rows are the red, green and blue 32 x 32 planes, each row-major.
    return data.reshape(-1, 3, 32, 32), labels


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise _missing(path, "an SVHN .mat file")
    mat = loadmat(path)
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(
            f"expected 'X' of shape (32, 32, 3, N) and 'y' in {path}, got keys "
            f"{sorted(k for k in mat if not k.startswith('__'))}"
        )
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    # SVHN's label 10 is the digit 0.
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8), labels


def _load_files(
    name: str,
    files: dict[str, list[str]],
    folder: Path,
    split: str,
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]],
) -> ImageSet:
    names = files["train"] + files["validation"] if split == "all" else files[split]
    parts = [read(folder / file) for file in names]
    pixels = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _to_image_set(pixels, labels, 256, name)


def load_images(
    source: str | os.PathLike[str],
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
) -> ImageSet:
    """Quantized images by name, or from a ``.npy`` file, with a fixed train/validation split.

    Sources:

    - ``"digits"``: scikit-learn's ``load_digits`` (shipped with scikit-learn, nothing to
      download): 1,797 handwritten digits of 8 x 8 pixels, levels 0..16, as ``(N, 1, 8, 8)``
      with ``levels = 17`` and labels 0..9. The split is fixed and stratified: 1,500 train
      and 297 validation images, every class in the validation split in proportion to its
      size (within one image), chosen per class by a permutation from
      ``torch.Generator().manual_seed(0)``.
    - a path ending in ``.npy``: an array of shape ``(N, C, H, W)`` or ``(N, H, W)`` (then
      ``C = 1``), any ``C, H, W >= 1``; no labels. Levels: ``uint8`` gives ``levels =
      256``; other integer arrays, values ``>= 0``, give ``levels = max + 1`` (at least 2,
      at most 65,536; save 8-bit images as ``uint8``, since an image set whose brightest
      pixel is below 255 would otherwise get fewer levels); float arrays with values in
      ``[0, 1]`` are 8-bit images, quantized to ``round(v * 255)`` with ``levels = 256``.
      The split is fixed: a permutation from ``torch.Generator().manual_seed(0)``, whose
      last ``max(1, N // 10)`` images are the validation split.
    - ``"cifar10"``: CIFAR-10 from a local copy in torchvision's layout,
      ``root/cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` (train, 50,000) and
      ``test_batch`` (validation, 10,000): ``(N, 3, 32, 32)``, ``levels = 256``, labels
      0..9. The batches are read with an unpickler that admits NumPy arrays only.
    - ``"svhn"``: SVHN's cropped digits from ``root/train_32x32.mat`` (train, 73,257) and
      ``root/test_32x32.mat`` (validation, 26,032): ``(N, 3, 32, 32)``, ``levels = 256``,
      labels 0..9 (SVHN's label 10 is the digit 0).

    Images keep the order of their source within a split; ``"all"`` is every image in
    source order (for CIFAR-10 and SVHN: train, then validation, the official test set).
    Nothing is ever downloaded.

    Args:
        source: ``"digits"``, ``"cifar10"``, ``"svhn"``, or a ``.npy`` path.
        split: ``"train"``, ``"validation"`` or ``"all"``.
        root: the folder holding CIFAR-10's ``cifar-10-batches-py`` or SVHN's ``.mat``
            files; default ``data/`` under the current directory. Ignored otherwise.

    Returns:
        An :class:`ImageSet`, pixel level ``k`` stored as ``k / levels`` in float32.

    Raises:
        FileNotFoundError: a missing ``.npy`` file, or CIFAR-10 or SVHN files missing from
            ``root`` (the message names the path expected).
        ValueError: an unknown source or split, a ``.npy`` file that
            :func:`~pyro_flowebm.datasets.npy_shape` refuses (unreadable, not a ``.npy``
            file, damaged, truncated, or holding Python objects, which are never
            unpickled), or a ``.npy`` array refused by the rules above: another ndim, no
            image, NaN or infinite values, negative values, floats outside ``[0, 1]``, more
            than 65,536 integer levels, or fewer than 2 images to split.

    Example:
        >>> train = load_images("digits")
        >>> train.images.shape, train.levels, len(load_images("digits", "validation").images)
        (torch.Size([1500, 1, 8, 8]), 17, 297)
    """
    _check_split(split)
    if isinstance(source, str) and source == "digits":
        return _load_digits(split)
    folder = Path("data" if root is None else root)
    if isinstance(source, str) and source == "cifar10":
        return _load_files("cifar10", _CIFAR_FILES, folder / _CIFAR_DIR, split, _read_cifar_batch)
    if isinstance(source, str) and source == "svhn":
        return _load_files("svhn", _SVHN_FILES, folder, split, _read_svhn)
    if str(source).lower().endswith(".npy"):
        return _load_npy(Path(source), split)
    raise ValueError(
        f"expected an image data set name (one of {', '.join(IMAGE_SETS)}) or a path to a "
        f".npy file, got {str(source)!r}"
    )
