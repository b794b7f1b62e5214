"""Runs: the run configuration, run directories, and training, sampling, evaluating and
reporting a run; the ``pyro-flowebm`` command. The only layer that knows run directories."""

from .cli import main
from .config import BACKBONES, IMAGE_BACKBONES, IMAGE_DEFAULTS, RunConfig, default_of, is_image_data
from .evaluation import Evaluation, evaluate_run, plot_images, plot_overview
from .reporting import report_run
from .rundir import RunExistsError, read_config, read_data, read_levels, read_metrics
from .sampling import sample_run
from .training import load_run, train_run

__all__ = [
    "BACKBONES",
    "IMAGE_BACKBONES",
    "IMAGE_DEFAULTS",
    "Evaluation",
    "RunConfig",
    "RunExistsError",
    "default_of",
    "evaluate_run",
    "is_image_data",
    "load_run",
    "main",
    "plot_images",
    "plot_overview",
    "read_config",
    "read_data",
    "read_levels",
    "read_metrics",
    "report_run",
    "sample_run",
    "train_run",
]
