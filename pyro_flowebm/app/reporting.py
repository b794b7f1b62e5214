"""The mixing report of a run directory: its draws, data, built-in modes and learned density."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import datasets
from ..diagnostics import Report, ReportInput, report
from ..io import read_netcdf
from .rundir import CONFIG, SAMPLES, read_config, read_data
from .training import load_run

__all__ = ["report_run"]

# Training points drawn under the chains (a scatter of more is only slower).
_MAX_DATA_POINTS = 2000


def _run_dir_of(path: Path) -> Path | None:
    """The run a path belongs to: the directory itself, or the one holding a NetCDF file."""
    if path.is_dir():
        return path
    return path.parent if (path.parent / CONFIG).is_file() else None


def _input(source: Any, what: str, builtin_modes: bool) -> ReportInput | Any:
    """A :class:`~pyro_flowebm.diagnostics.ReportInput` with everything a run directory
    knows (its toy's modes if ``builtin_modes``); InferenceData and NetCDF files outside
    runs are passed on as they are."""
    if not isinstance(source, str | os.PathLike):
        return source
    path = Path(source)
    run_dir = _run_dir_of(path)
    if run_dir is None:
        return path
    nc = run_dir / SAMPLES if path.is_dir() else path
    if not nc.is_file():
        raise FileNotFoundError(
            f"expected {what} to be a NetCDF file or a run directory with {SAMPLES}, got "
            f"{run_dir} without it; write it with `pyro-flowebm sample --run {run_dir} "
            f"--out {nc}`"
        )
    try:
        idata = read_netcdf(nc)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"expected {what} to be an ArviZ NetCDF file, got {nc}: {e}") from e
    data = modes = modes_from = None
    densities: dict[str, Any] = {}
    notes: tuple[str, ...] = ()
    try:
        data = read_data(run_dir)[0][:_MAX_DATA_POINTS]
        toy = datasets.TOYS.get(read_config(run_dir).data)
        log_truth = toy.log_prob if toy is not None else None
        densities["over the data density" if log_truth else "over the data"] = log_truth
        if builtin_modes and toy is not None and toy.modes is not None:
            modes, modes_from = toy.modes, f"built-in data set {toy.name!r}"
        densities["over the learned density"] = load_run(run_dir, device="cpu").log_prob
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        notes = (f"run directory {run_dir} only partly readable: {e}",)
    return ReportInput(
        idata, name=f"{run_dir.name}/{nc.stem}", source=str(nc), modes=modes,
        modes_from=modes_from, data=data, log_densities=densities, notes=notes,
    )  # fmt: skip


def report_run(
    source: str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    compare: str | os.PathLike[str] | Any = None,
    *,
    modes: Any = None,
    var_name: str = "x",
    var_names: str | Sequence[str] | None = None,
) -> Report:
    """:func:`~pyro_flowebm.diagnostics.report` of run directories and NetCDF files.

    A run directory (or a NetCDF file inside one) is reported with its ``samples.nc`` (or
    that file), its training data under the chains, the exact density and modes of a
    built-in toy, and the learned density. Anything else goes to
    :func:`~pyro_flowebm.diagnostics.report` as it is. ``modes`` given here take precedence
    over a toy's. ``var_names`` picks the posterior variables of the table and the trace,
    rank and autocorrelation plots (default: all, as for a run's own ``samples.nc``); a name
    that is not a posterior variable is a ``ValueError`` before anything is written.

    Example:
        >>> import tempfile
        >>> from pyro_flowebm.io import to_inference_data
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4, 100, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     report_run(to_inference_data({"x": x}), Path(tmp, "r.html")).verdict.label
        'mixing'
    """
    runs = [_input(source, "the run", modes is None)]
    if compare is not None:
        runs.append(_input(compare, "--compare", modes is None))
    return report(runs[0], out, runs[1] if compare is not None else None, modes=modes,
                  var_name=var_name, var_names=var_names)  # fmt: skip
