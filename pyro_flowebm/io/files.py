"""Files written whole or not at all, tensor files that carry a digest of their bytes, and
one process at a time in a directory.

Every file the package writes goes through :func:`write_bytes`: the bytes are built in
memory first, written to a temporary file unique to the process beside the target,
flushed to disk and renamed over the target. A crash (even SIGKILL), a full disk or a
refused permission leaves the old file as it was, and the temporary file is removed
whenever the process lives to do it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DIGEST_HEADER",
    "LOCK_FILE",
    "DirectoryLockedError",
    "atomic_write",
    "is_temporary",
    "load_tensors",
    "lock_directory",
    "replace_files",
    "save_tensors",
    "tensor_bytes",
    "write_bytes",
    "write_text",
]

# The first line of a tensor file: this, the hex SHA-256 of the rest of the file, "\n".
DIGEST_HEADER = b"pyro_flowebm-tensors sha256="
_DIGEST_LINE = len(DIGEST_HEADER) + 64 + 1
# torch.save's zip archives (files of 0.1, written without a digest) start with this.
_ZIP_MAGIC = b"PK\x03\x04"
# The lock of a directory: one process at a time writes into it.
LOCK_FILE = ".pyro_flowebm.lock"
_TMP_SUFFIX = ".tmp"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`write_bytes` (or the lock file):
    left behind by a killed process, never part of what a directory holds.

    Example:
        >>> is_temporary(".checkpoint.pt.k2j4x.tmp"), is_temporary("checkpoint.pt")
        (True, False)
    """
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(_TMP_SUFFIX))


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (the one place bytes reach a file)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stage(data: bytes, path: Path) -> Path:
    """Write ``data`` to a new temporary file beside ``path``, flushed to disk; returns it.
    On any error nothing is left behind and the ``OSError`` names ``path``."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise _named(e, path) from e
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, _mode_of(path))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise
    return tmp


def write_bytes(data: bytes, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    The bytes go to a temporary file unique to this process beside ``path`` (so two
    processes never write into one), are flushed to disk, and the file is renamed over
    ``path``. On any error the temporary file is removed and ``path`` is left as it was.

    Args:
        data: the file's bytes.
        path: the file.
        overwrite: replace an existing ``path``; else the rename is a hard link that
            fails, atomically, when ``path`` exists by then.

    Raises:
        OSError: the write failed (no space, no permission, ...); its message names
            ``path``. ``FileExistsError`` when ``overwrite`` is false and ``path`` exists.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_bytes(b"hi", Path(tmp, "a.bin"))
        ...     Path(tmp, "a.bin").read_bytes()
        b'hi'
    """
    replace_files({Path(path): data}, overwrite=overwrite)


def replace_files(
    files: Mapping[Path, bytes], remove: Iterable[Path] = (), *, overwrite: bool = True
) -> None:
    """Write several files, all or none: each to a temporary file first; only when every
    one is on disk are the files of ``remove`` deleted and the new ones renamed in place.

    A full disk or a refused permission while writing leaves everything as it was; a
    crash after that leaves the new files or the old ones of each name.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     old = Path(tmp, "old.txt")
        ...     _ = old.write_text("old run")
        ...     replace_files({Path(tmp, "new.txt"): b"new run"}, remove=[old])
        ...     sorted(p.name for p in Path(tmp).iterdir())
        ['new.txt']
    """
    staged: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            staged[path] = _stage(data, path)
        for path in remove:
            path.unlink(missing_ok=True)
        for path, tmp in staged.items():
            try:
                if overwrite:
                    os.replace(tmp, path)
                else:
                    os.link(tmp, path)
                    tmp.unlink()
            except OSError as e:
                raise _named(e, path) from e
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    for directory in {path.parent for path in files}:
        _fsync_directory(directory)


def _mode_of(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the file it replaces, or
    what ``open`` would give a new one under the process's umask (``mkstemp`` gives 0600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _named(error: OSError, path: Path) -> OSError:
    """``error`` again, of the same class, with a message that names ``path``."""
    reason = error.strerror or str(error)
    if isinstance(error, FileExistsError):
        message = f"expected no file at {path}, got an existing one"
    else:
        message = f"could not write {path}: {reason}"
    return type(error)(error.errno or errno.EIO, message)


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BytesIO], None]) -> None:
    """Call ``write`` on an in-memory file, then :func:`write_bytes` what it wrote.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     atomic_write(Path(tmp, "a.txt"), lambda f: f.write(b"hi"))
        ...     Path(tmp, "a.txt").read_text()
        'hi'
    """
    buffer = io.BytesIO()
    write(buffer)
    write_bytes(buffer.getvalue(), path)


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write UTF-8 text atomically (see :func:`write_bytes`)."""
    write_bytes(text.encode("utf-8"), path)


def save_tensors(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically, after a header line with the SHA-256 of the saved bytes.

    ``obj`` holds tensors, numbers, strings and containers of them. :func:`load_tensors`
    checks the digest, so a damaged or truncated file is refused rather than read with
    changed values.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_tensors({"w": torch.ones(2)}, Path(tmp, "t.pt"))
        ...     Path(tmp, "t.pt").read_bytes().startswith(DIGEST_HEADER)
        True
    """
    write_bytes(tensor_bytes(obj), path)


def tensor_bytes(obj: Any) -> bytes:
    """The bytes :func:`save_tensors` writes: the digest line, then ``torch.save``'s archive.

    Example:
        >>> tensor_bytes(torch.zeros(1))[:20]
        b'pyro_flowebm-tensors'
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    return DIGEST_HEADER + digest + b"\n" + payload


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """What :func:`save_tensors` wrote, its digest checked, read with ``torch.load(
    weights_only=True)`` (a file can hold no code) and its tensors on ``device``.

    Files written without a digest by version 0.1 (a bare ``torch.save`` archive) are read
    the same way, without the check.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the digest does not match (damaged or truncated), or the file is not
            one :func:`save_tensors` wrote; the message names the file.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_tensors({"w": torch.ones(2)}, Path(tmp, "t.pt"))
        ...     load_tensors(Path(tmp, "t.pt"))["w"].tolist()
        [1.0, 1.0]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"expected a file written by pyro_flowebm, got {path}: no such file"
        ) from e
    except OSError as e:
        raise type(e)(e.errno, f"could not read {path}: {e.strerror or e}") from e
    if data.startswith(DIGEST_HEADER):
        stored, payload = data[len(DIGEST_HEADER) : _DIGEST_LINE - 1], data[_DIGEST_LINE:]
        actual = hashlib.sha256(payload).hexdigest().encode("ascii")
        if data[_DIGEST_LINE - 1 : _DIGEST_LINE] != b"\n" or stored != actual:
            raise ValueError(
                f"expected {path} to match the SHA-256 digest it was written with, got other "
                f"bytes ({len(data)} bytes): the file is damaged or truncated"
            )
    elif data.startswith(_ZIP_MAGIC):
        payload = data
    else:
        raise ValueError(
            f"expected a tensor file written by pyro_flowebm in {path}, got {len(data)} bytes "
            f"starting {data[:16]!r}: a damaged or foreign file"
        )
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(
            f"expected a tensor file written by pyro_flowebm in {path}, got one torch cannot "
            f"read with weights_only=True: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


class DirectoryLockedError(RuntimeError):
    """Another process holds the lock of a directory."""


@contextmanager
def lock_directory(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (which must exist) for the ``with`` block.

    The lock is ``fcntl.flock`` on :data:`LOCK_FILE` in the directory; the operating
    system releases it when the process ends, however it ends, so a killed run never
    leaves a stale lock. The holder writes its process id and host into the file. (Where
    there is no ``fcntl``, on Windows, the block runs unlocked with a warning.) The lock
    is advisory and, on network file systems, only as good as their ``flock``.

    Raises:
        DirectoryLockedError: another process holds the lock; the message names it.

    Example:
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with lock_directory(tmp):
        ...         pass
    """
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): run unlocked, and say so
        warnings.warn(
            f"no directory locks on this platform: {directory} is not locked", stacklevel=3
        )
        yield
        return
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise type(e)(e.errno, f"could not lock {directory}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise DirectoryLockedError(
                f"expected no other process writing into {directory}, got one holding its "
                f"lock ({holder}); wait for it to finish or stop it"
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
