"""Training a run into its directory, resuming it, and loading the trained model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor

from .. import datasets
from ..core import on_first_process, process_rank, rng_state, set_rng_state
from ..distributions import FlowEBM
from ..flows import fit_backbone
from ..io import (
    LOCK_FILE,
    is_temporary,
    lock_directory,
    replace_files,
    save_tensors,
    tensor_bytes,
    write_text,
)
from ..train import backbone_modules, fit_ebm
from .checks import check_device, check_fits_in_memory, check_writable_dir
from .config import RunConfig
from .rundir import (
    CHECKPOINT,
    CONFIG,
    DATA,
    METRICS,
    RUN_FILES,
    prepare_run_dir,
    read_checkpoint,
    read_config,
    read_data,
    read_metrics,
)

__all__ = ["load_run", "train_run"]

# Held-out toy draws use the run's seed plus this, so they are independent of the training set.
_HELDOUT_SEED_OFFSET = 1_000_003


def _split(config: RunConfig) -> tuple[Tensor, Tensor, int | None]:
    """Training and held-out data of a config, and the levels of image data, before
    anything is written."""
    if config.images:
        train = datasets.load_images(config.data, "train")
        heldout = datasets.load_images(config.data, "validation")
        return train.images.float(), heldout.images.float(), train.levels
    if config.data in datasets.TOYS:
        train = datasets.load(
            config.data, config.num_data, generator=torch.Generator().manual_seed(config.seed)
        )
        seed = config.seed + _HELDOUT_SEED_OFFSET
        heldout = datasets.load(
            config.data, config.num_heldout, generator=torch.Generator().manual_seed(seed)
        )
        return train.float(), heldout.float(), None
    data = datasets.load(config.data).float()
    n_heldout = round(config.heldout_fraction * data.shape[0])
    if not 1 <= n_heldout < data.shape[0] - 1:
        raise ValueError(
            f"expected enough rows in {config.data} to hold out {config.heldout_fraction:g} "
            f"and train on at least 2, got {data.shape[0]} rows"
        )
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(config.seed))
    return data[order[n_heldout:]], data[order[:n_heldout]], None


def _fit_backbone_phase(
    out: Path, config: RunConfig, ebm: FlowEBM, train: Tensor, levels: int | None,
    progress_bar: bool,
) -> dict[str, Any]:  # fmt: skip
    """Fit the backbone from the start, write its metrics and checkpoint; returns it."""
    # The backbone fit is short and reruns identically from the seed. Re-seeded after
    # building, so that its minibatches (and so the fitted backbone) do not depend on how
    # many random numbers the energy's initialization drew.
    pyro.set_rng_seed(config.seed + 1)
    losses = fit_backbone(
        ebm.backbone, train, config.backbone_steps, lr=config.backbone_lr,
        batch_size=config.batch_size, dequantize=levels, progress_bar=progress_bar,
    )  # fmt: skip
    checkpoint = {
        "phase": "backbone",
        "event_shape": list(train.shape[1:]),
        "backbone": backbone_modules(ebm).state_dict(),
        "energy": ebm.energy.state_dict(),
        "rng": rng_state(),
    }
    if process_rank()[0] == 0:  # the first process writes for all
        lines = (
            json.dumps({"phase": "backbone", "step": i, "loss": v}) for i, v in enumerate(losses)
        )
        write_text("".join(line + "\n" for line in lines), out / METRICS)
        save_tensors(checkpoint, out / CHECKPOINT)
    return checkpoint


def _tilt_phase(
    out: Path, config: RunConfig, ebm: FlowEBM, data: tuple[Tensor, Tensor, int | None],
    trainer: dict[str, Any] | None, progress_bar: bool,
) -> None:  # fmt: skip
    """Learn the tilt, appending metrics and writing checkpoints as training goes (the
    first process, for all: the metrics are every process's, the chains all of them)."""
    train, heldout, levels = data
    event_shape = list(train.shape[1:])
    first = process_rank()[0] == 0

    def on_checkpoint(state: dict[str, Any]) -> None:
        checkpoint = {"phase": "ebm", "event_shape": event_shape, "trainer": state}
        checkpoint |= {key: state[key] for key in ("backbone", "energy", "rng")}
        if first:
            save_tensors(checkpoint, out / CHECKPOINT)

    with open(out / METRICS, "a", encoding="utf-8") if first else contextlib.nullcontext() as log:

        def on_metrics(metrics: dict[str, float]) -> None:
            if log is not None:
                log.write(json.dumps({"phase": "ebm", **metrics}) + "\n")
                log.flush()

        fit_ebm(
            ebm, train, validation_data=heldout, on_checkpoint=on_checkpoint,
            on_metrics=on_metrics, resume=trainer, dequantize=levels,
            progress_bar=progress_bar, **config.fit_ebm_kwargs(),
        )  # fmt: skip


def train_run(
    out: str | os.PathLike[str],
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> FlowEBM:
    """Train a FlowEBM into a run directory: split the data, fit the backbone, learn the tilt.

    The run directory holds ``config.json``, ``data.pt`` (training and held-out points),
    ``metrics.jsonl`` (one JSON object a step: ``phase``, ``step``, the loss and, for the
    tilt, the metrics of :func:`~pyro_flowebm.fit_ebm`) and ``checkpoint.pt``, written
    atomically (temporary file, then rename) at the end of the backbone fit, every
    ``checkpoint_every`` steps of the tilt and at the end; each tensor file carries the
    SHA-256 of its bytes, checked when it is read. Nothing is written before the config,
    the data, the device, the memory the model needs and ``out`` have been checked. One
    process at a time trains in ``out``: it holds the lock ``.pyro_flowebm.lock`` there
    (:func:`~pyro_flowebm.io.lock_directory`) from the first write to the last.

    An existing non-empty ``out`` is left alone unless ``resume`` (continue from the
    last checkpoint, with the same config: on the CPU the final weights equal those of an
    uninterrupted run; every file of the run is checked before anything is written) or
    ``overwrite`` (start over: the new data and config are written first, and only then
    are the old run's files removed; only a directory holding a ``config.json`` is
    overwritten).

    In a ``torch.distributed`` run (``pyro-flowebm train --nproc-per-node N``, or torchrun)
    every process calls this with the same config: the first checks, writes and reads the
    run directory for all and sends the data and checkpoint to the others; training is
    data-parallel (:func:`~pyro_flowebm.fit_ebm`). A checkpoint holds every chain, so a run
    resumes in any number of processes: bit for bit in as many as wrote it.

    Args:
        out: the run directory (created if missing).
        config: the run's settings.
        resume: continue the run in ``out``.
        overwrite: replace the run in ``out``.
        progress_bar: tqdm bars for both phases.

    Returns:
        The trained model.

    Raises:
        RunExistsError: ``out`` holds something and neither flag was given.
        ValueError: bad data (see :func:`~pyro_flowebm.datasets.validate_data`), a device
            this machine lacks, a model too large for its memory, a resumed run whose
            stored config differs from ``config``, or a damaged file in it.
        DirectoryLockedError: another process is writing into ``out``.
        OSError: ``out`` cannot be written (no permission, no space); every file written
            before is kept.
        TrainingDiverged: training blew up; ``checkpoint.pt`` still holds the last good
            state.

    Example:
        >>> import tempfile
        >>> config = RunConfig(data="two_moons", num_data=500, num_heldout=200,
        ...                    backbone_steps=20, steps=4, batch_size=32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ebm = train_run(tmp, config, progress_bar=False)
        ...     sorted(p.name for p in Path(tmp).iterdir())
        ['.pyro_flowebm.lock', 'checkpoint.pt', 'config.json', 'data.pt', 'metrics.jsonl']
    """
    out = Path(out)
    with contextlib.ExitStack() as held:
        # In a torch.distributed run the first process checks, writes and reads the run
        # directory (holding its lock) and sends the data and checkpoint to the others.
        train, heldout, levels, checkpoint = on_first_process(
            lambda: _open_run(out, config, (resume, overwrite), held)
        )
        device = torch.device(config.device)
        pyro.set_rng_seed(config.seed)
        ebm = config.build(tuple(train.shape[1:]))
        train, heldout = train.to(device), heldout.to(device)
        if checkpoint is None:
            checkpoint = _fit_backbone_phase(out, config, ebm, train, levels, progress_bar)
        _load_state(ebm, _on_device(checkpoint, device), out / CHECKPOINT)
        trainer = checkpoint.get("trainer")
        if trainer is None or trainer["step"] < config.steps:
            trainer = None if trainer is None else _on_device(trainer, device)
            _tilt_phase(out, config, ebm, (train, heldout, levels), trainer, progress_bar)
    return ebm


def _open_run(
    out: Path, config: RunConfig, flags: tuple[bool, bool], held: contextlib.ExitStack
) -> tuple[Tensor, Tensor, int | None, dict[str, Any] | None]:
    """Check everything, then take the run directory's lock (into ``held``) and begin or
    reopen the run: its training and held-out data, levels, and checkpoint (on the CPU;
    ``None`` for a new run)."""
    resume, overwrite = flags
    check_device("device", config.device)
    check_writable_dir("out", out)
    train, heldout, levels = _split(config)  # raises on bad data before anything is touched
    _, world = process_rank()
    batch_size = min(config.batch_size, train.shape[0])
    if batch_size % world:
        raise ValueError(
            f"expected a batch size divisible by the {world} processes, got {batch_size}"
        )
    shape = tuple(train.shape[1:])
    check_fits_in_memory("training this config", config.minimum_bytes(shape))
    pyro.set_rng_seed(config.seed)
    ebm = config.build(shape)  # and on a model that does not fit the data
    prepare_run_dir(out, config, resume, overwrite)  # refuses early, before the directory exists
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock_directory(out))
    # Again, holding the lock: another process may have written in the meantime.
    if prepare_run_dir(out, config, resume, overwrite):
        train, heldout, checkpoint = _resumed(out, config, ebm)
        return train, heldout, levels, checkpoint
    _start(out, config, (train, heldout, levels))
    return train, heldout, levels, None


def _on_device(value: Any, device: torch.device) -> Any:
    """A checkpoint's tensors (in nested dicts and lists) moved to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _on_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_device(v, device) for v in value)
    return value


def _start(out: Path, config: RunConfig, data: tuple[Tensor, Tensor, int | None]) -> None:
    """Begin a run in ``out``: write its data and config and remove an overwritten run's
    files, in that order (a full disk stops it before the old run is touched), and the
    temporary files of killed processes (this one holds the lock)."""
    train, heldout, levels = data
    stale = [p for p in out.iterdir() if is_temporary(p.name) and p.name != LOCK_FILE]
    replace_files(
        {
            out / DATA: tensor_bytes({"train": train, "heldout": heldout, "levels": levels}),
            out / CONFIG: (json.dumps(config.to_dict(), indent=2) + "\n").encode(),
        },
        remove=[*(out / name for name in RUN_FILES), *stale],
    )


def _resumed(out: Path, config: RunConfig, ebm: FlowEBM) -> tuple[Tensor, Tensor, Any]:
    """The data and checkpoint of a run to resume, every file checked and the weights and
    random state loaded before anything is written; the metrics after the checkpoint are
    dropped (those steps run again)."""
    train, heldout = read_data(out)
    if tuple(train.shape[1:]) != tuple(ebm.event_shape):
        raise ValueError(
            f"expected points of shape {tuple(ebm.event_shape)} in {out / DATA}, got "
            f"{tuple(train.shape[1:])}"
        )
    metrics = read_metrics(out)
    if not (out / CHECKPOINT).is_file():
        return train, heldout, None
    checkpoint = read_checkpoint(out, "cpu")  # each process moves it to its device
    _load_state(ebm, checkpoint, out / CHECKPOINT)  # a check: each process loads it again
    done = checkpoint["trainer"]["step"] if checkpoint["phase"] == "ebm" else 0
    kept = [m for m in metrics if m["phase"] == "backbone" or m["step"] < done]
    write_text("".join(json.dumps(m) + "\n" for m in kept), out / METRICS)
    return train, heldout, checkpoint


def _load_state(ebm: FlowEBM, checkpoint: dict[str, Any], path: Path, rng: bool = True) -> None:
    """Load a checkpoint's weights (and random state) into ``ebm``; a checkpoint of another
    model is a ``ValueError`` naming ``path``."""
    if list(checkpoint["event_shape"]) != list(ebm.event_shape):
        raise ValueError(
            f"expected a checkpoint of points of shape {tuple(ebm.event_shape)} in {path}, "
            f"got {checkpoint['event_shape']}"
        )
    try:
        backbone_modules(ebm).load_state_dict(checkpoint["backbone"])
        ebm.energy.load_state_dict(checkpoint["energy"])
        if rng:
            set_rng_state(checkpoint["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"expected the weights of this run's model in {path}, got others: {reason}"
        ) from e


def load_run(run_dir: str | os.PathLike[str], *, device: str | None = None) -> FlowEBM:
    """The trained FlowEBM of a run directory, from its last checkpoint, ready to sample.

    The weights are read with ``torch.load(weights_only=True)``. A run stopped during or
    right after the backbone fit gives its backbone with a zero energy.

    Args:
        run_dir: a directory written by :func:`train_run` (or ``pyro-flowebm train``).
        device: where to put the model (default: the run's device).

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint yet.

    Example:
        >>> import tempfile
        >>> from pyro_flowebm.infer import corrected_sample
        >>> config = RunConfig(data="rings", num_data=300, num_heldout=100,
        ...                    backbone_steps=10, steps=2, batch_size=32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_run(tmp, config, progress_bar=False)
        ...     ebm = load_run(tmp)
        >>> corrected_sample(ebm, (5,), mcmc_steps=2).shape
        torch.Size([5, 2])
    """
    return build_run_model(run_dir, *read_run_state(run_dir, device))


def read_run_state(
    run_dir: str | os.PathLike[str], device: str | None
) -> tuple[RunConfig, dict[str, Any]]:
    """The config of a run (on ``device`` if given) and its last checkpoint, on the CPU,
    checked: what :func:`load_run` reads."""
    config = read_config(run_dir)
    if device is not None:
        config = dataclasses.replace(config, device=device)
    try:
        check_device("device", config.device)
    except ValueError as e:
        raise ValueError(f"{e}; pass device= (--device) to load the run elsewhere") from e
    return config, read_checkpoint(run_dir, "cpu")


def build_run_model(
    run_dir: str | os.PathLike[str], config: RunConfig, checkpoint: dict[str, Any]
) -> FlowEBM:
    """The model of :func:`read_run_state`'s config and checkpoint, on the config's device."""
    ebm = config.build(tuple(checkpoint["event_shape"]))
    device = torch.device(config.device)
    _load_state(ebm, _on_device(checkpoint, device), Path(run_dir) / CHECKPOINT, rng=False)
    return ebm
