"""Conversions between torch tensors and NumPy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_numpy"]


def to_numpy(value: Any) -> np.ndarray:
    """A CPU NumPy array of a tensor (detached; bfloat16 becomes float32, which holds every
    bfloat16 value exactly) or of anything ``numpy.asarray`` takes.

    Example:
        >>> to_numpy(torch.ones(2, requires_grad=True))
        array([1., 1.], dtype=float32)
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.to(torch.float32)
        return value.numpy()
    return np.asarray(value)
