"""Checks the commands make before they write anything: devices, seeds, sizes, output places."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core import check_int

__all__ = [
    "MAX_COUNT",
    "SEED_LIMIT",
    "check_count",
    "check_device",
    "check_fits_in_memory",
    "check_output_file",
    "check_seed",
    "check_writable_dir",
    "total_memory",
]

# Seeds go to torch, Python's random and NumPy's legacy generator: [0, 2**32) suits all three.
SEED_LIMIT = 2**32
# Counts (steps, chains, draws, widths) beyond this are typos: 2**31 - 1 also fits int32.
MAX_COUNT = 2**31 - 1


def check_seed(name: str, seed: object) -> int:
    """An integer seed in ``[0, 2**32)``.

    Example:
        >>> check_seed("--seed", 2**70)
        Traceback (most recent call last):
        ...
        ValueError: expected --seed in [0, 2**32), got 1180591620717411303424
    """
    seed = check_int(name, seed, 0)
    if seed >= SEED_LIMIT:
        raise ValueError(f"expected {name} in [0, 2**32), got {seed}")
    return seed


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An integer in ``[minimum, MAX_COUNT]``.

    Example:
        >>> check_count("--steps", 10**23)
        Traceback (most recent call last):
        ...
        ValueError: expected --steps <= 2147483647, got 100000000000000000000000
    """
    value = check_int(name, value, minimum)
    if value > MAX_COUNT:
        raise ValueError(f"expected {name} <= {MAX_COUNT}, got {value}")
    return value


def check_device(name: str, text: str) -> torch.device:
    """A torch device this machine has: ``cpu``, or ``cuda``/``cuda:N``/``mps`` when present.

    Example:
        >>> check_device("--device", "cpu")
        device(type='cpu')
        >>> check_device("--device", "foo")
        Traceback (most recent call last):
        ...
        ValueError: expected --device to be a torch device such as cpu or cuda:0, got 'foo'
    """
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"expected {name} to be a torch device such as cpu or cuda:0, got {text!r}"
        ) from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"expected {name} {text} to be a CUDA device, got none on this machine"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(f"expected {name} {text} among the {count} CUDA devices, got none")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"expected {name} mps to be available, got none on this machine")
    elif device.type != "cpu":
        raise ValueError(f"expected {name} to be cpu, cuda or mps, got {text!r}")
    return device


def total_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits_in_memory(what: str, num_bytes: float) -> None:
    """Refuse work whose smallest memory need, ``num_bytes``, exceeds the machine's memory.

    Example:
        >>> check_fits_in_memory("the draws of --num-samples 10**12", 8e12 * 4)
        Traceback (most recent call last):
        ...
        ValueError: expected the draws of --num-samples 10**12 to fit in memory ...
    """
    available = total_memory()
    if num_bytes > available:
        raise ValueError(
            f"expected {what} to fit in memory ({available / 2**30:.1f} GiB on this machine), "
            f"got at least {num_bytes / 2**30:.3g} GiB"
        )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable_dir(name: str, directory: Path) -> None:
    """``directory`` is, or can be created as, a directory this process may write into.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     check_writable_dir("--out", Path(f.name, "run"))
        Traceback (most recent call last):
        ...
        NotADirectoryError: expected --out /tmp/.../run to be a directory, got /tmp/..., a file
    """
    ancestor = _existing_ancestor(directory)
    if not ancestor.is_dir():
        raise NotADirectoryError(
            f"expected {name} {directory} to be a directory, got {ancestor}, a file"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            13, f"expected {name} {directory} to be writable, got no write permission on {ancestor}"
        )


def check_output_file(name: str, path: Path, suffixes: tuple[str, ...], overwrite: bool) -> None:
    """``path`` ends in one of ``suffixes``, sits in an existing writable directory, and is
    new unless ``overwrite``.

    Example:
        >>> check_output_file("--out", Path("draws.txt"), (".nc",), False)
        Traceback (most recent call last):
        ...
        ValueError: expected a .nc file for --out, got draws.txt
    """
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"expected a {' or '.join(suffixes)} file for {name}, got {path}")
    if path.is_dir():
        raise IsADirectoryError(21, f"expected a file for {name}, got the directory {path}")
    if not path.parent.absolute().is_dir():
        raise FileNotFoundError(
            f"expected {name} {path} in an existing directory, got no directory {path.parent}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"expected a new {name} file, got existing {path}; pass --overwrite")
    check_writable_dir(name, path.parent)
