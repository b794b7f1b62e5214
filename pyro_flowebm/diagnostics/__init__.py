"""Mixing diagnostics: summaries, verdicts, plots and the HTML report, from InferenceData.

This layer takes InferenceData (and optional modes, data and densities) and knows nothing
of run directories: :mod:`pyro_flowebm.app` resolves those.
"""

from ..io import read_netcdf, to_inference_data, write_netcdf
from ..metrics import assign_modes
from .plots import image_grid, plot_chains, plot_image_chains, plot_occupancy
from .report import Report, ReportInput, report
from .summary import MixingSummary, mixing_summary
from .verdict import FALSE_CONVERGENCE, MIXING, NOT_MIXING, Verdict, verdict

__all__ = [
    "FALSE_CONVERGENCE",
    "MIXING",
    "NOT_MIXING",
    "MixingSummary",
    "Report",
    "ReportInput",
    "Verdict",
    "assign_modes",
    "image_grid",
    "mixing_summary",
    "plot_chains",
    "plot_image_chains",
    "plot_occupancy",
    "read_netcdf",
    "report",
    "to_inference_data",
    "verdict",
    "write_netcdf",
]
