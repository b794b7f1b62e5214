"""Shared pieces of the benchmark scripts: models, timing, mode statistics and result files."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor

from pyro_flowebm import FlowEBM, fit_backbone, flow_backbone, flows
from pyro_flowebm.datasets import eight_gaussians, eight_gaussians_modes
from pyro_flowebm.infer import HMC
from pyro_flowebm.io import arviz
from pyro_flowebm.metrics import assign_modes
from pyro_flowebm.nn import MLPEnergy

az = arviz()  # imported quietly, by the package's one door to ArviZ

RESULTS = Path(__file__).resolve().parent / "results"


# -- command line and environment -------------------------------------------------------------


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the flags every script shares: --quick, --seed, --threads, --out."""
    parser = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 30 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and jax")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads for the timed runs"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results; --quick runs write *_quick files)",
    )
    return parser


def setup(args: argparse.Namespace) -> None:
    """Seed everything and fix the number of torch threads; say so."""
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)  # torch, numpy and random
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, seed {args.seed}"
        + (", --quick" if args.quick else "")
    )


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the results depend on, for the JSON file."""
    import normflows

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "normflows": normflows.__version__,
        "arviz": az.__version__,
        "torch_threads": torch.get_num_threads(),
        "seed": args.seed,
        "quick": bool(args.quick),
        "argv": sys.argv[1:],
        "package_commit": _git("rev-parse", "--short", "HEAD"),
        "package_modified": bool(_git("status", "--porcelain", "--", "pyro_flowebm")),
    }


def _git(*command: str) -> str:
    """Output of a read-only git command in the repository, or "" without git."""
    import subprocess

    try:
        result = subprocess.run(
            ["git", *command], cwd=RESULTS.parent.parent, capture_output=True, text=True
        )
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def write_results(
    name: str, args: argparse.Namespace, results: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (``<name>_quick.*`` for --quick runs)."""
    out = args.out if args.out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if args.quick and args.out is None else name
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    payload = {"benchmark": name, "environment": environment(args), **results}
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(f"\nwrote {json_path} and {md_path}")
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | Tensor):
        return value.tolist()
    if isinstance(value, Path | torch.dtype):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 3 significant digits."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def fmt_rhat(value: float) -> str:
    """R-hat with 4 decimals; chains stuck in different modes give huge values or inf."""
    return f"{value:.4f}" if math.isfinite(value) and value < 100 else f"{value:.3g}"


def fmt(value: Any) -> str:
    """Integers with thousands separators, floats with 3 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1e9 or (v != 0 and abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    return str(value)


# -- timing -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def hmc_runner(kernel: HMC, potential: Callable[[Tensor], Tensor], q: Tensor, iters: int):
    """A closure running ``iters`` HMC steps from a kept state, and that state's holder."""
    params = kernel.init_params(q)
    holder = {"state": kernel.init(q, potential)}

    def run() -> None:
        state = holder["state"]
        for _ in range(iters):
            state, info = kernel.step(state, potential, params)
        holder["state"], holder["info"] = state, info

    return run, holder


# -- models -----------------------------------------------------------------------------------


def random_ebm(
    seed: int,
    dtype: torch.dtype = torch.float32,
    num_layers: int = 8,
    hidden: int = 64,
    scale: float = 0.1,
) -> FlowEBM:
    """RealNVP(2, num_layers, hidden) tilted by MLPEnergy(2, hidden), with random weights.

    The presets start as the identity (last layers at zero) and the energy at zero, so every
    parameter gets Gaussian noise of standard deviation ``scale`` added: the potential then
    costs and curves like a trained one. Same ``seed``, same weights.
    """
    generator = torch.Generator().manual_seed(seed)
    transform = flows.realnvp(2, num_layers=num_layers, hidden=hidden)
    energy = MLPEnergy(2, hidden)
    with torch.no_grad():
        for p in [*transform.parameters(), *energy.parameters()]:
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    transform.to(dtype)
    energy.to(dtype)
    return FlowEBM(flow_backbone(transform, event_shape=(2,)), energy)


def ebm_modules(ebm: FlowEBM) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The (transform, energy) modules of an EBM built by this file."""
    (transform,) = ebm.backbone.transforms
    return transform, ebm.energy


def freeze(ebm: FlowEBM) -> FlowEBM:
    """Parameters without ``requires_grad``, as when only sampling."""
    for module in ebm_modules(ebm):
        module.requires_grad_(False)
    return ebm


def fitted_eight_gaussians(
    seed: int = 0,
    fit_steps: int = 1500,
    num_data: int = 4000,
    num_layers: int = 6,
    hidden: int = 32,
    lr: float = 5e-3,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[FlowEBM, Tensor, Tensor, float]:
    """The model of examples/eight_gaussians.py: a RealNVP fitted by maximum likelihood.

    Fitted in float64 like the example (same seed, same data, same weights), then cast to
    ``dtype``; MLPEnergy(2, 32) at its zero init, so the EBM is the fitted flow.

    Returns:
        ``(ebm, data, modes, fit_seconds)``.
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pyro.set_rng_seed(seed)
        data = eight_gaussians(num_data, generator=torch.Generator().manual_seed(seed))
        transform = flows.realnvp(2, num_layers, hidden)
        backbone = flow_backbone(transform, event_shape=(2,))
        start = time.perf_counter()
        fit_backbone(backbone, data, fit_steps, lr=lr, progress_bar=progress)
        fit_seconds = time.perf_counter() - start
        energy = MLPEnergy(2, hidden=32)
    finally:
        torch.set_default_dtype(default)
    transform.to(dtype)
    energy.to(dtype)
    ebm = FlowEBM(flow_backbone(transform, event_shape=(2,)), energy)
    return ebm, data.to(dtype), eight_gaussians_modes(dtype=dtype), fit_seconds


# -- statistics -------------------------------------------------------------------------------


def ess_bulk(values: np.ndarray) -> float:
    """ArviZ bulk ESS of a (chain, draw) array; NaN for a constant array."""
    values = np.asarray(values, dtype=np.float64)
    if values.min() == values.max():
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        return float(az.ess(values, method="bulk"))


def mode_indicator_ess(x: np.ndarray, modes: np.ndarray) -> tuple[float, list[float]]:
    """Min over modes of the bulk ESS of the one-hot nearest-mode indicator.

    A mode that no draw visits has a constant indicator (no ESS); it counts as ESS 0, since
    the chains carry no information about its weight.

    Returns:
        ``(min over modes, per-mode ESS)``.
    """
    labels = assign_modes(x, modes)
    per_mode = []
    for k in range(np.asarray(modes).shape[0]):
        indicator = (labels == k).astype(np.float64)
        ess = ess_bulk(indicator)
        per_mode.append(0.0 if indicator.max() == 0 else ess)
    finite = [v for v in per_mode if not math.isnan(v)]
    return (min(finite) if finite else math.nan), per_mode
