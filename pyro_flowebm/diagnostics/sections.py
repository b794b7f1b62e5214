"""The sections of the mixing report for one run, as parts the page template renders."""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..io import arviz
from .plots import plot_chains, plot_image_chains, plot_occupancy
from .summary import RHAT_FLAG, MixingSummary
from .verdict import ESS_PER_CHAIN, FALSE_CONVERGENCE, Verdict, num_text

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["Part", "RunView", "quiet_stats", "sections"]

# Plots show at most this many chains (a vectorized run has hundreds); the tables use all.
_MAX_CHAINS_PLOTTED = 8
# Up to this many chains the occupancy image comes with its table.
_MAX_TABLE_CHAINS = 8
# ArviZ's own cap on subplots per figure, lowered: a page of 40 trace rows is unreadable.
_MAX_SUBPLOTS = 12
# Resolution of the embedded PNGs: sharp enough to read, small enough for one HTML file.
_DPI = 72
# Kernels without momentum: their 'energy' is the potential.
_NO_MOMENTUM = ("IndependenceMH", "MALA", "ULA")


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
            cells.append((num_text(value) if abs(value) >= 1e3 else f"{value:.3f}", bad))
        rows.append(tuple(cells))
    legend = (
        f"Flagged: R-hat > {RHAT_FLAG}; bulk or tail ESS < {ESS_PER_CHAIN} per chain "
        f"({ESS_PER_CHAIN * n_chains} for {n_chains} chains)."
    )
    return [Part("table", rows=tuple(rows)), Part("text", legend)]


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
    if str(idata.posterior.attrs.get("sampler", "")) in _NO_MOMENTUM:
        parts.append(Part("note", "This kernel has no momentum: its 'energy' is the potential."))
    return parts


def sections(run: RunView, var_name: str) -> list[tuple[str, list[Part]]]:
    """``(title, parts)`` of every section of one run, in page order."""
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
    if _is_images(run, var_name):
        out.append(("Image chains over time", _image_chains_cell(run, var_name)))
        idata_plot = _central_pixels(idata_plot, var_name)
        plot_notes.append(
            Part("note", f"Trace, rank and autocorrelation plots show {var_name} at the four "
                 "central pixels of the first channel; the summary table holds every pixel.")
        )  # fmt: skip
    else:
        out.append(("Chains over the data", _chains_over_data_cell(run, var_name, idata_plot)))
    stats = idata.sample_stats if "sample_stats" in idata.groups() else None
    trace = _plot(lambda: az.plot_trace(idata_plot, compact=True))
    out.append(("Trace", [*plot_notes, *trace, _divergence_part(stats)]))
    out.append(("Rank plots", [*plot_notes, *_plot(lambda: az.plot_rank(idata_plot))]))
    autocorr = _plot(lambda: az.plot_autocorr(idata_plot, combined=True))
    out.append(("Autocorrelation", [*plot_notes, *autocorr]))
    out.append(("Energy and BFMI", _energy_cell(run)))
    out.append(("Settings and reproducibility", _settings_cell(run)))
    return out
