"""The mixing report: a verdict on chains, one self-contained HTML page, a Markdown summary."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import matplotlib
import numpy as np
import pyro
import torch

from ..core import __version__, to_numpy
from ..datasets import load_file
from ..io import arviz, read_netcdf, write_text
from .sections import RunView, evidence_text, quiet_stats, sections
from .summary import mixing_summary
from .verdict import MIXING, Verdict, num_text, per_chain_text, verdict

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["Report", "ReportInput", "report"]

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("pyro_flowebm.diagnostics", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


@dataclass(frozen=True)
class Report:
    """What :func:`report` wrote.

    Attributes:
        verdict: The verdict of the (first) run.
        html: Path of the HTML page.
        markdown: Path of the Markdown summary; its first line is ``str(verdict)``.
        seconds: Wall time spent building the report.
        compare_verdict: The verdict of the ``compare`` run, when given.
        comparison: One sentence comparing the two runs, when ``compare`` is given.
    """

    verdict: Verdict
    html: Path
    markdown: Path
    seconds: float
    compare_verdict: Verdict | None = None
    comparison: str | None = None


@dataclass(frozen=True)
class ReportInput:
    """One run's draws and what is known about them, for :func:`report`.

    Attributes:
        idata: the draws (``posterior`` with ``var_name``; ``sample_stats`` if any).
        name: a short name for the page's headings.
        source: where the draws came from (a path, or how they were made).
        modes: known mode centres ``(K, d)``; else :func:`report`'s ``modes``.
        modes_from: where the modes came from, said on the page.
        data: points ``(n, 2)`` drawn under the chains, e.g. the training data.
        log_densities: panels of the chains-over-data plot: a title (``"over the learned
            density"``) to a log density of points ``(m, 2)``, e.g. ``ebm.log_prob``, or
            to ``None`` for the data alone.
        notes: what the page should say could not be read.

    Example:
        >>> from pyro_flowebm.io import to_inference_data
        >>> x = np.random.default_rng(0).normal(size=(2, 10, 2))
        >>> ReportInput(to_inference_data({"x": x}), name="latent").name
        'latent'
    """

    idata: InferenceData
    name: str = "run"
    source: str = "InferenceData given in Python"
    modes: Any = None
    modes_from: str | None = None
    data: Any = None
    log_densities: Mapping[str, Callable[[Any], Any] | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _input(source: Any, what: str) -> ReportInput:
    """An InferenceData, a NetCDF path or a :class:`ReportInput`, as a :class:`ReportInput`."""
    if isinstance(source, ReportInput):
        return source
    if isinstance(source, arviz().InferenceData):
        space = source.posterior.attrs.get("space") if "posterior" in source.groups() else None
        name = f"{space} space" if isinstance(space, str) and space != "none" else "run"
        return ReportInput(source, name=name)
    path = Path(source)
    if path.is_dir():
        raise ValueError(
            f"expected {what} to be InferenceData or a NetCDF file, got the directory {path}; "
            "report a run directory with `pyro-flowebm report` or pyro_flowebm.app.report_run"
        )
    if not path.exists():
        raise FileNotFoundError(f"expected {what} to be a NetCDF file, got {path}: no such file")
    try:
        idata = read_netcdf(path)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"expected {what} to be an ArviZ NetCDF file, got {path}: {e}") from e
    return ReportInput(idata, name=path.stem, source=str(path))


def _summary_path(out: Path) -> Path:
    """Where the Markdown summary of a page at ``out`` goes: ``out`` with suffix ``.md``,
    checked before any work: it must be new or an earlier summary (its first line a
    verdict), never another file that happens to sit there."""
    markdown = out.with_suffix(".md")
    if markdown == out:
        raise ValueError(f"expected an .html file for the page, got {out}")
    if markdown.is_dir() or out.is_dir():
        raise IsADirectoryError(21, f"expected files at {out} and {markdown}, got a directory")
    if markdown.exists():
        with open(markdown, "rb") as f:
            first = f.readline()
        if not first.startswith(b"verdict: "):
            raise FileExistsError(
                17,
                f"expected {markdown}, where the summary of {out.name} goes, to be new or "
                "an earlier report summary, got another file; choose another --out",
            )
    return markdown


def _modes(given: Any) -> tuple[np.ndarray | None, str | None]:
    """Mode centres from an array or a ``.npy``/``.csv``/``.pt`` file, and what they were."""
    if given is None:
        return None, None
    if isinstance(given, str | os.PathLike):
        return to_numpy(load_file(given)).astype(np.float64), f"file {given}"
    return to_numpy(given).astype(np.float64), "given"


def _chosen(
    idata: InferenceData, var_names: str | Sequence[str] | None, source: str
) -> list[str] | None:
    """The posterior variables ``var_names`` names, each checked; ``None`` for all."""
    if var_names is None:
        return None
    chosen = list(dict.fromkeys([var_names] if isinstance(var_names, str) else var_names))
    available = [str(name) for name in idata.posterior.data_vars]
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        got = f"unknown {', '.join(map(repr, unknown))}" if unknown else "no name"
        raise ValueError(
            f"expected --var-names (var_names) to name posterior variables of {source}, got "
            f"{got}; available: {', '.join(available)}"
        )
    return chosen


def _view(
    given: ReportInput, modes: Any, var_name: str, var_names: str | Sequence[str] | None
) -> RunView:
    """Check one input and summarize it: its summary and verdict."""
    idata = given.idata
    if "posterior" not in idata.groups():
        raise ValueError(
            f"expected a run with a posterior group, got groups {list(idata.groups())} in "
            f"{given.source}"
        )
    chosen = _chosen(idata, var_names, given.source)
    centres, modes_from = _modes(given.modes)
    if centres is None:
        centres, modes_from = _modes(modes)
    modes_from = given.modes_from or modes_from
    data = None if given.data is None else to_numpy(given.data)
    run = RunView(idata, given.name, given.source, centres, modes_from, data, given.log_densities)
    run.var_names = chosen
    run.notes.extend(given.notes)
    if centres is not None:
        names = list(idata.posterior.data_vars)
        if var_name not in names:
            run.notes.append(
                f"Modes are known ({modes_from}) but the posterior has no {var_name!r} "
                f"(it has {names}): mode coverage left out."
            )
            centres = None
        else:
            shape = idata.posterior[var_name].shape
            if centres.ndim != 2 or len(shape) != 3 or shape[-1] != centres.shape[1]:
                raise ValueError(
                    f"expected modes of shape (K, d) matching posterior {var_name!r} of shape "
                    f"(chain, draw, d), got modes {tuple(centres.shape)} and {tuple(shape)}"
                )
    with quiet_stats():
        run.summary = mixing_summary(idata, centres, var_name=var_name, var_names=chosen)
    run.verdict = verdict(run.summary, num_chains=idata.posterior.sizes["chain"])
    return run


def _versions() -> str:
    versions = {
        "pyro_flowebm": __version__,
        "arviz": arviz().__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _comparison(a: RunView, b: RunView) -> str:
    def part(run: RunView) -> str:
        s = run.summary
        extra = ""
        if s.occupancy is not None:
            extra = (
                f" (mode R-hat {num_text(s.mode_rhat)}, {s.total_transitions} mode switches, "
                f"modes visited per chain {per_chain_text(s.modes_visited)})"
            )
        return f"{run.name}: {run.verdict.label}{extra}"

    la, lb = a.verdict.label, b.verdict.label
    if la == lb:
        head = f"both runs: {la}"
    elif MIXING in (la, lb):
        good, bad = (a, b) if la == MIXING else (b, a)
        head = f"{good.name} mixes, {bad.name} does not ({bad.verdict.label})"
    else:
        head = f"neither run mixes ({la} and {lb})"
    return f"{head}. {part(a)}; {part(b)}."


def _markdown(runs: list[RunView], comparison: str | None, html_path: Path, seconds: float) -> str:
    lines = [str(runs[0].verdict), ""]
    if comparison:
        lines += [f"comparison: {comparison}", ""]
    for run in runs:
        lines += [f"## {run.name}", "", f"- {run.verdict}"]
        lines += [f"- {reason}" for reason in run.verdict.reasons]
        evidence = evidence_text(run.idata)
        if evidence is not None:
            lines.append(f"- {evidence}")
        s = run.summary
        if s.occupancy is not None:
            lines += [
                f"- modes visited per chain: {per_chain_text(s.modes_visited)}",
                f"- mode switches per chain: {per_chain_text(s.transitions)}",
                f"- modes never visited: {s.unvisited}",
            ]
        lines.append("")
    lines.append(f"HTML report: {html_path.name} (built in {seconds:.1f} s)")
    return "\n".join(lines) + "\n"


def _page(runs: list[RunView], var_name: str, comparison: str | None, start: float) -> str:
    import matplotlib.pyplot as plt  # pyplot picks a backend: only when a page is drawn

    figures_before = set(plt.get_fignums())
    try:
        per_run = [sections(run, var_name) for run in runs]
    finally:
        for number in set(plt.get_fignums()) - figures_before:
            plt.close(number)  # a plot that failed half-way must not leak its figure
    titles = [title for title, _ in per_run[0]]
    cells = [[parts[i][1] for parts in per_run] for i in range(len(titles))]
    return _TEMPLATES.get_template("report.html").render(
        title=" vs ".join(run.name for run in runs),
        names=[run.name for run in runs],
        comparison=comparison,
        headline=str(runs[0].verdict),
        label_class=runs[0].verdict.label.replace(" ", "-"),
        sections=list(zip(titles, cells, strict=True)),
        built=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        seconds=time.perf_counter() - start,
        versions=_versions(),
    )


def report(
    idata: Any,
    out: str | os.PathLike[str],
    compare: Any = None,
    *,
    modes: Any = None,
    var_name: str = "x",
    var_names: str | Sequence[str] | None = None,
) -> Report:
    """Write the mixing report: one self-contained HTML page and a Markdown summary.

    The page holds the verdict (:func:`~pyro_flowebm.diagnostics.verdict`), ArviZ's summary
    table of the variables ``var_names`` with flagged cells (R-hat above 1.01, bulk or tail
    ESS below 100 per chain), the mean, sd, min and max of every sample stat, the attrs'
    ``log_evidence ± log_evidence_stderr`` where there is one (e.g. from
    :func:`~pyro_flowebm.infer.sample_posterior`), mode coverage when modes are known (an
    image of every chain's occupancy of every mode, and a table for a few chains), the
    chains over the data for a 2-D ``var_name``, ArviZ's trace (divergences marked), rank
    and autocorrelation plots of ``var_names``, energy plots with BFMI, and the sampler
    settings, seed and versions. Images are PNGs embedded as base64, so the file
    stands alone; the page is rendered from a Jinja2 template that escapes every value.
    Sections whose data is missing (no sample_stats, no modes) are replaced by a one-line
    note. The Markdown summary is written beside the page (``out`` with suffix ``.md``);
    its first line is ``verdict: mixing``, ``verdict: not mixing`` or
    ``verdict: false convergence``. Both files are written atomically, and an existing
    ``.md`` file there that is not an earlier summary is refused before any work.

    Args:
        idata: ``arviz.InferenceData``, a NetCDF file with a posterior group (from this
            library, Pyro, NumPyro, Stan, PyMC), or a :class:`ReportInput` with the data,
            modes and densities to show with the draws. (A run directory is reported by
            :func:`pyro_flowebm.app.report_run`.)
        out: Path of the HTML file.
        compare: A second run of the same kinds, reported side by side with a comparison
            verdict (e.g. latent against data-space chains from the same starts).
        modes: Known mode centres ``(K, d)``: an array, or a ``.npy``/``.csv``/``.pt`` file,
            for the runs whose input names none.
        var_name: Posterior variable compared with the modes and drawn over the data.
        var_names: Posterior variables in the table and the trace, rank and autocorrelation
            plots, as ArviZ's ``var_names`` but exact names only (default: all). The verdict
            reads their R-hats; mode coverage is always of ``var_name``.

    Returns:
        A :class:`Report` with the verdicts, the paths written and the build time.

    Raises:
        FileNotFoundError: a path that does not exist.
        FileExistsError: a file other than an earlier summary where the summary goes.
        ValueError: a file that is not an ArviZ NetCDF, a directory, no posterior group,
            a name in ``var_names`` that is not a posterior variable (before anything is
            written), or modes whose dimension does not match ``var_name``.

    Example:
        >>> import tempfile
        >>> from pyro_flowebm.io import to_inference_data
        >>> x = np.random.default_rng(0).normal(size=(4, 200, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     r = report(to_inference_data({"x": x}), Path(tmp, "r.html"), modes=np.zeros((1, 2)))
        ...     r.markdown.read_text().splitlines()[0]
        'verdict: mixing'
    """
    start = time.perf_counter()
    out = Path(out)
    markdown = _summary_path(out)
    inputs = [_input(idata, "the run")]
    if compare is not None:
        inputs.append(_input(compare, "--compare"))
    runs = [_view(given, modes, var_name, var_names) for given in inputs]
    if len(runs) == 2 and runs[0].name == runs[1].name:
        runs[0].name, runs[1].name = f"{runs[0].name} (1)", f"{runs[1].name} (2)"
    comparison = _comparison(runs[0], runs[1]) if compare is not None else None
    page = _page(runs, var_name, comparison, start)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(page, out)
    write_text(_markdown(runs, comparison, out, seconds), markdown)
    return Report(
        verdict=runs[0].verdict,
        html=out,
        markdown=markdown,
        seconds=seconds,
        compare_verdict=runs[1].verdict if compare is not None else None,
        comparison=comparison,
    )
