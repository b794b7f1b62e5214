"""Randomness: seeded blocks that restore the caller's stream, and the generators' saved state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["rng_state", "seeded", "set_rng_state"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's generator for the block and give the caller's stream back after it.

    ``seed=None`` leaves the current stream alone (the block draws from it). The CPU
    generator is always forked; with a CUDA ``device``, that device's generator too, so a
    seeded block on a GPU is reproducible and leaves the other devices untouched.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     torch.equal(torch.rand(2), a)
        True
    """
    if seed is None:
        yield
        return
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def rng_state() -> dict[str, Any]:
    """The state of torch's generators: the CPU one, and CUDA's once CUDA is in use.

    Example:
        >>> state = rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)
        >>> torch.equal(torch.rand(2), a)
        True
    """
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | Tensor) -> None:
    """Restore what :func:`rng_state` returned (a bare tensor: the CPU generator alone, as
    checkpoints written before CUDA's state was kept hold).

    The states may come back from a checkpoint loaded onto a GPU: generators take them on
    the CPU.
    """
    if isinstance(state, Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
