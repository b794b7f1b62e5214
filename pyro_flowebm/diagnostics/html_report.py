"""The mixing report: a verdict on a run's chains, one self-contained HTML page of ArviZ plots."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import (
    _RHAT_THRESHOLD,
    ArrayLike,
    MixingSummary,
    _to_numpy,
    az,
    mixing_summary,
    plot_chains,
    plot_image_chains,
    read_netcdf,
)

__all__ = ["MIXING", "NOT_MIXING", "FALSE_CONVERGENCE", "Report", "Verdict", "report", "verdict"]

MIXING = "mixing"
NOT_MIXING = "not mixing"
FALSE_CONVERGENCE = "false convergence"

# The verdict's R-hat bound. Cells are flagged above 1.01 (Vehtari et al., 2021), but with
# ~100 effective draws per chain the R-hat of well-mixed chains fluctuates by about 0.01: the
# latent eight-Gaussians run of examples/eight_gaussians.py (4 x 200 draws, every chain in all
# 8 modes, 628 mode switches) has a mode R-hat of 1.011, its data-space twin 4.6e15.
_VERDICT_RHAT = 1.05
# Vehtari et al. (2021): bulk and tail ESS of at least 100 per chain before trusting R-hat.
_ESS_PER_CHAIN = 100
# Plots show at most this many chains (a vectorized run has hundreds); the table uses all.
_MAX_CHAINS_PLOTTED = 8
# ArviZ's own cap on subplots per figure, lowered: a page of 40 trace rows is unreadable.
_MAX_SUBPLOTS = 12
# Resolution of the embedded PNGs: sharp enough to read, small enough for one HTML file.
_DPI = 72
# The file that `pyro-flowebm sample --run DIR --out DIR/samples.nc` writes.
SAMPLES_FILE = "samples.nc"


@dataclass(frozen=True)
class Verdict:
    """Whether a run's chains mix, with the reasons.

    Attributes:
        label: ``"mixing"``, ``"not mixing"`` or ``"false convergence"``.
        reasons: One sentence per check that decided the label.
    """

    label: str
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"verdict: {self.label}"


def _per_chain(values: Any) -> str:
    """Per-chain counts in a line: the list for up to 8 chains, else their range."""
    ints = [int(v) for v in values]
    if len(ints) <= 8:
        return str(ints)
    return f"{min(ints)}-{max(ints)} (median {int(np.median(ints))}) over {len(ints)} chains"


def verdict(
    summary: MixingSummary,
    *,
    num_chains: int | None = None,
    rhat_threshold: float = _VERDICT_RHAT,
) -> Verdict:
    """Decide from a :class:`MixingSummary` whether the chains mix.

    - ``not mixing``: some R-hat of the ArviZ table, or the mode R-hat, exceeds
      ``rhat_threshold`` (the chains disagree), or no R-hat could be computed;
    - ``false convergence``: every R-hat is fine, but modes are known and some mode was
      visited by no chain: the chains agree because they all sit in the same subset;
    - ``mixing``: neither. Without modes, false convergence cannot be detected, and the
      reasons say so.

    Low ESS (below 100 per chain) is reported in the reasons but does not change the label.

    Args:
        summary: From :func:`~pyro_flowebm.diagnostics.mixing_summary`.
        num_chains: Chains behind the summary, for the ESS-per-chain check (default: the
            rows of the occupancy table when modes are known; otherwise ESS is not checked).
        rhat_threshold: R-hat above which the chains disagree. Default 1.05: values between
            1.01 (the table's flag, Vehtari et al., 2021) and this bound are named in the
            reasons as borderline, since R-hat of well-mixed chains with about 100 effective
            draws each fluctuates by about 0.01; pass 1.01 for the strict rule.

    Returns:
        A :class:`Verdict`; ``str(v)`` is its machine-readable line ``"verdict: ..."``.

    Example:
        >>> import numpy as np
        >>> from pyro_flowebm.diagnostics import mixing_summary, to_inference_data
        >>> rng = np.random.default_rng(0)
        >>> modes = np.array([[-4.0, 0.0], [4.0, 0.0]])
        >>> same = modes[0] + 0.1 * rng.normal(size=(4, 500, 2))  # every chain in mode 0
        >>> str(verdict(mixing_summary(to_inference_data({"x": same}), modes)))
        'verdict: false convergence'
    """
    table = summary.table
    n_chains = num_chains
    if n_chains is None and summary.occupancy is not None:
        n_chains = int(summary.occupancy.shape[0])
    reasons: list[str] = []
    disagree = False

    rhat = table["r_hat"].to_numpy(dtype=float) if "r_hat" in table else np.array([])
    finite = rhat[~np.isnan(rhat)]
    if finite.size == 0:
        disagree = True
        reasons.append("no R-hat could be computed (constant draws, or too few of them)")
    else:
        worst = int(np.nanargmax(rhat))
        if rhat[worst] > rhat_threshold:
            disagree = True
            reasons.append(
                f"R-hat {_num(rhat[worst])} > {rhat_threshold} for {table.index[worst]}: "
                "the chains disagree"
            )
        elif rhat[worst] > _RHAT_THRESHOLD:
            reasons.append(
                f"R-hat {_num(rhat[worst])} for {table.index[worst]}: above {_RHAT_THRESHOLD} "
                f"but within {rhat_threshold}, borderline; more draws would settle it"
            )
        else:
            reasons.append(f"every R-hat <= {_RHAT_THRESHOLD} (largest {_num(rhat[worst])})")

    mode_rhat = summary.mode_rhat
    if mode_rhat is not None and mode_rhat > rhat_threshold:
        disagree = True
        reasons.append(
            f"mode R-hat {_num(mode_rhat)} > {rhat_threshold}: the chains disagree on the "
            "mode weights"
        )
    elif mode_rhat is not None and mode_rhat > _RHAT_THRESHOLD:
        reasons.append(
            f"mode R-hat {_num(mode_rhat)}: above {_RHAT_THRESHOLD} but within "
            f"{rhat_threshold}, borderline"
        )

    low_ess = _low_ess_rows(table, n_chains)
    if low_ess:
        reasons.append(f"ESS below {_ESS_PER_CHAIN} per chain for {', '.join(low_ess[:5])}")

    if disagree:
        return Verdict(NOT_MIXING, tuple(reasons))
    if summary.unvisited:
        k = summary.occupancy.shape[1]
        reasons.append(
            f"but no chain visited modes {summary.unvisited} of the {k} known modes: R-hat "
            "agrees only because every chain sits in the same subset of modes"
        )
        return Verdict(FALSE_CONVERGENCE, tuple(reasons))
    if summary.occupancy is None:
        reasons.append("modes unknown: false convergence (all chains in the same mode) not checked")
    else:
        reasons.append(f"all {summary.occupancy.shape[1]} known modes visited")
    return Verdict(MIXING, tuple(reasons))


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _low_ess_rows(table: Any, n_chains: int | None) -> list[str]:
    """Rows of the summary table whose bulk or tail ESS is below 100 per chain."""
    if n_chains is None or not {"ess_bulk", "ess_tail"} <= set(table.columns):
        return []
    ess = table[["ess_bulk", "ess_tail"]].to_numpy(dtype=float).min(axis=1)
    low = ess < _ESS_PER_CHAIN * n_chains
    return [str(row) for row, flag in zip(table.index, low, strict=True) if flag]


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


@dataclass
class _Run:
    """One run being reported: its draws, where they came from, and what is known about it."""

    idata: Any
    name: str
    source: str
    run_dir: Path | None = None
    modes: np.ndarray | None = None
    modes_from: str | None = None
    summary: MixingSummary | None = None
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)


def _load(source: Any, what: str) -> _Run:
    """Turn an InferenceData, a NetCDF path or a run directory into a :class:`_Run`."""
    if isinstance(source, az.InferenceData):
        idata, name, origin, run_dir = source, "run", "InferenceData given in Python", None
    else:
        path = Path(source)
        run_dir = None
        if path.is_dir():
            run_dir = path
            path = path / SAMPLES_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"expected {what} to be a NetCDF file or a run directory with "
                    f"{SAMPLES_FILE}, got {run_dir} without it; write it with `pyro-flowebm "
                    f"sample --run {run_dir} --out {path}`"
                )
        elif not path.exists():
            raise FileNotFoundError(f"expected {what} to be a NetCDF file or run directory, "
                                    f"got {path}: no such file")  # fmt: skip
        elif (path.parent / "config.json").is_file():
            run_dir = path.parent  # samples.nc inside a run directory: use the run too
        try:
            idata = read_netcdf(path)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"expected {what} to be an ArviZ NetCDF file, got {path}: {e}") from e
        name = path.stem if run_dir is None else f"{run_dir.name}/{path.stem}"
        origin = str(path)
    if "posterior" not in idata.groups():
        raise ValueError(
            f"expected {what} with a posterior group, got groups {list(idata.groups())} in {origin}"
        )
    space = idata.posterior.attrs.get("space")
    if isinstance(source, az.InferenceData) and isinstance(space, str) and space != "none":
        name = f"{space} space"
    return _Run(idata=idata, name=name, source=origin, run_dir=run_dir)


def _resolve_modes(run: _Run, modes: ArrayLike | str | os.PathLike[str] | None) -> None:
    """Explicit modes (array or file) first, else a run's built-in toy mixture, else none."""
    from .. import datasets

    if modes is not None:
        if isinstance(modes, str | os.PathLike):
            run.modes = _to_numpy(datasets.load_file(modes)).astype(np.float64)
            run.modes_from = f"file {modes}"
        else:
            run.modes = _to_numpy(modes).astype(np.float64)
            run.modes_from = "given"
        return
    if run.run_dir is not None and (run.run_dir / "config.json").is_file():
        name = json.loads((run.run_dir / "config.json").read_text(encoding="utf-8")).get("data")
        toy = datasets.TOYS.get(name) if isinstance(name, str) else None
        if toy is not None and toy.modes is not None:
            run.modes = _to_numpy(toy.modes)
            run.modes_from = f"built-in data set {name!r}"


def _summarize(run: _Run, var_name: str) -> None:
    modes = run.modes
    if modes is not None:
        names = list(run.idata.posterior.data_vars)
        if var_name not in names:
            run.notes.append(
                f"Modes are known ({run.modes_from}) but the posterior has no {var_name!r} "
                f"(it has {names}): mode coverage left out."
            )
            modes = None
        else:
            shape = run.idata.posterior[var_name].shape
            if modes.ndim != 2 or len(shape) != 3 or shape[-1] != modes.shape[1]:
                raise ValueError(
                    f"expected modes of shape (K, d) matching posterior {var_name!r} of shape "
                    f"(chain, draw, d), got modes {tuple(modes.shape)} and {tuple(shape)}"
                )
    with _quiet_stats():
        run.summary = mixing_summary(run.idata, modes, var_name=var_name)
    run.verdict = verdict(run.summary, num_chains=run.idata.posterior.sizes["chain"])


@contextmanager
def _quiet_stats() -> Iterator[None]:
    """Silence numpy's 0/0 warnings of R-hat on constant chains: the result (NaN) is reported."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


# ----------------------------------------------------------------------------- figures


def _png(fig: Any) -> str:
    """A matplotlib figure as an ``<img>`` tag with the PNG inlined; closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _figure_of(axes: Any) -> Any:
    return np.ravel(np.asarray(axes, dtype=object))[0].figure


def _plot(draw: Callable[[], Any]) -> str:
    """Run one ArviZ/matplotlib plot; its warnings and errors become notes in the page.

    A report must never crash on a plot: an error is shown in place of the image, and
    warnings (ArviZ's subplot cap, a KDE of a constant chain) are shown under it.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # ArviZ 0.23's plot_trace calls an API matplotlib 3.11 deprecated: about the library,
        # not about the chains, so it is no note for the reader.
        warnings.filterwarnings("ignore", "Passing a dict or None as alias_mapping")
        with az.rc_context(rc={"plot.max_subplots": _MAX_SUBPLOTS}):
            try:
                out = _png(_figure_of(draw()))
            except Exception as e:  # noqa: BLE001 -- any plotting failure becomes a note
                import matplotlib.pyplot as plt

                plt.close("all")
                out = _note(f"could not draw this plot: {type(e).__name__}: {e}")
    seen = dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught)
    return out + "".join(_note(f"warning: {m}") for m in seen)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# ----------------------------------------------------------------------------- sections


def _table_html(run: _Run) -> str:
    table = run.summary.table
    n_chains = run.idata.posterior.sizes["chain"]
    columns = list(table.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["", *columns])
    rows = []
    for index, values in table.iterrows():
        cells = [f"<th>{html.escape(str(index))}</th>"]
        for column in columns:
            value = float(values[column])
            bad = (column == "r_hat" and value > _RHAT_THRESHOLD) or (
                column in ("ess_bulk", "ess_tail") and value < _ESS_PER_CHAIN * n_chains
            )
            cls = ' class="flag"' if bad else ""
            cells.append(f"<td{cls}>{_num(value) if abs(value) >= 1e3 else f'{value:.3f}'}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    legend = (
        f"Flagged: R-hat &gt; {_RHAT_THRESHOLD}; bulk or tail ESS &lt; {_ESS_PER_CHAIN} per "
        f"chain ({_ESS_PER_CHAIN * n_chains} for {n_chains} chains)."
    )
    return f'<table><tr>{head}</tr>{"".join(rows)}</table><p class="legend">{legend}</p>'


def _modes_html(run: _Run) -> str:
    s = run.summary
    if s.occupancy is None:
        if run.notes:
            return "".join(_note(n) for n in run.notes)
        return _note(
            "No known modes (pass --modes FILE, or report a run of a built-in mixture): "
            "mode coverage and false convergence not checked."
        )
    occupancy = s.occupancy
    head = "".join(f"<th>{k}</th>" for k in ["chain", *occupancy.columns, "visited", "switches"])
    rows = []
    for i, (chain, values) in enumerate(occupancy.iterrows()):
        cells = "".join(
            f"<td{' class=flag' if v == 0 else ''}>{v:.3f}</td>" for v in values.to_numpy()
        )
        rows.append(
            f"<tr><th>{chain}</th>{cells}<td>{int(s.modes_visited[i])}</td>"
            f"<td>{int(s.transitions[i])}</td></tr>"
        )
    lines = [
        f"{occupancy.shape[1]} modes from {html.escape(run.modes_from or '')}; fraction of each "
        "chain's draws nearest to each mode (0 flagged).",
        f"Mode R-hat (max over one-hot mode indicators): <b>{_num(s.mode_rhat)}</b>; mode "
        f"switches in all chains: <b>{s.total_transitions}</b>.",
        "Modes never visited by any chain: <b>"
        + (str(s.unvisited) if s.unvisited else "none")
        + "</b>.",
    ]
    if run.verdict.label == FALSE_CONVERGENCE:
        lines.append(
            '<span class="flag">False convergence: R-hat looks fine, but the chains all '
            "miss the same modes.</span>"
        )
    paragraphs = "".join(f"<p>{line}</p>" for line in lines)
    return f"{paragraphs}<table><tr>{head}</tr>{''.join(rows)}</table>"


def _chains_over_data_html(run: _Run, var_name: str, idata_plot: Any) -> str:
    posterior = run.idata.posterior
    if var_name not in posterior.data_vars or len(posterior[var_name].shape) != 3:
        return _note(f"No 2-D posterior {var_name!r}: chains over the data left out.")
    if posterior[var_name].shape[-1] != 2:
        return _note(
            f"Posterior {var_name!r} has {posterior[var_name].shape[-1]} dimensions, not 2: "
            "chains over the data left out."
        )
    import matplotlib.pyplot as plt
    import torch

    from .. import datasets

    data = log_truth = ebm = None
    if run.run_dir is not None:
        from ..runs import load_run, read_config, read_data

        try:
            data = read_data(run.run_dir)[0][:2000]
            toy = datasets.TOYS.get(read_config(run.run_dir).data)
            log_truth = toy.log_prob if toy is not None else None
            ebm = load_run(run.run_dir, device="cpu")
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            run.notes.append(f"run directory {run.run_dir} only partly readable: {e}")

    panels = [("over the data" + (" density" if log_truth else ""), log_truth)]
    if ebm is not None:
        panels.append(("over the learned density", ebm.log_prob))

    def draw() -> Any:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 5.0), squeeze=False)
        for ax, (title, log_density) in zip(axes[0], panels, strict=True):
            with torch.no_grad():
                plot_chains(
                    idata_plot, var_name=var_name, data=data, log_density=log_density, ax=ax,
                    title=f"{run.name}: chains {title}",
                )  # fmt: skip
            if run.modes is not None:
                ax.scatter(*run.modes.T, marker="x", color="black", s=40, zorder=4, label="modes")
        return axes

    caption = "<p>Panels: " + "; ".join(f"chains {title}" for title, _ in panels) + ".</p>"
    note = "" if data is not None else _note("No training data known: chains drawn alone.")
    return _plot(draw) + caption + note


def _is_images(run: _Run, var_name: str) -> bool:
    posterior = run.idata.posterior
    return var_name in posterior.data_vars and posterior[var_name].ndim == 5


def _image_chains_html(run: _Run, var_name: str) -> str:
    n_chains = run.idata.posterior.sizes["chain"]
    rows = min(n_chains, _MAX_CHAINS_PLOTTED)
    return _plot(
        lambda: plot_image_chains(
            run.idata, var_name=var_name, num_chains=rows, num_draws=16,
            title=f"{run.name}: {var_name}, {rows} of {n_chains} chains over time",
        )
    ) + (
        "<p>One row a chain, sixteen evenly spaced draws from the first to the last: a "
        "chain that mixes keeps producing realistic images and changes class along its row."
        "</p>"
    )  # fmt: skip


def _central_pixels(idata_plot: Any, var_name: str) -> Any:
    """Only ``var_name`` at the four central pixels of its first channel, for the trace,
    rank and autocorrelation plots of image chains (every pixel is in the table)."""
    x = idata_plot.posterior[var_name]
    h, w = x.shape[3], x.shape[4]
    picked = x.isel(
        {
            f"{var_name}_dim_0": [0],
            f"{var_name}_dim_1": sorted({max(h // 2 - 1, 0), h // 2}),
            f"{var_name}_dim_2": sorted({max(w // 2 - 1, 0), w // 2}),
        }
    )
    groups = {"posterior": picked.to_dataset()}
    if "sample_stats" in idata_plot.groups():
        groups["sample_stats"] = idata_plot.sample_stats
    return az.InferenceData(**groups)


def _settings_html(run: _Run) -> str:
    attrs = dict(run.idata.posterior.attrs)
    seed = attrs.get("seed", "not recorded")
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(attrs.items())
    )
    sizes = run.idata.posterior.sizes
    lines = [
        f"Source: <code>{html.escape(run.source)}</code>",
        f"{sizes['chain']} chains × {sizes['draw']} draws; groups: {', '.join(run.idata.groups())}",
        f"Seed: <b>{html.escape(str(seed))}</b>",
        "Sampling time: "
        + html.escape(str(attrs.get("sampling_time", "not recorded in the NetCDF attributes"))),
    ]
    table = f"<table>{rows}</table>" if rows else _note("No sampler settings in the attributes.")
    return "".join(f"<p>{line}</p>" for line in lines) + table


def _sections(run: _Run, var_name: str) -> list[tuple[str, str]]:
    """(title, html) of every section of one run, in page order."""
    idata = run.idata
    n_chains = idata.posterior.sizes["chain"]
    shown = min(n_chains, _MAX_CHAINS_PLOTTED)
    idata_plot = idata.isel(chain=slice(0, shown)) if shown < n_chains else idata
    plot_note = (
        _note(f"Plots show the first {shown} of {n_chains} chains; the tables use all of them.")
        if shown < n_chains
        else ""
    )
    stats = idata.sample_stats if "sample_stats" in idata.groups() else None

    verdict_html = (
        f'<p class="verdict {run.verdict.label.replace(" ", "-")}">{html.escape(str(run.verdict))}'
        "</p><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in run.verdict.reasons) + "</ul>"
    )
    sections = [
        ("Verdict", verdict_html),
        ("Summary (ArviZ)", _table_html(run)),
        ("Mode coverage", _modes_html(run)),
    ]
    if _is_images(run, var_name):
        sections.append(("Image chains over time", _image_chains_html(run, var_name)))
        idata_plot = _central_pixels(idata_plot, var_name)
        plot_note += _note(
            f"Trace, rank and autocorrelation plots show {var_name} at the four central pixels "
            "of the first channel; the summary table holds every pixel."
        )
    else:
        sections.append(("Chains over the data", _chains_over_data_html(run, var_name, idata_plot)))

    if stats is not None and "diverging" in stats:
        per_chain = stats["diverging"].sum("draw").to_numpy().astype(int).tolist()
        divergences = _note(
            f"Divergences per chain: {per_chain} (marked under the traces)."
        ) if sum(per_chain) else "<p>No divergences.</p>"  # fmt: skip
    else:
        divergences = _note("No sample_stats 'diverging': divergences not marked.")
    sections.append(
        ("Trace", plot_note + _plot(lambda: az.plot_trace(idata_plot, compact=True)) + divergences)
    )
    sections.append(("Rank plots", plot_note + _plot(lambda: az.plot_rank(idata_plot))))
    sections.append(
        ("Autocorrelation", plot_note + _plot(lambda: az.plot_autocorr(idata_plot, combined=True)))
    )
    if stats is None or "energy" not in stats:
        missing = "No sample_stats group" if stats is None else "No sample_stats 'energy'"
        sections.append(("Energy and BFMI", _note(f"{missing}: energy plot left out.")))
    else:
        with _quiet_stats():
            bfmi = az.bfmi(idata)
        text = (
            f"<p>BFMI per chain: {', '.join(f'{b:.2f}' for b in np.ravel(bfmi))} "
            "(below 0.3 suggests poor exploration of the energy).</p>"
        )
        if str(idata.posterior.attrs.get("sampler", "")) in ("IndependenceMH", "MALA", "ULA"):
            text += _note("This kernel has no momentum: its 'energy' is the potential.")
        sections.append(("Energy and BFMI", _plot(lambda: az.plot_energy(idata)) + text))
    sections.append(("Settings and reproducibility", _settings_html(run)))
    return sections


# ----------------------------------------------------------------------------- page

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td.flag, .flag { background: #fdd; color: #900; }
.note { color: #666; font-style: italic; }
.verdict { font-size: 1.4em; font-weight: bold; }
.mixing { color: #070; } .not-mixing { color: #b00; } .false-convergence { color: #b60; }
.grid { display: grid; grid-template-columns: repeat(var(--cols), minmax(0, 1fr)); gap: 1em; }
img { max-width: 100%; }
"""


def _versions() -> dict[str, str]:
    import matplotlib
    import pyro
    import torch

    from .. import __version__

    return {
        "pyro_flowebm": __version__,
        "arviz": az.__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


def _comparison(a: _Run, b: _Run) -> str:
    def part(run: _Run) -> str:
        s = run.summary
        extra = ""
        if s.occupancy is not None:
            extra = (
                f" (mode R-hat {_num(s.mode_rhat)}, {s.total_transitions} mode switches, modes "
                f"visited per chain {_per_chain(s.modes_visited)})"
            )
        return f"{run.name}: {run.verdict.label}{extra}"

    la, lb = a.verdict.label, b.verdict.label
    if la == lb:
        head = f"both runs: {la}"
    elif la == MIXING or lb == MIXING:
        good, bad = (a, b) if la == MIXING else (b, a)
        head = f"{good.name} mixes, {bad.name} does not ({bad.verdict.label})"
    else:
        head = f"neither run mixes ({la} and {lb})"
    return f"{head}. {part(a)}; {part(b)}."


def _page(
    runs: list[_Run], per_run: list[list[tuple[str, str]]], comparison: str | None, seconds: float
) -> str:
    body = []
    for i, (title, _) in enumerate(per_run[0]):
        cells = "".join(f"<div>{sections[i][1]}</div>" for sections in per_run)
        body.append(f'<h2>{html.escape(title)}</h2><div class="grid">{cells}</div>')
    names = " vs ".join(html.escape(r.name) for r in runs)
    head = "".join(f"<div><h3>{html.escape(r.name)}</h3></div>" for r in runs)
    top = (
        f'<p class="verdict">comparison: {html.escape(comparison)}</p>'
        if comparison
        else f'<p class="verdict {runs[0].verdict.label.replace(" ", "-")}">'
        f"{html.escape(str(runs[0].verdict))}</p>"
    )
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    built = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Mixing report: {names}</title><style>{_CSS}</style></head>"
        f'<body style="--cols: {len(runs)}"><h1>Mixing report: {names}</h1>{top}'
        f'<div class="grid">{head}</div>{"".join(body)}'
        f"<h2>Build</h2><p>Built {built} in {seconds:.1f} s; versions: "
        f"{html.escape(versions)}.</p></body></html>\n"
    )


def _markdown(runs: list[_Run], comparison: str | None, html_path: Path, seconds: float) -> str:
    lines = [str(runs[0].verdict), ""]
    if comparison:
        lines += [f"comparison: {comparison}", ""]
    for run in runs:
        lines += [f"## {run.name}", "", f"- {run.verdict}"]
        lines += [f"- {reason}" for reason in run.verdict.reasons]
        s = run.summary
        if s.occupancy is not None:
            lines += [
                f"- modes visited per chain: {_per_chain(s.modes_visited)}",
                f"- mode switches per chain: {_per_chain(s.transitions)}",
                f"- modes never visited: {s.unvisited}",
            ]
        lines.append("")
    lines.append(f"HTML report: {html_path.name} (built in {seconds:.1f} s)")
    return "\n".join(lines) + "\n"


def report(
    idata_or_run: Any,
    out: str | os.PathLike[str],
    compare: Any = None,
    *,
    modes: ArrayLike | str | os.PathLike[str] | None = None,
    var_name: str = "x",
) -> Report:
    """Write the mixing report: one self-contained HTML page and a Markdown summary.

    The page holds the verdict (:func:`verdict`), ArviZ's summary table with flagged cells
    (R-hat above 1.01, bulk or tail ESS below 100 per chain), mode coverage when modes are
    known, the chains over the data for a 2-D ``var_name``, ArviZ's trace (divergences
    marked), rank, autocorrelation and energy plots with BFMI, and the sampler settings,
    seed and versions. Images are PNGs embedded as base64, so the file stands alone.
    Sections whose data is missing (no sample_stats, no modes) are replaced by a one-line
    note. The Markdown summary is written beside the page (``out`` with suffix ``.md``);
    its first line is ``verdict: mixing``, ``verdict: not mixing`` or
    ``verdict: false convergence``.

    Args:
        idata_or_run: ``arviz.InferenceData``, a NetCDF file with a posterior group (from
            this library, Pyro, NumPyro, Stan, PyMC), or a run directory holding
            ``samples.nc`` (its data, learned density and built-in modes are used too).
        out: Path of the HTML file.
        compare: A second run of the same kinds, reported side by side with a comparison
            verdict (e.g. latent against data-space chains from the same starts).
        modes: Known mode centres ``(K, d)``: an array, or a ``.npy``/``.csv``/``.pt`` file.
            Default: the modes of a run directory's built-in mixture, if any.
        var_name: Posterior variable compared with the modes and drawn over the data.

    Returns:
        A :class:`Report` with the verdicts, the paths written and the build time.

    Raises:
        FileNotFoundError: a path that does not exist, or a run directory without
            ``samples.nc``.
        ValueError: a file that is not an ArviZ NetCDF, no posterior group, or modes whose
            dimension does not match ``var_name``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from pyro_flowebm.diagnostics import to_inference_data
        >>> x = np.random.default_rng(0).normal(size=(4, 200, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     r = report(to_inference_data({"x": x}), Path(tmp, "r.html"), modes=np.zeros((1, 2)))
        ...     r.markdown.read_text().splitlines()[0]
        'verdict: mixing'
    """
    start = time.perf_counter()
    out = Path(out)
    runs = [_load(idata_or_run, "the run")]
    if compare is not None:
        runs.append(_load(compare, "--compare"))
        if runs[0].name == runs[1].name:
            runs[0].name, runs[1].name = f"{runs[0].name} (1)", f"{runs[1].name} (2)"
    for run in runs:
        _resolve_modes(run, modes)
        _summarize(run, var_name)
    comparison = _comparison(runs[0], runs[1]) if compare is not None else None

    import matplotlib.pyplot as plt

    figures_before = set(plt.get_fignums())
    try:
        per_run = [_sections(run, var_name) for run in runs]
    finally:
        for number in set(plt.get_fignums()) - figures_before:
            plt.close(number)  # a plot that failed half-way must not leak its figure
    seconds = time.perf_counter() - start
    page = _page(runs, per_run, comparison, seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    markdown = out.with_suffix(".md")
    markdown.write_text(_markdown(runs, comparison, out, seconds), encoding="utf-8")
    return Report(
        verdict=runs[0].verdict,
        html=out,
        markdown=markdown,
        seconds=seconds,
        compare_verdict=runs[1].verdict if compare is not None else None,
        comparison=comparison,
    )
