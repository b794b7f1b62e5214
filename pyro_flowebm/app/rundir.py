"""Run directories: their file names, reading them, and deciding what may be written where."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from ..io import load_tensors
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


class RunExistsError(FileExistsError):
    """The output directory holds something and neither resume nor overwrite was asked."""


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """The :class:`~pyro_flowebm.app.RunConfig` of a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"expected a run directory with {CONFIG}, got {run_dir}")
    return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics of a run, one dict per line of ``metrics.jsonl`` (``phase`` is
    ``"backbone"`` or ``"ebm"``); a last line cut short by a killed run is left out."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    metrics = []
    for i, line in enumerate(lines):
        try:
            metrics.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            # A run killed in the middle of writing its last line; resume writes it again.
    return metrics


def read_data(run_dir: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """The training and held-out points of a run."""
    data = load_tensors(Path(run_dir) / DATA)
    return data["train"], data["heldout"]


def read_levels(run_dir: str | os.PathLike[str]) -> int | None:
    """The intensity levels of a run's images (``None`` for continuous data)."""
    return load_tensors(Path(run_dir) / DATA).get("levels")


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
    contents = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
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
