"""Processes of one run: launching them through ``torch.distributed.run`` (torchrun) and
joining a launched process to the run's process group.

``pyro-flowebm train|sample --nproc-per-node N`` starts N copies of the command on this
machine through torchrun's own launcher (``--standalone``); a process started by torchrun
(``torchrun --nproc-per-node N -m pyro_flowebm ...``, on one node or many) joins the
process group with :func:`process_group`. What a process group does to training and
sampling is in :mod:`pyro_flowebm.core.shard`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .checks import MAX_COUNT

__all__ = [
    "BACKENDS",
    "STOPPED",
    "ProcessStopped",
    "check_processes",
    "choose_backend",
    "launch",
    "launched",
    "process_group",
    "without_launch_flag",
]

# The --backend choices: auto is nccl for CUDA devices and gloo for the rest.
BACKENDS = ("auto", "gloo", "nccl")
LAUNCH_FLAG = "--nproc-per-node"
# The exit code of a process stopped by the launcher (SIGTERM, 128 + 15), as the command
# returns it.
STOPPED = 128 + signal.SIGTERM


class ProcessStopped(Exception):
    """The launcher stopped this process (SIGTERM): another process of the run failed, or
    the launcher itself was stopped."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets
    ``RANK`` and ``WORLD_SIZE``).

    Example:
        >>> launched()
        False
    """
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_backend(backend: str, device: str) -> str:
    """The process-group backend for ``device``: ``auto`` is ``nccl`` for CUDA and ``gloo``
    otherwise; ``nccl`` needs a CUDA device.

    Example:
        >>> choose_backend("auto", "cpu")
        'gloo'
        >>> choose_backend("nccl", "cpu")
        Traceback (most recent call last):
        ...
        ValueError: expected --backend gloo or auto for device cpu (nccl: CUDA only), got nccl
    """
    if backend not in BACKENDS:
        raise ValueError(f"expected --backend in {', '.join(BACKENDS)}, got {backend}")
    cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ValueError(
            f"expected --backend gloo or auto for device {device} (nccl: CUDA only), got nccl"
        )
    return backend


def check_processes(nproc: int, device: str, backend: str, counts: dict[str, int]) -> str:
    """Check a launch of ``nproc`` processes on this machine before anything starts;
    returns the backend. ``counts`` (``{"--batch-size": 256}``) must split evenly.

    Example:
        >>> check_processes(2, "cpu", "auto", {"--num-chains": 5})
        Traceback (most recent call last):
        ...
        ValueError: expected --num-chains divisible by --nproc-per-node 2, got 5
    """
    if not 1 <= nproc <= MAX_COUNT:
        raise ValueError(f"expected {LAUNCH_FLAG} >= 1, got {nproc}")
    backend = choose_backend(backend, device)
    if torch.device(device).type == "cuda":
        if torch.device(device).index is not None and nproc > 1:
            raise ValueError(
                f"expected --device cuda with {LAUNCH_FLAG} {nproc} (each process takes the "
                f"GPU of its local rank), got {device}"
            )
        available = torch.cuda.device_count()
        if nproc > available:
            raise ValueError(
                f"expected {LAUNCH_FLAG} <= {available}, the CUDA devices of this machine, "
                f"got {nproc}"
            )
    for name, count in counts.items():
        if count % nproc:
            raise ValueError(f"expected {name} divisible by {LAUNCH_FLAG} {nproc}, got {count}")
    return backend


def without_launch_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--nproc-per-node N`` (or ``--nproc-per-node=N``).

    Example:
        >>> without_launch_flag(["train", "--nproc-per-node", "2", "--out", "r"])
        ['train', '--out', 'r']
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == LAUNCH_FLAG:
            skip = True
        elif not arg.startswith(LAUNCH_FLAG + "="):
            out.append(arg)
    return out


def launch(argv: Sequence[str], nproc: int) -> tuple[int, list[str]]:
    """Run ``python -m pyro_flowebm *argv`` in ``nproc`` processes on this machine through
    ``torch.distributed.run`` and wait for them. When one fails, torchrun stops the others.

    Returns:
        The exit code, and a description of each process that a signal ended (SIGKILL, a
        crash). A process that exited with a code of its own (a diverged training, bad
        input, no memory) said why itself: its code, and no description.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "pyro_flowebm"]
    )
    # Set, not parsed: torchrun's parser would take the command's flags for its own
    # abbreviations (--run for --run-path).
    args.training_script_args = list(argv)
    try:
        run(args)
    except ChildFailedError as e:
        failures = sorted(e.failures.items())
        # The processes the launcher stopped after the first failure are not news.
        first = [(r, f) for r, f in failures if f.exitcode not in (STOPPED, -signal.SIGTERM)]
        first = first or failures
        if all(f.exitcode > 0 for _, f in first):
            return max(f.exitcode for _, f in first), []
        return 1, [_describe(rank, f, nproc) for rank, f in first if f.exitcode < 0]
    return 0, []


def _describe(rank: int, failure: Any, nproc: int) -> str:
    code = failure.exitcode
    how = f"signal {failure.signal_name()}" if code < 0 else f"exit code {code}"
    return f"process {rank} of {nproc} ended with {how}"


@contextlib.contextmanager
def process_group(device: str, backend: str) -> Iterator[None]:
    """Join the process group of a launched run for the block: the backend for ``device``
    (:func:`choose_backend`), each process on the CUDA device of its local rank (``cuda``
    then means that one), and SIGTERM (the launcher stopping the others after a failure)
    raised as :class:`ProcessStopped`."""
    backend = choose_backend(backend, device)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    previous = signal.signal(signal.SIGTERM, _stop)
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()
        signal.signal(signal.SIGTERM, previous)


def _stop(signum: int, frame: Any) -> None:
    raise ProcessStopped("stopped by the launcher: another process of the run failed")
