"""User data from files (.npy, .pt, .csv), checked before use, and loading by name or path."""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from .toys import TOYS

__all__ = ["load", "load_file", "npy_shape", "validate_data"]

# The largest magnitude data may have. Training runs in float32 (largest finite value
# 3.4e38): the flow's base log density takes 0.5 * x**2, which overflows beyond |x| ~ 1.8e19,
# and before that the flow's affine layers multiply x by exp(scale). 1e15 keeps x**2 below
# 1e30, eight orders of magnitude (a factor 1e4 on x) under the overflow, for those scales
# and for sums over dimensions; it also keeps every integer up to it exact in float64
# (2**53 ~ 9e15). Data this large is unscaled anyway: float32 resolves 1e15 only to ~1e8.
_MAX_MAGNITUDE = 1e15
# The first bytes of every .npy file (numpy.lib.format.MAGIC_PREFIX).
_NPY_MAGIC = b"\x93NUMPY"
# Kinds of dtype numpy reads as plain numbers: bool, signed and unsigned integer, float,
# complex. Everything else (objects, strings, dates, records) is refused.
_NUMERIC_KINDS = "biufc"


def validate_data(data: Tensor | np.ndarray, name: str = "data") -> Tensor:
    """Check that ``data`` is a finite, real, 2-D array of ``n >= 2`` rows and ``d >= 1`` columns.

    Training code calls it to refuse bad data before starting; :func:`load_file` calls it
    on what it reads. Values must also be at most :math:`10^{15}` in magnitude: training
    runs in float32 (largest finite value :math:`3.4 \\times 10^{38}`), where the flow's
    base density squares :math:`x` (overflowing beyond :math:`|x| \\approx 1.8 \\times
    10^{19}`) after affine layers that scale it by :math:`e^{s}`; the bound leaves a factor
    :math:`10^4` for those scales, and guarantees that the data stays finite after a cast to
    float32. Larger data is refused with its largest absolute value: rescale it, or
    standardize each column.

    Args:
        data: a tensor or a NumPy array (anything ``numpy.asarray`` accepts).
        name: what to call the data in error messages, e.g. ``"data in train.csv"``.

    Returns:
        The data as a tensor: a floating dtype is kept (NumPy's long double becomes
        float64), integers become torch's default dtype.

    Raises:
        ValueError: non-numeric (including bool or complex), not 2-D, fewer than 2 rows,
            no columns, NaN or infinite entries, or entries larger than :math:`10^{15}` in
            magnitude.

    Example:
        >>> validate_data(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
        >>> validate_data(torch.zeros(1, 2))
        Traceback (most recent call last):
        ...
        ValueError: expected data of shape (n, d) with n >= 2 rows, got 1 row (shape (1, 2))
        >>> validate_data(np.array([[0.0], [1e39]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: expected data with values of magnitude at most 1e+15 ..., got ... 1e+39; ...
    """
    if isinstance(data, Tensor):
        real = data.dtype != torch.bool and not data.is_complex()
    else:
        data = np.asarray(data)
        real = data.dtype.kind in "fiu"  # float, signed or unsigned integer
    if not real:
        raise ValueError(f"expected real numbers in {name}, got dtype {data.dtype}")
    _check_shape(tuple(data.shape), name)
    x = data if isinstance(data, Tensor) else _numpy_to_tensor(data)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    _check_values(x, name)
    return x


def _check_shape(shape: tuple[int, ...], name: str) -> None:
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


def _numpy_to_tensor(array: np.ndarray) -> Tensor:
    """A real NumPy array as a tensor: integers in torch's default dtype, through float64
    (exact up to the magnitude bound, and defined for every integer dtype torch lacks)."""
    if array.dtype.kind in "iu":
        return torch.as_tensor(array.astype(np.float64)).to(torch.get_default_dtype())
    if array.dtype.itemsize > 8:
        # A long double beyond float64's range becomes infinite and is refused as such.
        with np.errstate(over="ignore"):
            array = array.astype(np.float64)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # torch reads native order only
    return torch.as_tensor(array)


def _check_values(x: Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        nan = int(x.isnan().sum())
        raise ValueError(
            f"expected finite values in {name}, got {nan} NaN and {int(bad.sum()) - nan} "
            "infinite entries; drop or impute them first"
        )
    largest = float(x.abs().max())
    if largest > _MAX_MAGNITUDE:
        raise ValueError(
            f"expected {name} with values of magnitude at most {_MAX_MAGNITUDE:g} (trainable "
            f"in float32), got largest absolute value {largest:g}; rescale or standardize it "
            "(subtract each column's mean, divide by its standard deviation)"
        )


def npy_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The shape of the array in a ``.npy`` file, read from its header alone.

    Nothing is unpickled and no data is read: the header (format versions 1.0 to 3.0) gives
    the shape and dtype, which must be numeric (bool, integer, float or complex: an array
    of Python objects, saved with ``allow_pickle=True``, is refused, as are strings,
    dates and records), and the data it announces, shape times item size, must fit in the
    file. A file that passes loads with ``numpy.load(path, allow_pickle=False)`` without
    allocating more than the file holds.

    Args:
        path: the ``.npy`` file.

    Returns:
        The shape, e.g. ``(n, d)`` for vectors or ``(N, C, H, W)`` for images.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, or one that is not a ``.npy`` file of numbers
            whose data fits in it (empty, another format, a damaged header, objects,
            truncated data); the message names the file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.save(Path(tmp, "x.npy"), np.zeros((5, 1, 8, 8), dtype=np.uint8))
        ...     npy_shape(Path(tmp, "x.npy"))
        (5, 1, 8, 8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected an existing .npy file, got {path}: no such file")
    try:
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f, path)
            available = os.fstat(f.fileno()).st_size - f.tell()
    except OSError as e:
        raise _unreadable(path, e) from e
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS:
        pickled = " (Python objects, which are never unpickled)" if dtype.hasobject else ""
        raise ValueError(
            f"expected a numeric NumPy array (bool, integer, float or complex) in {path}, got "
            f"dtype {dtype}{pickled}; save numbers, e.g. np.save(path, x.astype(np.float32))"
        )
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise ValueError(
            f"expected {needed} bytes of data in {path} for its header's shape {shape} of "
            f"{dtype}, got {available}: the file is truncated or its header is damaged"
        )
    return shape


def _npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an open ``.npy`` file, positioned after it."""
    start = f.read(len(_NPY_MAGIC))
    if start != _NPY_MAGIC:
        got = "an empty file (0 bytes)" if not start else f"a file starting with {start!r}"
        raise ValueError(
            f"expected a NumPy .npy file in {path} (starting with {_NPY_MAGIC!r}), got {got}: "
            "not a NumPy .npy file; save the array with numpy.save"
        )
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            # 3.0 differs from 2.0 only by a UTF-8 header, the same bytes for a numeric dtype.
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version}")
    except Exception as e:
        # numpy parses the header with tokenize and ast.literal_eval: a damaged one raises
        # whatever they trip on (ValueError, SyntaxError, tokenize.TokenError, ...). numpy's
        # own message may advise allow_pickle=True: never; it stays in __cause__.
        raise ValueError(
            f"expected a NumPy .npy file in {path}, got a damaged or unsupported header "
            "(its shape and dtype cannot be read)"
        ) from e
    if any(n < 0 for n in shape):
        raise ValueError(f"expected a NumPy .npy file in {path}, got the shape {shape}")
    return tuple(shape), dtype


def _unreadable(path: Path, e: OSError) -> ValueError:
    reason = e.strerror or type(e).__name__
    return ValueError(f"expected a readable file, got {path}: {reason.lower()}")


def _read_npy(path: Path) -> np.ndarray:
    npy_shape(path)
    try:
        return np.load(path, allow_pickle=False)
    except OSError as e:
        raise _unreadable(path, e) from e
    except ValueError as e:
        raise ValueError(f"expected a numeric NumPy array in {path}, got: {e}") from e


def _check_pt_archive(path: Path) -> None:
    """A zip archive whose records, stored uncompressed as torch.save writes them, fit in
    the file: torch then never allocates more than the file holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except Exception as e:
        # zipfile trips on damaged bytes in many ways (BadZipFile, NotImplementedError for an
        # unknown version, EOFError, OSError on a wild offset, ...): all mean the same here.
        raise ValueError(
            f"expected a .pt file written by torch.save (a zip archive) in {path}, got a file "
            "that is not one (damaged, truncated, another format, or torch's legacy format, "
            "whose sizes torch trusts before reading; re-save it with torch.save)"
        ) from e
    size = path.stat().st_size
    compressed = any(r.compress_type != zipfile.ZIP_STORED for r in records)
    if compressed or sum(r.file_size for r in records) > size:
        raise ValueError(
            f"expected a .pt file written by torch.save in {path} (uncompressed records that "
            f"fit in its {size} bytes), got a damaged archive"
        )


def _weights_only_reason(e: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn it off."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(e))
    return found.group(1).strip() if found else type(e).__name__


def _read_pt(path: Path) -> Tensor:
    _check_pt_archive(path)
    try:
        with warnings.catch_warnings():
            # Read as data, whichever pickle protocol wrote it.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"expected a tensor saved by torch.save in {path}, got Python objects that are "
            f"never unpickled ({_weights_only_reason(e)})"
        ) from e
    except Exception as e:
        # A damaged archive trips torch's reader or unpickler anywhere (RuntimeError,
        # EOFError, KeyError, ...): to the user these all mean the same.
        first = str(e).split(".")[0][:200]
        raise ValueError(
            f"expected a tensor saved by torch.save in {path}, got a damaged file "
            f"({type(e).__name__}: {first})"
        ) from e
    if not isinstance(data, Tensor):
        raise ValueError(f"expected one tensor in {path}, got {type(data).__name__}")
    if data.layout != torch.strided:
        raise ValueError(f"expected a dense tensor in {path}, got layout {data.layout}")
    # A view can repeat a small storage (stride 0) into any shape: the checks that follow
    # would allocate all of it. As for .npy, the data must fit in the file.
    needed, size = data.numel() * data.element_size(), path.stat().st_size
    if needed > size:
        raise ValueError(
            f"expected a tensor whose {needed} bytes of data fit in {path} ({size} bytes), got "
            f"shape {tuple(data.shape)} with strides {data.stride()}: a view that repeats its "
            "storage; save x.contiguous() instead"
        )
    return data


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    try:
        # utf-8-sig: also the UTF-8 that spreadsheets write, behind a byte-order mark.
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise _unreadable(path, e) from e
    except UnicodeDecodeError as e:
        raise ValueError(
            f"expected UTF-8 text (comma-separated numbers) in {path}, got the byte "
            f"{e.object[e.start : e.start + 1]!r} at offset {e.start}, which is not UTF-8"
        ) from e
    lines = [line for line in text.splitlines() if line.strip()]
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

    ``.npy`` is read without pickles, its header checked by :func:`npy_shape` first; ``.pt``
    must hold one dense tensor whose data fits in the file, in the zip archive
    ``torch.save`` writes (read with ``torch.load(weights_only=True)``: nothing but tensors
    is unpickled; torch's legacy format is refused, since torch allocates the sizes it
    claims before checking them); ``.csv`` holds UTF-8 comma-separated numbers, one point
    a row, with an optional first row of column names (a row without any number). The
    result is checked by :func:`validate_data` (finite values of magnitude at most
    :math:`10^{15}`, so that they stay finite in float32), then cast to torch's default
    dtype.

    Args:
        path: the file.

    Returns:
        The data, in torch's default dtype.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, a file without read permission, contents that are
            not of the format its extension names (empty, damaged, truncated, pickled
            objects, not UTF-8), or data that :func:`validate_data` refuses; every message
            names the file.

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
    readers = {".npy": _read_npy, ".pt": _read_pt, ".csv": _read_csv}
    read = readers.get(path.suffix.lower())
    if read is None:
        raise ValueError(f"expected a .npy, .pt or .csv file, got {path}")
    try:
        open(path, "rb").close()
    except OSError as e:
        raise _unreadable(path, e) from e
    data = validate_data(read(path), name=f"data in {path}")
    # Finite after the cast: validate_data bounds the magnitude far below float32's range.
    return data.to(torch.get_default_dtype())


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
