"""ArviZ InferenceData from tensors, and NetCDF files of it: the package's one door to ArviZ.

ArviZ is imported on first use, not when this module is: loading it (with xarray and
pandas) takes about a second, and the samplers, which return InferenceData, must import
without it. Every module that calls ArviZ gets it from :func:`arviz`. Moving to ArviZ 1.x
changes this file.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import to_numpy
from .files import write_bytes

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = [
    "arviz",
    "netcdf_bytes",
    "netcdf_safe",
    "pareto_khat",
    "read_netcdf",
    "to_inference_data",
    "write_netcdf",
]


def arviz() -> ModuleType:
    """The ``arviz`` module, imported on the first call.

    ArviZ 0.23 warns once a day on import that 1.x is coming (a FutureWarning about the
    library, not about our calls); under ``-W error`` that warning would be an import error,
    so it is silenced here, the one place that imports ArviZ.

    Example:
        >>> arviz().__name__
        'arviz'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning
        )
        import arviz as az
    return az


def netcdf_safe(value: Any) -> str | int | float:
    """An attribute value as a type every NetCDF engine stores: ``bool`` becomes ``int``,
    ``None`` becomes ``"none"``, ``str``/``int``/``float`` stay, anything else becomes its
    JSON text (or ``str`` when it has none).

    Example:
        >>> netcdf_safe(True), netcdf_safe(None), netcdf_safe({"a": [1, 2]})
        (1, 'none', '{"a": [1, 2]}')
    """
    if isinstance(value, bool | np.bool_):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _check_group(
    group: str, arrays: Mapping[str, Any], leading: tuple[int, int] | None, ref: str | None
) -> tuple[dict[str, np.ndarray], tuple[int, int] | None, str | None]:
    """Convert one group to numpy and check every array's leading (chain, draw) axes."""
    out = {}
    for name, value in arrays.items():
        array = to_numpy(value)
        if array.ndim < 2:
            raise ValueError(
                f"expected {group} {name!r} with leading (chain, draw) axes, "
                f"got shape {tuple(array.shape)}"
            )
        if leading is None:
            leading, ref = (array.shape[0], array.shape[1]), f"{group} {name!r}"
        elif array.shape[:2] != leading:
            raise ValueError(
                f"expected {group} {name!r} with (chain, draw) = {leading} like {ref}, "
                f"got shape {tuple(array.shape)}"
            )
        out[str(name)] = array
    return out, leading, ref


def _other_groups(
    leading: tuple[int, int] | None,
    ref: str | None,
    log_likelihood: Mapping[str, Any] | None,
    prior: Mapping[str, Any] | None,
    prior_predictive: Mapping[str, Any] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """The log likelihood (shaped like the posterior), the prior and its predictive (shaped
    alike), checked."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    if log_likelihood:
        groups["log_likelihood"], _, _ = _check_group(
            "log_likelihood", log_likelihood, leading, ref
        )
    prior_leading, prior_ref = None, None
    if prior:
        groups["prior"], prior_leading, prior_ref = _check_group("prior", prior, None, None)
    if prior_predictive:
        groups["prior_predictive"], _, _ = _check_group(
            "prior_predictive", prior_predictive, prior_leading, prior_ref
        )
    return groups


def _dims(
    post: dict[str, np.ndarray],
    stats: dict[str, np.ndarray],
    groups: dict[str, dict[str, np.ndarray]],
    observed: dict[str, np.ndarray],
) -> dict[str, list[str]]:
    """Dimension names ``{v}_dim_{i}`` of every variable, one list per name."""
    dims: dict[str, list[str]] = {}
    for name, array in [*post.items(), *stats.items()]:
        names = [f"{name}_dim_{i}" for i in range(array.ndim - 2)]
        if dims.setdefault(name, names) != names:
            raise ValueError(
                f"expected {name!r} with the same number of event axes in posterior and "
                f"sample_stats, got {len(dims[name])} and {len(names)}; rename one of them"
            )
    # Other groups share the names; ArviZ uses as many of a name's dimensions as it needs.
    shapes = [(n, a.ndim - 2) for g in groups.values() for n, a in g.items()]
    for name, rank in shapes + [(n, a.ndim) for n, a in observed.items()]:
        if rank > len(dims.get(name, [])):
            dims[name] = [f"{name}_dim_{i}" for i in range(rank)]
    return dims


def to_inference_data(
    posterior: Mapping[str, Any],
    sample_stats: Mapping[str, Any] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    prior: Mapping[str, Any] | None = None,
    prior_predictive: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
) -> InferenceData:
    """Build an :class:`arviz.InferenceData` from arrays with leading (chain, draw) axes.

    Every event axis ``i`` of a variable ``v`` gets the dimension name ``f"{v}_dim_{i}"``
    explicitly, so the layout does not depend on ArviZ defaults. Tensors are detached and
    moved to CPU. ``attrs`` are stored on the ``posterior`` and ``sample_stats`` groups and
    on the InferenceData itself, made NetCDF-safe by :func:`netcdf_safe`, so the result
    survives ``idata.to_netcdf(path)`` and ``arviz.from_netcdf(path)``.

    Args:
        posterior: Variable name to array of shape ``(chain, draw, *event)``.
        sample_stats: Statistic name to array of shape ``(chain, draw, ...)``, for example
            ``{"lp": ..., "diverging": ..., "acceptance_rate": ...}``.
        attrs: Metadata such as the sampler's settings or the seed.
        log_likelihood: Observed site to its pointwise log likelihood, ``(chain, draw,
            *batch)``, the (chain, draw) of ``posterior`` (what ``az.loo`` reads).
        prior: Variable name to prior draws, ``(chain, draw, *event)``.
        prior_predictive: Observed site to prior predictive draws, the (chain, draw) of
            ``prior``.
        observed_data: Observed site to its value, without (chain, draw) axes.

    Returns:
        InferenceData with a ``posterior`` group, and each other group given. An observed
        site ``y`` has the dimensions ``y_dim_i`` in ``observed_data``, ``prior_predictive``
        and (its batch axes, the leading ones) ``log_likelihood``.

    Raises:
        ValueError: when ``posterior`` is empty, an array has fewer than two axes, the
            arrays disagree on (chain, draw), or a name in both groups has two event ranks.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> idata = to_inference_data(
        ...     {"x": rng.normal(size=(4, 100, 2))},
        ...     {"lp": rng.normal(size=(4, 100))},
        ...     attrs={"seed": 0, "adapted": True},
        ... )
        >>> idata.posterior["x"].dims
        ('chain', 'draw', 'x_dim_0')
        >>> int(idata.posterior.attrs["adapted"])
        1
    """
    if not isinstance(posterior, Mapping):
        raise TypeError(
            f"expected posterior as a mapping name -> array, got {type(posterior).__name__}"
        )
    if len(posterior) == 0:
        raise ValueError("expected a posterior with at least one variable, got an empty mapping")
    post, leading, ref = _check_group("posterior", posterior, None, None)
    stats: dict[str, np.ndarray] = {}
    if sample_stats:
        stats, _, _ = _check_group("sample_stats", sample_stats, leading, ref)
    groups = _other_groups(leading, ref, log_likelihood, prior, prior_predictive)
    observed = {str(k): to_numpy(v) for k, v in (observed_data or {}).items()}

    dims = _dims(post, stats, groups, observed)

    safe = {str(k): netcdf_safe(v) for k, v in (attrs or {}).items()}
    # ArviZ pops keys from the attrs dicts it is given, so each group gets its own copy.
    kwargs: dict[str, Any] = {"posterior_attrs": dict(safe)}
    if stats:
        kwargs["sample_stats"] = stats
        kwargs["sample_stats_attrs"] = dict(safe)
    kwargs |= groups
    if observed:
        kwargs["observed_data"] = observed
    with warnings.catch_warnings():
        # ArviZ warns when chains outnumber draws, guessing the axes may be swapped; ours
        # are explicit (chain, draw), and many short chains are this library's normal case.
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        return arviz().from_dict(
            posterior=post, dims=dims, attrs=dict(safe), index_origin=0, **kwargs
        )


def write_netcdf(
    idata: InferenceData, path: str | os.PathLike[str], *, overwrite: bool = True
) -> None:
    """Write InferenceData as NetCDF atomically (:func:`~pyro_flowebm.io.write_bytes`):
    built in memory, written to a temporary file, renamed over ``path``, so an interrupted
    write never leaves half a file. Without ``overwrite`` an existing ``path`` is a
    ``FileExistsError`` (checked atomically at the rename).

    Example:
        >>> import tempfile
        >>> idata = to_inference_data({"x": np.zeros((2, 3))})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_netcdf(idata, Path(tmp, "draws.nc"))
        ...     read_netcdf(Path(tmp, "draws.nc")).posterior["x"].shape
        (2, 3)
    """
    write_bytes(netcdf_bytes(idata), path, overwrite=overwrite)


def netcdf_bytes(idata: InferenceData) -> bytes:
    """The NetCDF-4 file of ``idata`` (what ``idata.to_netcdf`` writes: one HDF5 group a
    group, compressed), built in memory, so that no full disk or killed process ever
    meets the HDF5 writer halfway through a file.

    Example:
        >>> idata = to_inference_data({"x": np.zeros((2, 3))})
        >>> netcdf_bytes(idata)[:4]
        b'\\x89HDF'
    """
    import xarray  # with ArviZ: on first use

    buffer = io.BytesIO()
    mode = "w"
    if idata.attrs:
        xarray.Dataset(attrs=idata.attrs).to_netcdf(buffer, mode=mode, engine="h5netcdf")
        mode = "a"
    for group in idata.groups():
        data = getattr(idata, group)
        encoding = {
            name: {"zlib": True}
            for name, values in data.variables.items()
            if np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_
        }
        data.to_netcdf(buffer, mode=mode, group=group, engine="h5netcdf", encoding=encoding)
        mode = "a"
    return buffer.getvalue()


def read_netcdf(path: str | os.PathLike[str]) -> InferenceData:
    """Read InferenceData written by :func:`write_netcdf` (or ``pyro-flowebm sample``), eagerly:
    the file is closed afterwards."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a NetCDF file of draws, got {path}: no such file")
    try:
        return arviz().from_netcdf(str(path))
    except PermissionError as e:
        raise PermissionError(e.errno, f"could not read {path}: {e.strerror or e}") from e
    except Exception as e:  # h5py, netCDF4 and xarray raise many kinds on a foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"expected an ArviZ NetCDF file at {path}, got one that cannot be read: {reason}"
        ) from e


def pareto_khat(log_weights: Any) -> float:
    """The Pareto :math:`\\hat k` of importance weights, from ArviZ's PSIS (``az.psislw``).

    :math:`\\hat k` is the shape of a generalized Pareto fit to the largest weights: above
    0.7 the weights' tail is too heavy for the importance estimate to be trusted (Vehtari
    et al., 2024). Weights of zero (log-weight ``-inf``) are left out.

    Example:
        >>> import numpy as np
        >>> pareto_khat(np.random.default_rng(0).normal(size=4000) * 0.1) < 0.7
        True

    References:
        Vehtari, Simpson, Gelman, Yao, Gabry. Pareto smoothed importance sampling.
        JMLR 2024. arXiv:1507.02646.
    """
    values = np.asarray(to_numpy(log_weights), dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError(f"expected at least 2 finite log-weights, got {values.size}")
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        # PSIS warns when k-hat is high (the caller reports k-hat itself), and its fit of
        # the tail overflows to weights of zero on very heavy tails, as it should.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        _, khat = arviz().psislw(values - values.max())
    return float(khat)
