"""Sample-quality metrics: two-sample statistics, modes, densities, grid truth
of 2-D posteriors, and the digits probe."""

from .density import bits_per_dim, compare_nll, grid_kl, nll_per_point
from .evaluation import evaluate_samples
from .grid import GridPosterior, grid_posterior
from .modes import ModeCoverage, assign_modes, mode_coverage, mode_weight_error
from .probe import (
    DigitsProbe,
    fit_probe,
    frechet_distance,
    gaussian_frechet_distance,
    load_or_fit_probe,
    probe_summary,
)
from .two_sample import energy_distance, median_bandwidth, mmd

__all__ = [
    "DigitsProbe",
    "GridPosterior",
    "ModeCoverage",
    "assign_modes",
    "bits_per_dim",
    "compare_nll",
    "energy_distance",
    "evaluate_samples",
    "fit_probe",
    "frechet_distance",
    "gaussian_frechet_distance",
    "grid_kl",
    "grid_posterior",
    "load_or_fit_probe",
    "median_bandwidth",
    "mmd",
    "mode_coverage",
    "mode_weight_error",
    "nll_per_point",
    "probe_summary",
]
