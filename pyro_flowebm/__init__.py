"""pyro_flowebm: energy-based models as exponential tilts of normalizing flows, for Pyro.

Names are loaded on first use: ``import pyro_flowebm`` is cheap, and ``import
pyro_flowebm.infer`` loads the samplers without the diagnostics (ArviZ, pandas,
matplotlib). See ``docs/architecture.md`` for the layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import __version__

if TYPE_CHECKING:
    from . import app, datasets, diagnostics, flows, infer, io, metrics, nn
    from .app import load_run
    from .distributions import FlowEBM, FlowEBMReparam, LatentFlowEBM
    from .flows import NormflowsTransform, fit_backbone, flow_backbone
    from .infer import data_space_nuts, latent_nuts, sample_posterior
    from .nn import ConvEnergy, MLPEnergy
    from .train import TrainingDiverged, fit_ebm

__all__ = [
    "ConvEnergy",
    "FlowEBM",
    "FlowEBMReparam",
    "LatentFlowEBM",
    "MLPEnergy",
    "NormflowsTransform",
    "TrainingDiverged",
    "__version__",
    "app",
    "data_space_nuts",
    "datasets",
    "diagnostics",
    "fit_backbone",
    "fit_ebm",
    "flow_backbone",
    "flows",
    "infer",
    "io",
    "latent_nuts",
    "load_run",
    "metrics",
    "nn",
    "sample_posterior",
]

# Public name -> the module that defines it (a subpackage is its own entry).
_HOMES = {
    "ConvEnergy": "nn",
    "FlowEBM": "distributions",
    "FlowEBMReparam": "distributions",
    "LatentFlowEBM": "distributions",
    "MLPEnergy": "nn",
    "NormflowsTransform": "flows",
    "TrainingDiverged": "train",
    "data_space_nuts": "infer",
    "fit_backbone": "flows",
    "fit_ebm": "train",
    "flow_backbone": "flows",
    "latent_nuts": "infer",
    "load_run": "app",
    "sample_posterior": "infer",
}
_SUBPACKAGES = {
    "app",
    "core",
    "datasets",
    "diagnostics",
    "distributions",
    "flows",
    "infer",
    "io",
    "metrics",
    "nn",
    "train",
}
# Modules of 0.1 that moved; each warns when imported (see the module).
_DEPRECATED = {"energy", "evaluate", "probe", "report", "runs"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    if name in _DEPRECATED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
