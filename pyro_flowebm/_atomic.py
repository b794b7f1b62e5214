"""Atomic file writes: through a temporary file in the same directory, then a rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary path beside ``path``, flush it to disk, rename it over.

    A crash (even SIGKILL) leaves either the old file or the new one, never half of one.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
