"""Samples of points as the metrics take them: tensors or arrays of shape (n, d)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EXACT_DISTANCE", "ArrayLike", "as_pair", "as_points", "as_tensor"]

ArrayLike = Tensor | np.ndarray

# ``cdist`` without the |a|^2 + |b|^2 - 2ab shortcut: exact zeros on the diagonal, which the
# U-statistics rely on (k(x, x) = 1 and |x - x| = 0 exactly).
EXACT_DISTANCE = "donot_use_mm_for_euclid_dist"


def as_tensor(value: Any) -> Tensor:
    """A tensor from a tensor or an array-like; integer and bool inputs become floats."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if not (tensor.is_floating_point() or tensor.is_complex()):
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def as_points(name: str, value: Any, *, min_points: int = 1, d: int | None = None) -> Tensor:
    """Check and convert points of shape (n, d)."""
    points = as_tensor(value)
    if points.ndim != 2:
        raise ValueError(f"expected {name} of shape (n, d), got shape {tuple(points.shape)}")
    if points.shape[0] < min_points:
        raise ValueError(
            f"expected {name} with at least {min_points} points, got shape {tuple(points.shape)}"
        )
    if d is not None and points.shape[1] != d:
        raise ValueError(
            f"expected {name} of shape (n, {d}) to match the other sample, "
            f"got shape {tuple(points.shape)}"
        )
    return points


def as_pair(x: Any, y: Any, names: tuple[str, str] = ("x", "y")) -> tuple[Tensor, Tensor]:
    """Two samples of shape (n, d) and (m, d), on x's device, in their promoted dtype."""
    a = as_points(names[0], x, min_points=2)
    b = as_points(names[1], y, min_points=2, d=a.shape[1])
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)
