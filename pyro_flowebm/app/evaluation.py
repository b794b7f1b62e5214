"""Evaluating a trained run: draws and held-out likelihood of backbone and EBM, and plots."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import datasets
from ..core import seeded
from ..diagnostics import image_grid
from ..distributions import FlowEBM
from ..infer import LogZEstimate, estimate_log_z, sample_ebm
from ..io import atomic_write, lock_directory, read_netcdf, write_text
from ..metrics import compare_nll, evaluate_samples, load_or_fit_probe, mmd, probe_summary
from .checks import check_count, check_fits_in_memory, check_seed
from .config import RunConfig
from .rundir import EVALUATION, EVALUATION_PLOT, PROBE, read_config, read_data, read_levels
from .training import load_run

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = [
    "Evaluation",
    "estimate_for_evaluation",
    "evaluate_run",
    "plot_images",
    "plot_overview",
]

# Warm-up cycles of the hmc-imh chains that give the EBM's draws: images cost far more a
# gradient than 2-D points.
_WARMUP = {"vectors": 100, "images": 50}


def _read_samples(path: str | os.PathLike[str], event_shape: tuple[int, ...]) -> InferenceData:
    """The NetCDF file of ``--samples``, checked: finite posterior ``x`` of shape
    ``(chain, draw, *event_shape)``."""
    idata = read_netcdf(path)
    x = idata.posterior.get("x") if "posterior" in idata.groups() else None
    shape = None if x is None else tuple(x.shape)
    if shape is None or shape[2:] != event_shape or 0 in shape[:2]:
        got = "no posterior x" if shape is None else f"posterior x of shape {shape}"
        raise ValueError(
            f"expected --samples {path} to hold posterior x of shape (chain, draw, "
            f"{', '.join(map(str, event_shape))}) like the run's points, got {got}"
        )
    if not np.isfinite(np.asarray(x.values, dtype=np.float64)).all():
        raise ValueError(f"expected finite draws in --samples {path}, got NaN or infinite ones")
    return idata


def _flat_draws(idata: InferenceData, n: int) -> Tensor:
    """At most ``n`` draws of posterior ``x``, spread evenly over chains and draws."""
    x = np.asarray(idata.posterior["x"].values)
    flat = x.reshape(-1, *x.shape[2:])
    index = np.linspace(0, flat.shape[0] - 1, min(n, flat.shape[0])).round().astype(int)
    return torch.as_tensor(flat[index], dtype=torch.float32)


@dataclass(frozen=True)
class Evaluation:
    r"""Metrics of a run's backbone and EBM draws against reference data.

    Attributes:
        backbone: :func:`~pyro_flowebm.evaluate.evaluate_samples` of backbone draws
            (vectors), or for images the probe's ``mean_confidence`` and
            ``frechet_distance`` (digits, :mod:`~pyro_flowebm.probe`) and ``mmd`` of the
            flattened images.
        ebm: the same for the EBM's MCMC draws.
        reference: what the draws were compared with (``"heldout"``, a toy name or a
            file) and how many points.
        bits_per_dim: images only: the backbone's bits per dimension on the held-out
            images (the ``backbone`` value of ``likelihood``).
        class_fractions: digits only: the probe's class shares of each method's draws
            (``"backbone"``, ``"ebm"``, ``"reference"``).
        likelihood: the held-out negative log-likelihood of backbone and EBM, and the
            backbone's minus the EBM's, each with its standard error
            (:func:`~pyro_flowebm.metrics.compare_nll`: nats per point for vectors, bits per
            dimension for images).
        log_z: the estimate of :math:`\log Z` the EBM's likelihood uses
            (:meth:`~pyro_flowebm.infer.LogZEstimate.to_dict`), and ``is_khat``, the Pareto
            :math:`\hat k` of importance sampling that chose the method.
    """

    backbone: dict[str, float]
    ebm: dict[str, float]
    reference: dict[str, Any]
    bits_per_dim: float | None = None
    class_fractions: dict[str, list[float]] | None = None
    likelihood: dict[str, Any] | None = None
    log_z: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"backbone": self.backbone, "ebm": self.ebm, "reference": self.reference}
        if self.bits_per_dim is not None:
            out["backbone_bits_per_dim"] = self.bits_per_dim
        if self.class_fractions is not None:
            out["class_fractions"] = self.class_fractions
        if self.likelihood is not None:
            out["likelihood"] = self.likelihood
            out["log_z"] = self.log_z
        return out

    def table(self) -> str:
        """A Markdown table: one row a metric, backbone and EBM side by side; then log Z."""
        rows = ["| metric | backbone | EBM |", "|---|---|---|"]
        for key in self.ebm:
            rows.append(f"| {key} | {self.backbone[key]:.4g} | {self.ebm[key]:.4g} |")
        if self.likelihood is None or self.log_z is None:
            return "\n".join(rows)
        nll, log_z = self.likelihood, self.log_z
        unit, gain = nll["unit"], nll["improvement"]
        rows.append(
            f"| held-out NLL ({unit}) | {_pm(nll['backbone'])} | {_pm(nll['ebm'])} |",
        )
        khat = "" if log_z["khat"] is None else f", k-hat {log_z['khat']:.2f}"
        return "\n".join(
            [
                *rows,
                "",
                f"EBM minus backbone NLL: {-gain['value']:+.4g} ± {gain['stderr']:.2g} {unit}",
                f"log Z = {log_z['log_z']:.4f} ± {log_z['stderr']:.2g} ({log_z['method']}, "
                f"{log_z['num_particles']} particles, ESS {log_z['ess']:.0f}{khat})",
            ]
        )


def _pm(value: dict[str, float]) -> str:
    return f"{value['value']:.4g} ± {value['stderr']:.2g}"


def estimate_for_evaluation(
    ebm: FlowEBM, num_particles: int, seed: int, progress_bar: bool
) -> tuple[LogZEstimate, float | None]:
    """The log Z estimate of a run's evaluation: importance sampling with ``num_particles``
    when its Pareto k-hat is at most 0.7, else annealed SMC with an eighth as many
    particles (SMC costs ~100 gradient evaluations a particle). Returns the estimate and
    the importance sampler's k-hat."""
    estimate = estimate_log_z(ebm, num_particles, method="is", seed=seed)
    if estimate.reliable:
        return estimate, estimate.khat
    smc_particles = max(32, num_particles // 8 // 16 * 16)
    smc = estimate_log_z(ebm, smc_particles, seed=seed, progress_bar=progress_bar)
    return smc, estimate.khat


def _likelihood(
    ebm: FlowEBM,
    data: Tensor,
    levels: int | None,
    num_particles: int,
    seed: int,
    progress_bar: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`compare_nll` of backbone and normalized EBM on ``data``, and the log Z used."""
    estimate, khat = estimate_for_evaluation(ebm, num_particles, seed, progress_bar)
    nll = compare_nll(ebm.backbone, ebm.normalized(estimate), data, levels=levels, seed=seed)
    return nll, estimate.to_dict() | {"is_khat": khat}


def _toy_of(name: str | None) -> datasets.Toy | None:
    return datasets.TOYS.get(name) if name is not None else None


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    data: str | None = None,
    samples: str | os.PathLike[str] | None = None,
    num_draws: int = 2000,
    seed: int = 0,
    plots: bool = True,
    progress_bar: bool = True,
    num_samples: int | None = None,
    log_z_particles: int = 16384,
) -> Evaluation:
    r"""Compare a run's backbone and EBM draws with reference data; write the results.

    The reference is the run's held-out data, or ``data``: a toy name (fresh exact
    draws, seeded by ``seed``) or a file. For a toy, mode coverage, mode-weight error
    and grid KL join MMD and energy distance (see
    :func:`~pyro_flowebm.metrics.evaluate_samples`). ``num_draws`` draws of the backbone
    and as many of the EBM are compared: these come from ``samples`` (a NetCDF file of
    ``pyro-flowebm sample``, taken evenly over its chains and draws) or are drawn with the
    ``"hmc-imh"`` preset of :func:`~pyro_flowebm.infer.sample_ebm` as independent draws,
    the state of each of ``num_draws`` chains after 100 warm-up cycles (50 for images).
    The held-out negative log-likelihood of backbone and EBM (nats per point; bits per
    dimension for images, dequantized) comes with the EBM's :math:`\log Z`
    (:func:`estimate_for_evaluation`). Writes ``evaluation.json`` and, with ``plots``,
    ``evaluation.png`` (:func:`plot_overview`) into the run directory.

    Args:
        run_dir: the run.
        data: the reference data (default: the run's held-out points).
        samples: a NetCDF file of EBM draws (default: draw them).
        num_draws: draws of each model compared.
        seed: seeds the draws (and the reference draws of a toy).
        plots: write ``evaluation.png``.
        progress_bar: show the sampler's progress.
        num_samples: deprecated name of ``num_draws`` (it is not draws per chain).
        log_z_particles: importance-sampling particles of the :math:`\log Z` estimate.

    Example:
        >>> import tempfile
        >>> from pyro_flowebm.app import RunConfig, train_run
        >>> config = RunConfig(data="eight_gaussians", num_data=300, num_heldout=200,
        ...                    backbone_steps=10, steps=2, batch_size=32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_run(tmp, config, progress_bar=False)
        ...     result = evaluate_run(tmp, num_draws=64, plots=False, progress_bar=False)
        >>> sorted(result.ebm)[:3]
        ['energy_distance', 'fraction_near_modes', 'grid_kl']
    """
    if num_samples is not None:
        warnings.warn(
            "evaluate_run(num_samples=) is deprecated: use num_draws=", DeprecationWarning, 2
        )
        num_draws = num_samples
    check_count("num_draws", num_draws, 2)
    check_count("log_z_particles", log_z_particles, 256)
    check_seed("seed", seed)
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    ebm = load_run(run_dir, device="cpu")
    dim = int(np.prod(ebm.event_shape))
    check_fits_in_memory("the draws of --num-draws", 4 * 4 * num_draws * dim)
    check_fits_in_memory("the particles of --log-z-particles", 4 * 4 * log_z_particles * dim)
    draws = _read_samples(samples, tuple(ebm.event_shape)) if samples is not None else None
    if len(ebm.event_shape) == 3 and data is not None:
        raise ValueError(
            f"expected no --data for an image run (it is compared with its own held-out "
            f"images), got {data!r}"
        )
    counts = (num_draws, log_z_particles)
    with lock_directory(run_dir):  # evaluation.json, evaluation.png and probe.pt go there
        if len(ebm.event_shape) == 3:
            return _evaluate_images(run_dir, config, ebm, draws, counts, seed, plots, progress_bar)
        return _evaluate_vectors(
            run_dir, config, ebm, data, draws, counts, seed, plots, progress_bar
        )


def _reference(
    run_dir: Path, config: RunConfig, data: str | None, num_draws: int, seed: int
) -> tuple[Tensor, datasets.Toy | None, str]:
    """The points of a vector run's evaluation: its held-out data, fresh draws of a toy, or a
    file; the toy they come from, if any; and their name."""
    if data is None:
        return read_data(run_dir)[1].cpu(), _toy_of(config.data), "heldout"
    generator = torch.Generator().manual_seed(seed)
    return datasets.load(data, num_draws, generator=generator).float(), _toy_of(data), data


def _evaluate_vectors(
    run_dir: Path,
    config: RunConfig,
    ebm: FlowEBM,
    data: str | None,
    samples: InferenceData | None,
    counts: tuple[int, int],
    seed: int,
    plots: bool,
    progress_bar: bool,
) -> Evaluation:
    """evaluate_run for vectors: the toys' metrics, held-out NLL, the overview plot;
    ``counts`` are the draws compared and the particles of log Z."""
    num_draws, log_z_particles = counts
    reference, toy, source = _reference(run_dir, config, data, num_draws, seed)
    if reference.shape[1] != ebm.event_shape[0]:
        raise ValueError(
            f"expected --data {source} with {ebm.event_shape[0]} columns like the run's "
            f"points, got {reference.shape[1]}"
        )
    backbone_x, ebm_x = _draws(ebm, samples, num_draws, seed, _WARMUP["vectors"], progress_bar)
    known: dict[str, Any] = {}
    if toy is not None:
        known = {"modes": toy.modes, "weights": toy.weights, "sd": toy.sd, "log_prob": toy.log_prob}
        known = {k: v for k, v in known.items() if v is not None}
    nll, log_z = _likelihood(ebm, reference, None, log_z_particles, seed, progress_bar)
    result = Evaluation(
        backbone=evaluate_samples(backbone_x, reference, **known),
        ebm=evaluate_samples(ebm_x, reference, **known),
        reference={"data": source, "n": reference.shape[0], "num_draws": num_draws},
        likelihood=nll,
        log_z=log_z,
    )
    write_text(json.dumps(result.to_dict(), indent=2) + "\n", run_dir / EVALUATION)
    if plots:
        figure = plot_overview(ebm, reference, backbone_x, ebm_x)
        atomic_write(run_dir / EVALUATION_PLOT, lambda f: figure.savefig(f, format="png", dpi=110))
    return result


def _draws(
    ebm: FlowEBM,
    samples: InferenceData | None,
    num_draws: int,
    seed: int,
    warmup: int,
    progress_bar: bool,
) -> tuple[Tensor, Tensor]:
    """``num_draws`` backbone draws, and as many EBM draws from ``samples`` or from the
    hmc-imh preset: the state of each of ``num_draws`` chains after ``warmup`` cycles.

    One draw a chain: draws of one chain are correlated, and MMD, energy distance and the
    Fréchet distance all assume independent draws (close pairs from one chain read as
    excess similarity, measured in ``docs/command.md``).
    """
    with seeded(seed, ebm.base_dist.mean.device), torch.no_grad():
        backbone_x = ebm.backbone.sample((num_draws,))
    if samples is not None:
        return backbone_x, _flat_draws(samples, num_draws)
    idata = sample_ebm(ebm, "hmc-imh", num_draws, 1, warmup, seed=seed, progress_bar=progress_bar)
    return backbone_x, _flat_draws(idata, num_draws)


def _evaluate_images(
    run_dir: Path,
    config: RunConfig,
    ebm: FlowEBM,
    samples: InferenceData | None,
    counts: tuple[int, int],
    seed: int,
    plots: bool,
    progress_bar: bool,
) -> Evaluation:
    """evaluate_run for images: bits per dimension, the digits probe, MMD, image grids;
    ``counts`` are the draws compared and the particles of log Z."""
    num_draws, log_z_particles = counts
    levels = read_levels(run_dir)
    heldout = read_data(run_dir)[1].cpu()
    noise = torch.Generator().manual_seed(seed)
    reference = datasets.dequantize(heldout, levels, generator=noise) if levels else heldout
    nll, log_z = _likelihood(ebm, heldout, levels, log_z_particles, seed, progress_bar)
    backbone_x, ebm_x = _draws(ebm, samples, num_draws, seed, _WARMUP["images"], progress_bar)
    metrics: dict[str, dict[str, float]] = {"backbone": {}, "ebm": {}}
    fractions = None
    if config.data == "digits":
        probe = load_or_fit_probe(run_dir / PROBE)
        fractions = {"reference": probe_summary(probe, reference, reference)["class_fractions"]}
        for key, x in (("backbone", backbone_x), ("ebm", ebm_x)):
            summary = probe_summary(probe, x, reference)
            metrics[key]["mean_confidence"] = summary["mean_confidence"]
            metrics[key]["frechet_distance"] = summary["frechet_distance"]
            fractions[key] = summary["class_fractions"]
    for key, x in (("backbone", backbone_x), ("ebm", ebm_x)):
        metrics[key]["mmd"] = float(mmd(x.flatten(1), reference.flatten(1)))
    result = Evaluation(
        backbone=metrics["backbone"],
        ebm=metrics["ebm"],
        reference={"data": "heldout", "n": reference.shape[0], "num_draws": num_draws},
        bits_per_dim=nll["backbone"]["value"] if levels else None,
        class_fractions=fractions,
        likelihood=nll,
        log_z=log_z,
    )
    write_text(json.dumps(result.to_dict(), indent=2) + "\n", run_dir / EVALUATION)
    if plots:
        figure = plot_images(reference, backbone_x, ebm_x)
        atomic_write(run_dir / EVALUATION_PLOT, lambda f: figure.savefig(f, format="png", dpi=110))
    return result


def plot_images(data: Tensor, backbone_x: Tensor, ebm_x: Tensor, num_images: int = 64) -> Any:
    """Three image grids side by side: held-out data, backbone draws, EBM draws (the first
    ``num_images`` of each). Returns the matplotlib Figure."""
    figure = Figure(figsize=(13, 4.6))
    axes = figure.subplots(1, 3)
    panels = [("data (held out)", data), ("backbone q", backbone_x), ("EBM (latent MCMC)", ebm_x)]
    for ax, (title, images) in zip(axes, panels, strict=True):
        ax.imshow(image_grid(images[:num_images], 8), interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure


def plot_overview(ebm: FlowEBM, data: Tensor, backbone_x: Tensor, ebm_x: Tensor) -> Any:
    """Four panels for 2-D data: data, backbone draws, EBM draws, learned energy.

    The energy panel shows :math:`E(x)` on a grid over the data's bounding box (10%
    margin), with the data on top; low energy is where the tilt adds mass to the
    backbone. Returns the matplotlib Figure.
    """
    if data.shape[1] != 2:
        raise ValueError(f"expected 2-D points for the overview plot, got {data.shape[1]}-D")
    lo, hi = data.min(0).values, data.max(0).values
    margin = 0.1 * (hi - lo)
    lo, hi = (lo - margin).tolist(), (hi + margin).tolist()
    figure = Figure(figsize=(16, 4.2))
    axes = figure.subplots(1, 4, sharex=True, sharey=True)
    panels = [("data (held out)", data), ("backbone q", backbone_x), ("EBM (latent MCMC)", ebm_x)]
    for ax, (title, points) in zip(axes, panels, strict=False):
        ax.scatter(*points[:, :2].T.tolist(), s=2, alpha=0.4, color="C0")
        ax.set_title(f"{title}, n={points.shape[0]}")
    grid_x, grid_y = torch.meshgrid(
        torch.linspace(lo[0], hi[0], 150, dtype=data.dtype),
        torch.linspace(lo[1], hi[1], 150, dtype=data.dtype),
        indexing="xy",
    )
    points = torch.stack([grid_x, grid_y], -1).reshape(-1, 2)
    with torch.no_grad():
        energy = ebm.energy_of(points).reshape(150, 150)
    mesh = axes[3].pcolormesh(
        grid_x.numpy(), grid_y.numpy(), energy.numpy(), cmap="viridis", shading="auto"
    )
    axes[3].scatter(*data[:500].T.tolist(), s=1, color="white", alpha=0.5)
    axes[3].set_title("learned energy E(x)")
    figure.colorbar(mesh, ax=axes[3])
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
    figure.tight_layout()
    return figure
