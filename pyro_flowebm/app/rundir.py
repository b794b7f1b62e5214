"""Run directories: their file names, reading them, and deciding what may be written where."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io import is_temporary, load_tensors
from .config import RunConfig

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "DATA",
    "EVALUATION",
    "EVALUATION_PLOT",
    "METRICS",
    "PROBE",
    "RUN_FILES",
    "SAMPLES",
    "RunExistsError",
    "prepare_run_dir",
    "read_checkpoint",
    "read_config",
    "read_data",
    "read_levels",
    "read_metrics",
]

CONFIG = "config.json"
DATA = "data.pt"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SAMPLES = "samples.nc"
EVALUATION = "evaluation.json"
EVALUATION_PLOT = "evaluation.png"
# The digits probe of an image run, fitted once and kept in the run directory.
PROBE = "probe.pt"
# Everything the commands write into a run; --overwrite removes exactly these, nothing else.
RUN_FILES = (CONFIG, DATA, METRICS, CHECKPOINT, SAMPLES, EVALUATION, EVALUATION_PLOT, PROBE)
_PHASES = ("backbone", "ebm")
_DATA_KEYS = ("train", "heldout")


class RunExistsError(FileExistsError):
    """The output directory holds something and neither resume nor overwrite was asked."""


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """The :class:`~pyro_flowebm.app.RunConfig` of a run directory.

    Raises:
        FileNotFoundError: no ``config.json`` in ``run_dir``.
        ValueError: ``config.json`` is not JSON, or not a complete, valid config; the
            message names the file.
    """
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"expected a run directory with {CONFIG}, got {run_dir}")
    try:
        values = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"expected JSON in {path}, got a syntax error: {e}") from e
    try:
        return RunConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"expected a valid run config in {path}, got: {e}") from e


def _read_text(path: Path) -> str:
    """The UTF-8 text of a file the package wrote, its name in any error."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"expected UTF-8 text in {path}, got bytes that are not: {e}") from e
    except OSError as e:
        raise type(e)(e.errno, f"could not read {path}: {e.strerror or e}") from e


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics of a run, one dict per line of ``metrics.jsonl`` (``phase`` is
    ``"backbone"`` or ``"ebm"``); a last line cut short by a killed run is left out.

    Raises:
        ValueError: a line other than the last is not a JSON object with ``phase`` and
            ``step``; the message names the file and the line.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines = [line for line in _read_text(path).splitlines() if line]
    metrics = []
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ValueError(
                    f"expected a JSON object on line {i + 1} of {path}, got: {e}"
                ) from e
            continue  # a run killed while writing its last line; resume writes it again
        if not (isinstance(entry, dict) and entry.get("phase") in _PHASES and _is_step(entry)):
            raise ValueError(
                f"expected line {i + 1} of {path} to hold a phase ({' or '.join(_PHASES)}) and "
                f"an integer step, got {line[:80]!r}"
            )
        metrics.append(entry)
    return metrics


def _is_step(entry: dict[str, Any]) -> bool:
    step = entry.get("step")
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _run_tensors(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``data.pt`` of a run, checked: training and held-out points of one event shape."""
    path = Path(run_dir) / DATA
    data = load_tensors(path)
    ok = isinstance(data, dict) and all(isinstance(data.get(k), Tensor) for k in _DATA_KEYS)
    if ok:
        train, heldout = data["train"], data["heldout"]
        ok = train.dim() >= 2 and train.shape[1:] == heldout.shape[1:] and train.is_floating_point()
    if not ok or not isinstance(data.get("levels"), int | None):
        raise ValueError(
            f"expected {path} to hold training and held-out points of one shape (train, "
            f"heldout, levels), got {_describe(data)}"
        )
    return data


def _describe(value: Any) -> str:
    """A short description of what a file held, for an error message."""
    if isinstance(value, dict):
        return "keys " + ", ".join(sorted(map(str, value))[:12])
    return type(value).__name__


def read_data(run_dir: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """The training and held-out points of a run."""
    data = _run_tensors(run_dir)
    return data["train"], data["heldout"]


def read_levels(run_dir: str | os.PathLike[str]) -> int | None:
    """The intensity levels of a run's images (``None`` for continuous data)."""
    return _run_tensors(run_dir).get("levels")


def read_checkpoint(run_dir: str | os.PathLike[str], device: str | torch.device) -> dict[str, Any]:
    """The checkpoint of a run, its digest and its structure checked, tensors on ``device``.

    Raises:
        FileNotFoundError: no checkpoint yet.
        ValueError: damaged, truncated or foreign (not a checkpoint of a run); the message
            names the file and what is wrong.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint in {run_dir}, got none yet")
    checkpoint = load_tensors(path, device)
    missing = [] if isinstance(checkpoint, dict) else ["everything"]
    if not missing:
        missing = [
            k for k in ("phase", "event_shape", "backbone", "energy", "rng") if k not in checkpoint
        ]
        if checkpoint.get("phase") == "ebm" and not isinstance(checkpoint.get("trainer"), dict):
            missing.append("trainer")
    if missing or checkpoint["phase"] not in _PHASES:
        raise ValueError(
            f"expected a checkpoint of a run in {path} (phase, event_shape, backbone, energy, "
            f"rng), got {_describe(checkpoint)}"
        )
    return checkpoint


def prepare_run_dir(out: Path, config: RunConfig, resume: bool, overwrite: bool) -> bool:
    """Check ``out`` against the flags; returns whether an existing run is resumed.

    Raises:
        RunExistsError: ``out`` is a file, or holds something and neither flag was given,
            or ``overwrite`` of a directory that holds no run.
        FileNotFoundError: ``resume`` with no run in ``out``.
        ValueError: both flags, or ``resume`` with other settings than the run's.
    """
    if resume and overwrite:
        raise ValueError("expected at most one of resume and overwrite, got both")
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"expected a directory for the run, got an existing file {out}")
    contents = (
        sorted(p.name for p in out.iterdir() if not is_temporary(p.name)) if out.is_dir() else []
    )
    if not contents:
        if resume:
            raise FileNotFoundError(f"expected a run to resume in {out}, got no such run")
        return False
    if resume:
        stored = read_config(out)
        if stored != config:
            diff = {
                k: (v, getattr(config, k))
                for k, v in stored.to_dict().items()
                if getattr(config, k) != v
            }
            raise ValueError(
                f"expected the settings of the run in {out} to resume it, got different "
                f"ones (stored, given): {diff}"
            )
        return True
    if not overwrite:
        raise RunExistsError(
            f"expected an empty or new --out directory, got {out} with {len(contents)} "
            "entries; pass --resume to continue the run in it or --overwrite to start over"
        )
    if CONFIG not in contents:
        raise RunExistsError(
            f"expected a run directory (with {CONFIG}) to overwrite, got {out} without one; "
            "refusing to delete files that no run wrote"
        )
    return False
