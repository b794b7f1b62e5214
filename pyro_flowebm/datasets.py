"""Data sets: 2-D toys with exact samplers, user data from files, and quantized images."""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_SETS",
    "TOYS",
    "ImageSet",
    "Toy",
    "dequantize",
    "eight_gaussians",
    "eight_gaussians_modes",
    "load",
    "load_file",
    "load_images",
    "validate_data",
]


def eight_gaussians_modes(radius: float = 4.0, dtype: torch.dtype | None = None) -> Tensor:
    """The 8 mode centres on a circle of ``radius``, shape ``(8, 2)``, mode k at angle k·45°.

    Example:
        >>> eight_gaussians_modes().shape
        torch.Size([8, 2])
    """
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    modes = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
    return modes.to(dtype or torch.get_default_dtype())


def eight_gaussians(
    n: int,
    radius: float = 4.0,
    sd: float = 0.15,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Exact draws of an equal-weight mixture of 8 isotropic Gaussians on a ring.

    Args:
        n: number of points.
        radius: radius of the ring of mode centres.
        sd: standard deviation of each component.
        generator: torch generator for reproducible draws.
        dtype: dtype of the result (default: torch's default dtype).

    Returns:
        Points of shape ``(n, 2)``.

    Example:
        >>> x = eight_gaussians(1000, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([1000, 2])
    """
    if n < 0:
        raise ValueError(f"expected n >= 0, got {n}")
    modes = eight_gaussians_modes(radius, torch.float64)
    k = torch.randint(8, (n,), generator=generator)
    x = modes[k] + sd * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.to(dtype or torch.get_default_dtype())


@dataclass(frozen=True, eq=False)
class Toy:
    """A 2-D toy data set: an exact sampler and, where known, its modes and log density.

    Tensors held here (``modes``, ``weights``) are float64 constants; cast them to the
    dtype of the data they are compared with. ``eq=False``: toys compare by identity, as
    their tensor fields have no single truth value.

    Attributes:
        name: key in :data:`TOYS`.
        description: one line on what the distribution is.
        sample: ``sample(n, *, generator=None, dtype=None)``, exact draws of shape
            ``(n, 2)``, in ``dtype`` (default: torch's default dtype).
        modes: ``(K, 2)`` mode centres of a Gaussian mixture, else ``None``.
        weights: ``(K,)`` mixture weights summing to 1, else ``None``.
        sd: standard deviation of the isotropic mixture components, else ``None``.
        log_prob: exact, normalized log density of points ``(..., 2)``, in their dtype,
            where it is analytic, else ``None``.

    Example:
        >>> toy = TOYS["mixture_unequal"]
        >>> toy.sample(500, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([500, 2])
        >>> toy.weights.sum().item()
        1.0
    """

    name: str
    description: str
    sample: Callable[..., Tensor]
    modes: Tensor | None = None
    weights: Tensor | None = None
    sd: float | None = None
    log_prob: Callable[[Tensor], Tensor] | None = None


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"expected n >= 0 points, got {n}")


def _out(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    # Samplers compute in float64 so that draws of a seed agree across output dtypes.
    return x.to(dtype or torch.get_default_dtype())


def _categorical(weights: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    # Inverse CDF rather than torch.multinomial, which refuses n = 0.
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    k = torch.searchsorted(weights.cumsum(0), u, right=True)
    return k.clamp_max(len(weights) - 1)


def _mixture_log_prob(modes: Tensor, weights: Tensor, sd: float) -> Callable[[Tensor], Tensor]:
    def log_prob(x: Tensor) -> Tensor:
        mix = torch.distributions.Categorical(probs=weights.to(x))
        comp = torch.distributions.Independent(torch.distributions.Normal(modes.to(x), sd), 1)
        return torch.distributions.MixtureSameFamily(mix, comp).log_prob(x)

    return log_prob


# Eight Gaussians: the existing sampler with its defaults.
_EIGHT_SD = 0.15

# Mixture with unequal weights: far apart compared with sd (nearest modes 8.5 sd apart).
_UNEQUAL_MODES = torch.tensor(
    [[-3.0, 3.0], [3.0, 3.0], [0.0, 0.0], [3.0, -3.0], [-3.0, -3.0]], dtype=torch.float64
)
_UNEQUAL_WEIGHTS = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
_UNEQUAL_SD = 0.5


def _mixture_unequal(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    k = _categorical(_UNEQUAL_WEIGHTS, n, generator)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(_UNEQUAL_MODES[k] + _UNEQUAL_SD * eps, dtype)


# Rings: a point uniform on a circle of radius r_k (k uniform), plus isotropic noise.
_RING_RADII = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
_RING_SD = 0.1


def _rings(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    k = torch.randint(len(_RING_RADII), (n,), generator=generator)
    theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    circle = _RING_RADII[k, None] * torch.stack([theta.cos(), theta.sin()], dim=-1)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(circle + _RING_SD * eps, dtype)


def _rings_log_prob(x: Tensor) -> Tensor:
    # Averaging N(x; r u(θ), sd² I) over θ gives exp(-(s² + r²) / 2sd²) I0(s r / sd²) / 2π sd²
    # with s = |x|; I0(z) = i0e(z) e^z keeps it finite for the large z of thin rings.
    r = _RING_RADII.to(x)
    s = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    var = _RING_SD**2
    log_terms = -((s - r) ** 2) / (2 * var) + torch.special.i0e(s * r / var).log()
    log_w = -math.log(len(_RING_RADII))
    return torch.logsumexp(log_terms, dim=-1) + log_w - math.log(2 * math.pi * var)


# Two spirals: arm 0 is c(t) = a t (-cos t, sin t), t = 3π sqrt(u); arm 1 is -c(t).
_SPIRAL_TURNS = 3 * math.pi
_SPIRAL_SCALE = 4.0 / _SPIRAL_TURNS  # outer end at radius 4
_SPIRAL_SD = 0.1


def _spiral_curve(t: Tensor) -> Tensor:
    return _SPIRAL_SCALE * t[..., None] * torch.stack([-t.cos(), t.sin()], dim=-1)


def _two_spirals(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    # sqrt(u) makes the draws roughly uniform along the arc, as in FFJORD's "2spirals".
    t = _SPIRAL_TURNS * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    sign = 1 - 2 * torch.randint(2, (n, 1), generator=generator, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(sign * _spiral_curve(t) + _SPIRAL_SD * eps, dtype)


# Checkerboard: uniform on the 8 "black" cells of a 4 x 4 board of side-2 cells on [-4, 4)².
_CELL = 2.0
_BLACK_CELLS = torch.tensor(
    [[i, j] for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0],
    dtype=torch.float64,
)


def _checkerboard(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    k = torch.randint(len(_BLACK_CELLS), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return _out(_CELL * (_BLACK_CELLS[k] + u), dtype)


def _checkerboard_log_prob(x: Tensor) -> Tensor:
    cell = torch.floor(x / _CELL)
    inside = ((cell >= -2) & (cell <= 1)).all(-1) & (cell.sum(-1) % 2 == 0)
    area = len(_BLACK_CELLS) * _CELL**2
    value = torch.full_like(x[..., 0], -math.log(area))
    return torch.where(inside, value, torch.full_like(value, -math.inf))


# Two moons (scikit-learn's make_moons with t uniform), centred and scaled by 2.
_MOONS_SCALE = 2.0
_MOONS_SD = 0.1


def _two_moons(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    moon = torch.randint(2, (n, 1), generator=generator, dtype=torch.float64)
    t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([t.cos() - 0.5, t.sin() - 0.25], dim=-1)
    # The lower moon is the upper one reflected through the centre (0.5, 0.25).
    x = _MOONS_SCALE * (1 - 2 * moon) * upper
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(x + _MOONS_SD * eps, dtype)


# Pinwheel (FFJORD's): 5 arms, each a Gaussian bent by an angle growing with the radius.
_PINWHEEL_ARMS = 5
_PINWHEEL_RADIAL_SD = 0.3
_PINWHEEL_TANGENTIAL_SD = 0.1
_PINWHEEL_RATE = 0.25
_PINWHEEL_SCALE = 2.0


def _pinwheel(
    n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    _check_n(n)
    arm = torch.randint(_PINWHEEL_ARMS, (n,), generator=generator, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    a = 1.0 + _PINWHEEL_RADIAL_SD * eps[:, 0]
    b = _PINWHEEL_TANGENTIAL_SD * eps[:, 1]
    angle = 2 * math.pi * arm / _PINWHEEL_ARMS + _PINWHEEL_RATE * a.exp()
    c, s = angle.cos(), angle.sin()
    # (a, b) times the rotation [[c, -s], [s, c]] from the right, as in FFJORD.
    x = torch.stack([a * c + b * s, -a * s + b * c], dim=-1)
    return _out(_PINWHEEL_SCALE * x, dtype)


# Read-only: the registry is shared by every caller.
TOYS: Mapping[str, Toy] = MappingProxyType(
    {
        toy.name: toy
        for toy in [
            Toy(
                "eight_gaussians",
                "8 equal-weight Gaussians (sd 0.15) on a circle of radius 4, mode k at k·45°",
                eight_gaussians,
                modes=eight_gaussians_modes(dtype=torch.float64),
                weights=torch.full((8,), 1 / 8, dtype=torch.float64),
                sd=_EIGHT_SD,
                log_prob=_mixture_log_prob(
                    eight_gaussians_modes(dtype=torch.float64),
                    torch.full((8,), 1 / 8, dtype=torch.float64),
                    _EIGHT_SD,
                ),
            ),
            Toy(
                "rings",
                "4 equally likely circles of radii 1-4, uniform angle, Gaussian noise sd 0.1",
                _rings,
                log_prob=_rings_log_prob,
            ),
            Toy(
                "two_spirals",
                "2 interleaved spiral arms (1.5 turns, outer radius 4), x -> -x symmetric, sd 0.1",
                _two_spirals,
            ),
            Toy(
                "checkerboard",
                "uniform on the 8 black side-2 squares of a 4 x 4 board on [-4, 4)^2",
                _checkerboard,
                log_prob=_checkerboard_log_prob,
            ),
            Toy(
                "two_moons",
                "2 equally likely interleaved half circles of radius 2, Gaussian noise sd 0.1",
                _two_moons,
            ),
            Toy(
                "pinwheel",
                "5 curved arms, invariant under rotation by 72 degrees (FFJORD's pinwheel)",
                _pinwheel,
            ),
            Toy(
                "mixture_unequal",
                "5 Gaussians (sd 0.5) with weights 0.4, 0.3, 0.15, 0.1, 0.05",
                _mixture_unequal,
                modes=_UNEQUAL_MODES,
                weights=_UNEQUAL_WEIGHTS,
                sd=_UNEQUAL_SD,
                log_prob=_mixture_log_prob(_UNEQUAL_MODES, _UNEQUAL_WEIGHTS, _UNEQUAL_SD),
            ),
        ]
    }
)


def validate_data(data: Tensor | np.ndarray, name: str = "data") -> Tensor:
    """Check that ``data`` is a finite, real, 2-D array of ``n >= 2`` rows and ``d >= 1`` columns.

    Training code calls it to refuse bad data before starting; :func:`load_file` calls it
    on what it reads.

    Args:
        data: a tensor or a NumPy array (anything ``numpy.asarray`` accepts).
        name: what to call the data in error messages, e.g. ``"data in train.csv"``.

    Returns:
        The data as a tensor: a floating dtype is kept, integers become torch's default
        dtype.

    Raises:
        ValueError: non-numeric (including bool or complex), not 2-D, fewer than 2 rows,
            no columns, or NaN or infinite entries.

    Example:
        >>> validate_data(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
        >>> validate_data(torch.zeros(1, 2))
        Traceback (most recent call last):
        ...
        ValueError: expected data of shape (n, d) with n >= 2 rows, got 1 row (shape (1, 2))
    """
    if isinstance(data, Tensor):
        real = data.dtype != torch.bool and not data.is_complex()
    else:
        data = np.asarray(data)
        real = data.dtype.kind in "fiu"  # float, signed or unsigned integer
    if not real:
        raise ValueError(f"expected real numbers in {name}, got dtype {data.dtype}")
    shape = tuple(data.shape)
    if len(shape) != 2:
        raise ValueError(
            f"expected {name} to be 2-D of shape (n, d), got {len(shape)}-D shape {shape}; "
            "reshape one feature to (n, 1)"
        )
    if shape[0] < 2:
        rows = "1 row" if shape[0] == 1 else f"{shape[0]} rows"
        raise ValueError(
            f"expected {name} of shape (n, d) with n >= 2 rows, got {rows} (shape {shape})"
        )
    if shape[1] < 1:
        raise ValueError(f"expected {name} of shape (n, d) with d >= 1 columns, got {shape}")
    x = torch.as_tensor(data)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    bad = ~torch.isfinite(x)
    if bad.any():
        nan = int(x.isnan().sum())
        raise ValueError(
            f"expected finite values in {name}, got {nan} NaN and {int(bad.sum()) - nan} "
            "infinite entries; drop or impute them first"
        )
    return x


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and not any(_is_number(field) for field in lines[0].split(",")):
        # A first row without any number is a header of column names.
        header, lines = lines[0].split(","), lines[1:]
        if not lines:
            return np.empty((0, len(header)))
    if not lines:
        # Not through loadtxt, which warns on an empty input.
        return np.empty((0, 0))
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(
            f"expected comma-separated numbers in {path} (after an optional header row of "
            f"names), got: {e}"
        ) from e


def load_file(path: str | os.PathLike[str]) -> Tensor:
    """Load user data of shape ``(n, d)`` from a ``.npy``, ``.pt`` or ``.csv`` file.

    ``.npy`` is read without pickles; ``.pt`` must hold one tensor (read with
    ``torch.load(weights_only=True)``); ``.csv`` holds comma-separated numbers, one point
    a row, with an optional first row of column names (a row without any number). The
    result is checked by :func:`validate_data`.

    Args:
        path: the file.

    Returns:
        The data, in torch's default dtype.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, unreadable contents, or data that
            :func:`validate_data` refuses.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = Path(tmp, "d.csv").write_text("x,y\\n0,1\\n2,3\\n")
        ...     load_file(Path(tmp, "d.csv")).tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected an existing data file, got {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"expected a numeric NumPy array in {path}, got: {e}") from e
    elif suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as e:
            raise ValueError(f"expected a tensor saved by torch.save in {path}, got: {e}") from e
        if not isinstance(data, Tensor):
            raise ValueError(f"expected one tensor in {path}, got {type(data).__name__}")
    elif suffix == ".csv":
        data = _read_csv(path)
    else:
        raise ValueError(f"expected a .npy, .pt or .csv file, got {path}")
    return validate_data(data, name=f"data in {path}").to(torch.get_default_dtype())


def load(
    name_or_path: str | os.PathLike[str],
    n: int = 1000,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A toy data set by name, or user data from a file.

    A key of :data:`TOYS` gives ``n`` exact draws ``TOYS[name].sample(n, generator=...)``;
    anything else is a path read whole by :func:`load_file` (``n`` and ``generator`` are
    then ignored: a file is never subsampled).

    Args:
        name_or_path: a toy name (``"rings"``, ...) or a ``.npy``, ``.pt`` or ``.csv`` file.
        n: number of draws of a toy.
        generator: torch generator for reproducible draws of a toy.

    Returns:
        Points of shape ``(n, d)`` (``d = 2`` for the toys), in torch's default dtype.

    Raises:
        ValueError: neither a toy name nor an existing file, or a file that
            :func:`load_file` refuses.

    Example:
        >>> load("two_moons", 256, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([256, 2])
    """
    if isinstance(name_or_path, str) and name_or_path in TOYS:
        return TOYS[name_or_path].sample(n, generator=generator)
    if Path(name_or_path).is_file():
        return load_file(name_or_path)
    raise ValueError(
        f"expected a toy data set name (one of {', '.join(sorted(TOYS))}) or an existing "
        f".npy, .pt or .csv file, got {str(name_or_path)!r}"
    )


# Images.

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
        if self.levels < 2:
            raise ValueError(f"expected levels >= 2, got {self.levels}")


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
    if levels < 2:
        raise ValueError(f"expected levels >= 2, got {levels}")
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
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"expected a numeric NumPy array in {path}, got: {e}") from e
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(
            f"expected images of shape (N, C, H, W) or (N, H, W) in {path}, got "
            f"{array.ndim}-D shape {array.shape}"
        )
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
        ValueError: an unknown source or split, or a ``.npy`` array refused by the rules
            above: another ndim, no image, NaN or infinite values, negative values, floats
            outside ``[0, 1]``, more than 65,536 integer levels, or fewer than 2 images to
            split.

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
