"""Files: atomic writes, tensor files, and ArviZ InferenceData in memory and as NetCDF."""

from .files import (
    DIGEST_HEADER,
    LOCK_FILE,
    DirectoryLockedError,
    atomic_write,
    is_temporary,
    load_tensors,
    lock_directory,
    replace_files,
    save_tensors,
    tensor_bytes,
    write_bytes,
    write_text,
)
from .inference_data import (
    arviz,
    netcdf_bytes,
    netcdf_safe,
    pareto_khat,
    read_netcdf,
    to_inference_data,
    write_netcdf,
)

__all__ = [
    "DIGEST_HEADER",
    "LOCK_FILE",
    "DirectoryLockedError",
    "arviz",
    "atomic_write",
    "is_temporary",
    "load_tensors",
    "lock_directory",
    "netcdf_bytes",
    "netcdf_safe",
    "pareto_khat",
    "read_netcdf",
    "replace_files",
    "save_tensors",
    "tensor_bytes",
    "to_inference_data",
    "write_bytes",
    "write_netcdf",
    "write_text",
]
