"""Chains and data batches split across the processes of a ``torch.distributed`` run.

When a default process group is initialized (``torchrun``, or ``pyro-flowebm ...
--nproc-per-node N``), the vectorized samplers and both training phases split their chains
and data batches into equal, contiguous blocks by rank. Every process draws every random
number of the whole batch from the same seeded stream and keeps its own block
(:func:`chain_draws`), so a chain's draws do not depend on how many processes run beside
it; statistics across chains (step-size adaptation, the mass matrix, ChEES) gather the
chains first, in rank order (:func:`all_chains`), so every process computes them as one
process would. Outside a process group every function here is the plain single-process
operation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Shard",
    "all_chains",
    "chain_draws",
    "data_parallel",
    "distributed",
    "local_rows",
    "on_first_process",
    "process_rank",
    "sharding",
]

T = TypeVar("T")


def distributed() -> bool:
    """Whether this process belongs to an initialized default process group.

    Example:
        >>> distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group.

    Example:
        >>> process_rank()
        (0, 1)
    """
    if not distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


@dataclass(frozen=True)
class Shard:
    """Process ``rank``'s block of ``total`` chains (or batch rows) among ``world``.

    Example:
        >>> shard = Shard(8, rank=1, world=2)
        >>> shard.rows(torch.arange(8)).tolist()
        [4, 5, 6, 7]
        >>> Shard(6, rank=0, world=4)
        Traceback (most recent call last):
        ...
        ValueError: expected a number of chains divisible by the 4 processes, got 6
    """

    total: int
    rank: int = 0
    world: int = 1
    what: str = "a number of chains"

    def __post_init__(self) -> None:
        if self.total % self.world:
            raise ValueError(
                f"expected {self.what} divisible by the {self.world} processes, got {self.total}"
            )

    @property
    def size(self) -> int:
        """Chains in each process's block."""
        return self.total // self.world

    def rows(self, full: Tensor) -> Tensor:
        """This process's block of a tensor of all ``total`` rows."""
        start = self.rank * self.size
        return full[start : start + self.size]

    def gather(self, local: Tensor) -> Tensor:
        """Every process's block, concatenated in rank order (a collective call)."""
        if self.world == 1:
            return local
        # gloo has no collective for bool tensors.
        wire = local.to(torch.uint8) if local.dtype == torch.bool else local.contiguous()
        blocks = [torch.empty_like(wire) for _ in range(self.world)]
        dist.all_gather(blocks, wire)
        return torch.cat(blocks).to(local.dtype)


_ACTIVE: contextvars.ContextVar[Shard | None] = contextvars.ContextVar("shard", default=None)


@contextlib.contextmanager
def sharding(total: int, what: str = "a number of chains") -> Iterator[Shard | None]:
    """Split ``total`` chains across the processes of the default group within the block.

    Yields the process's :class:`Shard`, or ``None`` (and changes nothing) outside a
    process group. Raises ``ValueError`` when the number of processes does not divide
    ``total`` (``what`` it counts, for the message).

    Example:
        >>> with sharding(4) as shard:
        ...     shard is None, chain_draws(torch.zeros, (4, 2)).shape
        (True, torch.Size([4, 2]))
    """
    if not distributed():
        yield None
        return
    rank, world = process_rank()
    token = _ACTIVE.set(Shard(total, rank, world, what))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def chain_draws(sampler: Callable[..., Tensor], shape: tuple[int, ...], **kwargs: Any) -> Tensor:
    """``sampler(shape, **kwargs)`` for per-chain random numbers (``shape[0]`` chains).

    Within :func:`sharding`, draws the numbers of all chains from the shared stream and
    returns this process's block, so every process's generator stays in step and a chain
    gets the numbers it would get in a single process.

    Example:
        >>> torch.manual_seed(0); a = chain_draws(torch.randn, (3, 2))
        <torch._C.Generator object at ...>
        >>> torch.manual_seed(0); torch.equal(a, torch.randn(3, 2))
        <torch._C.Generator object at ...>
        True
    """
    shard = _ACTIVE.get()
    if shard is None:
        return sampler(shape, **kwargs)
    if shape[0] != shard.size:
        raise ValueError(
            f"expected random numbers for this process's {shard.size} chains, got a request "
            f"for shape {tuple(shape)}"
        )
    return shard.rows(sampler((shard.total, *shape[1:]), **kwargs))


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` in a ``torch.distributed`` run
    (its parameters' device given for CUDA), ``module`` itself otherwise.

    Example:
        >>> module = torch.nn.Linear(2, 1)
        >>> data_parallel(module) is module
        True
    """
    if not distributed():
        return module
    device = next(module.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def local_rows(full: Tensor) -> Tensor:
    """This process's block of a tensor of all chains (all of it outside :func:`sharding`)."""
    shard = _ACTIVE.get()
    return full if shard is None else shard.rows(full)


def all_chains(local: Tensor) -> Tensor:
    """The rows of every process, in rank order (``local`` itself outside :func:`sharding`):
    what a statistic across chains is computed on."""
    shard = _ACTIVE.get()
    return local if shard is None else shard.gather(local)


def on_first_process(function: Callable[[], T]) -> T:
    """``function()`` on process 0 of the default group, its result (or its exception)
    sent to every process: one process reads and checks, all go on with the same values.
    Outside a process group, just ``function()``.

    Example:
        >>> on_first_process(lambda: 3)
        3
    """
    if not distributed() or dist.get_world_size() == 1:
        return function()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, function())
        except Exception as e:  # every process raises it, not only the first
            box[0] = (False, e)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value
