"""Files written whole or not at all: atomic writes of text, tensors and anything else."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "load_tensors", "save_tensors", "write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary path beside ``path``, flush it to disk, rename it over.

    A crash (even SIGKILL) leaves either the old file or the new one, never half of one.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     atomic_write(Path(tmp, "a.txt"), lambda p: p.write_text("hi"))
        ...     Path(tmp, "a.txt").read_text()
        'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically: tensors, numbers, strings and containers of them."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """``torch.load`` of what :func:`save_tensors` wrote, with ``weights_only=True`` (a file
    can hold no code) and tensors on ``device``."""
    return torch.load(path, map_location=device, weights_only=True)
