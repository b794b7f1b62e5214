"""Files: atomic writes, tensor files, and ArviZ InferenceData in memory and as NetCDF."""

from .files import atomic_write, load_tensors, save_tensors, write_text
from .inference_data import (
    arviz,
    netcdf_safe,
    pareto_khat,
    read_netcdf,
    to_inference_data,
    write_netcdf,
)

__all__ = [
    "arviz",
    "atomic_write",
    "load_tensors",
    "netcdf_safe",
    "pareto_khat",
    "read_netcdf",
    "save_tensors",
    "to_inference_data",
    "write_netcdf",
    "write_text",
]
