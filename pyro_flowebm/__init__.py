"""pyro_flowebm: energy-based models as exponential tilts of normalizing flows, for Pyro."""

from . import datasets, diagnostics, energy, evaluate, flows, probe
from .distribution import FlowEBM, LatentFlowEBM
from .flows import NormflowsTransform, flow_backbone
from .infer import data_space_nuts, latent_nuts
from .reparam import FlowEBMReparam
from .runs import load_run
from .train import TrainingDiverged, fit_backbone, fit_ebm

__all__ = [
    "FlowEBM",
    "FlowEBMReparam",
    "LatentFlowEBM",
    "NormflowsTransform",
    "TrainingDiverged",
    "data_space_nuts",
    "datasets",
    "diagnostics",
    "energy",
    "evaluate",
    "fit_backbone",
    "fit_ebm",
    "flow_backbone",
    "flows",
    "latent_nuts",
    "load_run",
    "probe",
]

__version__ = "0.1.0"
