"""The sections of the mixing report for one run, as parts the page template renders."""

from __future__ import annotations

import base64
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..io import arviz
from .plots import plot_chains, plot_image_chains, plot_occupancy
from .summary import RHAT_FLAG, MixingSummary, fmt_number
from .verdict import ESS_PER_CHAIN, FALSE_CONVERGENCE, Verdict, num_text

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["Part", "RunView", "evidence_text", "quiet_stats", "sections"]

# Plots show at most this many chains (a vectorized run has hundreds); the tables use all.
_MAX_CHAINS_PLOTTED = 8
# Up to this many chains the occupancy image comes with its table.
_MAX_TABLE_CHAINS = 8
# ArviZ's own cap on subplots per figure, lowered: a page of 40 trace rows is unreadable.
_MAX_SUBPLOTS = 12
# Resolution of the embedded PNGs: sharp enough to read, small enough for one HTML file.
_DPI = 72
# Kernels without momentum: their 'energy' is the potential (lower case: a run's `sampler`
# is the kernel's class name, a posterior's `method` the name it was asked for).
_NO_MOMENTUM = ("independencemh", "mala", "ula")


class Part(NamedTuple):
    """One piece of a cell of the page, rendered by the template according to ``kind``.

    ``kind`` is ``"text"``, ``"note"`` (grey, italic), ``"flag"`` (red), ``"image"``
    (``image``: a base64 PNG), ``"table"`` (``rows``: rows of ``(text, flagged)`` cells,
    the first row the header), ``"items"`` (a bullet list) or ``"verdict"`` (``text`` the
    verdict line, ``items`` its reasons).
    """

    kind: str
    text: str = ""
    image: str = ""
    rows: tuple[tuple[tuple[str, bool], ...], ...] = ()
    items: tuple[str, ...] = ()


@dataclass
class RunView:
    """One run as the report sees it: its draws, what is known about it, what was found.

    Attributes:
        idata: the draws.
        name: a short name for headings.
        source: where the draws came from.
        modes: known mode centres ``(K, d)``, or ``None``.
        modes_from: where the modes came from, for the page.
        data: points drawn under the chains (the training data), or ``None``.
        log_densities: panels of the chains-over-data plot: title to a log density of
            points ``(m, 2)``.
        var_names: the posterior variables reported (checked names), or ``None`` for all.
        summary: the mixing summary, once computed.
        verdict: the verdict, once computed.
        notes: what could not be shown, and why.
    """

    idata: InferenceData
    name: str
    source: str
    modes: np.ndarray | None = None
    modes_from: str | None = None
    data: np.ndarray | None = None
    log_densities: Mapping[str, Callable[[Any], Any] | None] = field(default_factory=dict)
    var_names: list[str] | None = None
    summary: MixingSummary | None = None
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)


@contextmanager
def quiet_stats() -> Iterator[None]:
    """Silence numpy's 0/0 warnings of R-hat on constant chains: the result (NaN) is reported."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


def _png(fig: Any) -> str:
    """A matplotlib figure as base64 PNG; closes the figure."""
    import matplotlib.pyplot as plt  # pyplot picks a backend: only when a page is drawn

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(draw: Callable[[], Any]) -> list[Part]:
    """Run one ArviZ/matplotlib plot; its warnings and errors become notes in the page.

    A report must never crash on a plot: an error is shown in place of the image, and
    warnings (ArviZ's subplot cap, a KDE of a constant chain) are shown under it.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # ArviZ 0.23's plot_trace calls an API matplotlib 3.11 deprecated: about the library,
        # not about the chains, so it is no note for the reader.
        warnings.filterwarnings("ignore", "Passing a dict or None as alias_mapping")
        with arviz().rc_context(rc={"plot.max_subplots": _MAX_SUBPLOTS}):
            try:
                axes = draw()
                parts = [
                    Part("image", image=_png(np.ravel(np.asarray(axes, dtype=object))[0].figure))
                ]
            except Exception as e:  # noqa: BLE001 -- any plotting failure becomes a note
                import matplotlib.pyplot as plt

                plt.close("all")
                parts = [Part("note", f"could not draw this plot: {type(e).__name__}: {e}")]
    seen = dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught)
    return parts + [Part("note", f"warning: {m}") for m in seen]


def _verdict_cell(run: RunView) -> list[Part]:
    return [Part("verdict", str(run.verdict), items=run.verdict.reasons)]


def _table_cell(run: RunView) -> list[Part]:
    table = run.summary.table
    n_chains = run.idata.posterior.sizes["chain"]
    columns = list(table.columns)
    rows = [tuple((str(c), False) for c in ["", *columns])]
    for index, values in table.iterrows():
        cells = [(str(index), False)]
        for column in columns:
            value = float(values[column])
            bad = (column == "r_hat" and value > RHAT_FLAG) or (
                column in ("ess_bulk", "ess_tail") and value < ESS_PER_CHAIN * n_chains
            )
            cells.append((_cell_text(value), bad))
        rows.append(tuple(cells))
    legend = (
        f"Flagged: R-hat > {RHAT_FLAG}; bulk or tail ESS < {ESS_PER_CHAIN} per chain "
        f"({ESS_PER_CHAIN * n_chains} for {n_chains} chains)."
    )
    parts = [Part("table", rows=tuple(rows)), Part("text", legend)]
    if run.var_names is not None:
        chosen = ", ".join(run.var_names)
        parts.insert(0, Part("note", f"Variables chosen with var_names (--var-names): {chosen}."))
    evidence = evidence_text(run.idata)
    if evidence is not None:
        parts.append(Part("text", evidence[:1].upper() + evidence[1:] + "."))
    return parts + _sample_stats_parts(run.idata)


def _cell_text(value: float) -> str:
    return num_text(value) if abs(value) >= 1e3 else f"{value:.3f}"


def _float(value: Any) -> float:
    """An attribute as a float; NaN where it is none (``"none"``, text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def evidence_text(idata: InferenceData) -> str | None:
    """``log evidence: L ± s`` from the attrs ``log_evidence`` and ``log_evidence_stderr``
    (of the posterior group, else of the InferenceData), or ``None`` where there is no
    ``log_evidence``; a NaN evidence (a method that does not estimate it) is said so.

    Example:
        >>> from pyro_flowebm.io import to_inference_data
        >>> attrs = {"log_evidence": -3.2, "log_evidence_stderr": 0.02, "method": "smc"}
        >>> evidence_text(to_inference_data({"mu": np.zeros((2, 5))}, attrs=attrs))
        'log evidence: -3.200 ± 0.020 (method smc)'
    """
    attrs = {**getattr(idata, "attrs", {}), **idata.posterior.attrs}
    if "log_evidence" not in attrs:
        return None
    method = f" (method {attrs['method']})" if "method" in attrs else ""
    value, stderr = _float(attrs["log_evidence"]), _float(attrs.get("log_evidence_stderr"))
    if math.isnan(value):
        return f"log evidence: not estimated{method}"
    if not math.isfinite(stderr):
        return f"log evidence: {fmt_number(value)}, standard error not estimated{method}"
    return f"log evidence: {fmt_number(value)} ± {fmt_number(stderr)}{method}"


def _sample_stats_parts(idata: InferenceData) -> list[Part]:
    """Mean, sd, min and max of every numeric sample stat over all chains and draws."""
    if "sample_stats" not in idata.groups():
        return [Part("note", "No sample_stats group: no sample stats to show.")]
    rows = [tuple((c, False) for c in ("sample stat", "mean", "sd", "min", "max"))]
    for name, stat in idata.sample_stats.data_vars.items():
        values = stat.to_numpy()
        if values.size == 0 or not (values.dtype == bool or np.issubdtype(values.dtype, np.number)):
            continue
        values = values.astype(np.float64)
        with quiet_stats():  # an infinite lp makes sd NaN: shown as it is
            row = [values.mean(), values.std(), values.min(), values.max()]
        rows.append(((str(name), False), *((_cell_text(float(v)), False) for v in row)))
    if len(rows) == 1:
        return [Part("note", "No numeric sample stats.")]
    text = "Sample stats over all chains and draws (the mean of a yes/no stat is its fraction):"
    return [Part("text", text), Part("table", rows=tuple(rows))]


def _occupancy_table(summary: MixingSummary) -> Part:
    occupancy = summary.occupancy
    header = tuple((str(k), False) for k in ["chain", *occupancy.columns, "visited", "switches"])
    rows = [header]
    for i, (chain, values) in enumerate(occupancy.iterrows()):
        cells = [(str(chain), False), *((f"{v:.3f}", v == 0) for v in values.to_numpy())]
        cells += [(str(int(summary.modes_visited[i])), False)]
        cells += [(str(int(summary.transitions[i])), False)]
        rows.append(tuple(cells))
    return Part("table", rows=tuple(rows))


def _modes_cell(run: RunView) -> list[Part]:
    s = run.summary
    if s.occupancy is None:
        if run.notes:
            return [Part("note", n) for n in run.notes]
        return [
            Part(
                "note",
                "No known modes (pass --modes FILE, or report a run of a built-in mixture): "
                "mode coverage and false convergence not checked.",
            )
        ]
    parts = [
        Part("text", f"{s.occupancy.shape[1]} modes from {run.modes_from or 'the caller'}."),
        Part(
            "text",
            f"Mode R-hat (max over one-hot mode indicators): {num_text(s.mode_rhat)}; mode "
            f"switches in all chains: {s.total_transitions}; modes never visited by any chain: "
            f"{s.unvisited if s.unvisited else 'none'}.",
        ),
    ]
    if run.verdict.label == FALSE_CONVERGENCE:
        parts.append(
            Part(
                "flag",
                "False convergence: R-hat looks fine, but the chains all miss the same modes.",
            )  # fmt: skip
        )
    parts += _plot(lambda: plot_occupancy(s, title=f"{run.name}: mode occupancy"))
    if s.occupancy.shape[0] <= _MAX_TABLE_CHAINS:
        parts.append(_occupancy_table(s))
    return parts


def _chains_over_data_cell(run: RunView, var_name: str, idata_plot: Any) -> list[Part]:
    posterior = run.idata.posterior
    if var_name not in posterior.data_vars or len(posterior[var_name].shape) != 3:
        return [Part("note", f"No 2-D posterior {var_name!r}: chains over the data left out.")]
    if posterior[var_name].shape[-1] != 2:
        return [
            Part(
                "note",
                f"Posterior {var_name!r} has {posterior[var_name].shape[-1]} dimensions, not "
                "2: chains over the data left out.",
            )
        ]
    import matplotlib.pyplot as plt

    panels = dict(run.log_densities) or {"over the data": None}

    def draw() -> Any:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 5.0), squeeze=False)
        for ax, (title, log_density) in zip(axes[0], panels.items(), strict=True):
            with torch.no_grad():
                plot_chains(
                    idata_plot, var_name=var_name, data=run.data, log_density=log_density,
                    ax=ax, title=f"{run.name}: chains {title}",
                )  # fmt: skip
            if run.modes is not None:
                ax.scatter(*run.modes.T, marker="x", color="black", s=40, zorder=4, label="modes")
        return axes

    parts = _plot(draw)
    parts.append(Part("text", "Panels: " + "; ".join(f"chains {t}" for t in panels) + "."))
    if run.data is None:
        parts.append(Part("note", "No training data known: chains drawn alone."))
    return parts


def _is_images(run: RunView, var_name: str) -> bool:
    posterior = run.idata.posterior
    return var_name in posterior.data_vars and posterior[var_name].ndim == 5


def _image_chains_cell(run: RunView, var_name: str) -> list[Part]:
    n_chains = run.idata.posterior.sizes["chain"]
    rows = min(n_chains, _MAX_CHAINS_PLOTTED)
    parts = _plot(
        lambda: plot_image_chains(
            run.idata, var_name=var_name, num_chains=rows, num_draws=16,
            title=f"{run.name}: {var_name}, {rows} of {n_chains} chains over time",
        )
    )  # fmt: skip
    text = (
        "One row a chain, sixteen evenly spaced draws from the first to the last: a chain "
        "that mixes keeps producing realistic images and changes class along its row."
    )
    return [*parts, Part("text", text)]


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
    return arviz().InferenceData(**groups)


def _settings_cell(run: RunView) -> list[Part]:
    attrs = dict(run.idata.posterior.attrs)
    sizes = run.idata.posterior.sizes
    parts = [
        Part("text", f"Source: {run.source}"),
        Part(
            "text",
            f"{sizes['chain']} chains × {sizes['draw']} draws; groups: "
            f"{', '.join(run.idata.groups())}",
        ),
        Part("text", f"Seed: {attrs.get('seed', 'not recorded')}"),
        Part(
            "text",
            "Sampling time: "
            + str(attrs.get("sampling_time", "not recorded in the NetCDF attributes")),
        ),
    ]
    if not attrs:
        return [*parts, Part("note", "No sampler settings in the attributes.")]
    rows = [(("setting", False), ("value", False))]
    for key, value in sorted(attrs.items()):
        rows.append(((str(key), False), (_readable(value), False)))
    return [*parts, Part("table", rows=tuple(rows))]


def _readable(value: Any) -> str:
    """An attribute's value; JSON text (kernel settings) laid out with spaces."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), separators=(", ", ": "))
        except ValueError:
            return value
    return str(value)


def _divergence_part(stats: Any) -> Part:
    if stats is None or "diverging" not in stats:
        return Part("note", "No sample_stats 'diverging': divergences not marked.")
    per_chain = stats["diverging"].sum("draw").to_numpy().astype(int).tolist()
    if not sum(per_chain):
        return Part("text", "No divergences.")
    if len(per_chain) > _MAX_CHAINS_PLOTTED:
        chains = sum(1 for n in per_chain if n)
        return Part("note", f"{sum(per_chain)} divergences in {chains} of {len(per_chain)} "
                    "chains (marked under the traces).")  # fmt: skip
    return Part("note", f"Divergences per chain: {per_chain} (marked under the traces).")


def _energy_cell(run: RunView) -> list[Part]:
    idata = run.idata
    stats = idata.sample_stats if "sample_stats" in idata.groups() else None
    if stats is None or "energy" not in stats:
        missing = "No sample_stats group" if stats is None else "No sample_stats 'energy'"
        return [Part("note", f"{missing}: energy plot left out.")]
    with quiet_stats():
        bfmi = arviz().bfmi(idata)
    values = np.ravel(bfmi)
    shown = ", ".join(f"{b:.2f}" for b in values[:_MAX_CHAINS_PLOTTED])
    if values.size > _MAX_CHAINS_PLOTTED:
        shown += f", ... (lowest {values.min():.2f} over {values.size} chains)"
    parts = _plot(lambda: arviz().plot_energy(idata))
    parts.append(
        Part(
            "text", f"BFMI per chain: {shown} (below 0.3 suggests poor exploration of the energy)."
        )  # fmt: skip
    )
    attrs = idata.posterior.attrs
    if str(attrs.get("sampler", attrs.get("method", ""))).lower() in _NO_MOMENTUM:
        parts.append(Part("note", "This kernel has no momentum: its 'energy' is the potential."))
    return parts


class _Plotted(NamedTuple):
    """What the trace, rank and autocorrelation plots show, and notes said above them."""

    idata: Any
    var_names: list[str] | None
    notes: list[Part]


def _var_name_cell(
    run: RunView, var_name: str, idata_plot: Any
) -> tuple[tuple[str, list[Part]], _Plotted]:
    """The section of ``var_name``'s own pictures (image chains, or chains over the data),
    and what the trace, rank and autocorrelation plots then show."""
    plotted = _Plotted(idata_plot, run.var_names, [])
    posterior, chosen = run.idata.posterior, run.var_names
    if var_name in posterior.data_vars and chosen is not None and var_name not in chosen:
        note = "The variable compared with the modes is not among var_names: no picture of it."
        return ("Chains over the data", [Part("note", note)]), plotted
    if not _is_images(run, var_name):
        return ("Chains over the data", _chains_over_data_cell(run, var_name, idata_plot)), plotted
    note = Part(
        "note", f"Trace, rank and autocorrelation plots show {var_name} at the four central "
        "pixels of the first channel; the summary table holds every pixel.",
    )  # fmt: skip
    # The central pixels hold var_name alone.
    pixels = _Plotted(_central_pixels(idata_plot, var_name), None, [note])
    return ("Image chains over time", _image_chains_cell(run, var_name)), pixels


def sections(run: RunView, var_name: str) -> list[tuple[str, list[Part]]]:
    """``(title, parts)`` of every section of one run, in page order: the table and the
    plots of the variables ``run.var_names`` (all when ``None``), the pictures and mode
    coverage of ``var_name``."""
    az = arviz()
    idata = run.idata
    n_chains = idata.posterior.sizes["chain"]
    shown = min(n_chains, _MAX_CHAINS_PLOTTED)
    idata_plot = idata.isel(chain=slice(0, shown)) if shown < n_chains else idata
    plot_notes = []
    if shown < n_chains:
        plot_notes.append(
            Part(
                "note",
                f"Plots show the first {shown} of {n_chains} chains; the tables use all of them.",
            )  # fmt: skip
        )
    out = [
        ("Verdict", _verdict_cell(run)),
        ("Summary (ArviZ)", _table_cell(run)),
        ("Mode coverage", _modes_cell(run)),
    ]
    own, plotted = _var_name_cell(run, var_name, idata_plot)
    out.append(own)
    plot_notes += plotted.notes
    idata_plot, chosen = plotted.idata, plotted.var_names
    stats = idata.sample_stats if "sample_stats" in idata.groups() else None
    trace = _plot(lambda: az.plot_trace(idata_plot, var_names=chosen, compact=True))
    out.append(("Trace", [*plot_notes, *trace, _divergence_part(stats)]))
    rank = _plot(lambda: az.plot_rank(idata_plot, var_names=chosen))
    out.append(("Rank plots", [*plot_notes, *rank]))
    autocorr = _plot(lambda: az.plot_autocorr(idata_plot, var_names=chosen, combined=True))
    out.append(("Autocorrelation", [*plot_notes, *autocorr]))
    out.append(("Energy and BFMI", _energy_cell(run)))
    out.append(("Settings and reproducibility", _settings_cell(run)))
    return out
