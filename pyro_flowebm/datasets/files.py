"""User data from files (.npy, .pt, .csv), checked before use, and loading by name or path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .toys import TOYS

__all__ = ["load", "load_file", "validate_data"]


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
