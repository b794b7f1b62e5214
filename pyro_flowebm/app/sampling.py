"""Sampling a trained run into a NetCDF file of ArviZ InferenceData."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import on_first_process, process_rank
from ..infer import preset_kernel, sample_ebm
from ..io import write_netcdf
from .checks import check_count, check_fits_in_memory, check_output_file, check_seed
from .config import COMPILE_MIN_GRADIENTS, RunConfig, default_of
from .training import build_run_model, read_run_state

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["check_shared_chains", "sample_run"]


def _gradients_per_iteration(settings: dict[str, Any]) -> int:
    """Gradient evaluations a chain and iteration of a kernel, from its settings: a cycle's
    members times their repeats, an independence move's one, HMC's leapfrog steps (ChEES's
    vary: those of its starting length)."""
    if "kernels" in settings:
        pairs = zip(settings["kernels"], settings["repeats"], strict=True)
        return sum(r * _gradients_per_iteration(k) for k, r in pairs)
    if settings["name"] == "IndependenceMH":
        return 1
    if settings["chees"]:
        return math.ceil(settings["init_trajectory_length"] / settings["step_size"])
    return settings["num_steps"]


def check_shared_chains(sampler: str, num_chains: int, processes: int) -> None:
    """Chains that ``processes`` processes can share: as many each, of a vectorized preset.

    Example:
        >>> check_shared_chains("nuts", 4, 2)
        Traceback (most recent call last):
        ...
        ValueError: expected a vectorized sampler in several processes, got nuts
    """
    if processes == 1:
        return
    if sampler == "nuts":
        # NUTS runs its chains one at a time, each process all of them.
        raise ValueError("expected a vectorized sampler in several processes, got nuts")
    if num_chains % processes:
        raise ValueError(
            f"expected --num-chains divisible by the {processes} processes, got {num_chains}"
        )


def sample_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sampler: str = default_of(sample_ebm, "sampler"),
    num_chains: int = default_of(sample_ebm, "num_chains"),
    num_samples: int = default_of(sample_ebm, "num_samples"),
    warmup_steps: int = default_of(sample_ebm, "warmup_steps"),
    thin: int = default_of(sample_ebm, "thin"),
    seed: int | None = default_of(sample_ebm, "seed"),
    device: str | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
    compile: bool | None = None,
) -> InferenceData:
    """Sample a run's FlowEBM with a preset of :func:`~pyro_flowebm.infer.sample_ebm` and
    write the draws as NetCDF (atomically) to ``out``.

    In a ``torch.distributed`` run (``pyro-flowebm sample --nproc-per-node N``, or
    torchrun) each process moves its share of the chains and the first writes all of them:
    the same draws as one process with the same seed.

    Args:
        run_dir: the run.
        out: a ``.nc`` file; an existing one is replaced only with ``overwrite``.
        sampler: the preset (see :func:`~pyro_flowebm.infer.sample_ebm`), and its counts,
            thinning and seed.
        num_chains: number of chains.
        num_samples: kept draws per chain.
        warmup_steps: warm-up iterations.
        thin: keep every ``thin``-th draw.
        seed: the seed of the draws.
        device: where to sample (default: the run's device).
        overwrite: replace an existing ``out``.
        progress_bar: show the sampler's progress.
        compile: compute the chains' gradients through ``torch.compile`` (see
            :func:`~pyro_flowebm.infer.sample_ebm`); ``None``: where it pays, for vector
            runs with a vectorized preset taking at least
            :data:`~pyro_flowebm.app.config.COMPILE_MIN_GRADIENTS` gradient evaluations a
            chain. The choice is in the attrs (``compile`` in the kernel's settings).

    Returns:
        The InferenceData written.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is not set (checked before
            sampling, and again, atomically, when the file is written).
        FileNotFoundError: no run, no checkpoint, or no directory to hold ``out``.
        ValueError: ``out`` is not a ``.nc`` file, a count or seed out of range, draws that
            would not fit in memory, a device this machine lacks, or a damaged run.
    """
    out = Path(out)

    def opened() -> tuple[RunConfig, dict[str, Any]]:
        check_output_file("--out", out, (".nc",), overwrite)
        for name, value, minimum in (
            ("--num-chains", num_chains, 1), ("--num-samples", num_samples, 1),
            ("--warmup-steps", warmup_steps, 0), ("--thin", thin, 1),
        ):  # fmt: skip
            check_count(name, value, minimum)
        if seed is not None:
            check_seed("--seed", seed)
        check_shared_chains(sampler, num_chains, process_rank()[1])
        config, checkpoint = read_run_state(run_dir, device)
        # Kept draws of x and z, four bytes a number.
        num_bytes = 2 * 4 * num_chains * num_samples * int(np.prod(checkpoint["event_shape"]))
        check_fits_in_memory(f"{num_chains} chains of {num_samples} draws", num_bytes)
        return config, checkpoint

    # In a torch.distributed run the first process checks and reads for all; each moves its
    # share of the chains, and the first writes all of them.
    ebm = build_run_model(run_dir, *on_first_process(opened))
    if compile is None:
        iterations = warmup_steps + num_samples * thin
        vectors = len(ebm.event_shape) == 1
        compile = (
            vectors
            and sampler != "nuts"  # no compiled form
            and iterations * _gradients_per_iteration(preset_kernel(sampler).settings())
            >= COMPILE_MIN_GRADIENTS
        )
    idata = sample_ebm(
        ebm, sampler, num_chains, num_samples, warmup_steps,
        thin=thin, seed=seed, progress_bar=progress_bar, compile=compile,
    )  # fmt: skip
    if process_rank()[0] == 0:
        write_netcdf(idata, out, overwrite=overwrite)
    return idata
