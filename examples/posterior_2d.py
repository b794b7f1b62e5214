"""A posterior under a learned prior: eight Gaussians, a likelihood that keeps two modes.

Trains a FlowEBM on eight Gaussians on a ring, makes it the prior of x in a Pyro model,
and samples two posteriors with ``sample_posterior`` (likelihood-tempered SMC from the
prior), each against the truth on a grid:

- bimodal: three observations y_i ~ N(x_0, 0.5) near 0; the prior's modes at (0, 4) and
  (0, -4) both stay, in proportions the prior decides;
- sharp: x_0 and |x_1| observed with sd 0.04: two small modes that importance
  resampling from the prior misses (its effective sample size is printed).

Prints means, sds, the upper mode's probability and the evidence log p(y) with their
Monte Carlo standard errors next to the grid's, the PSIS-LOO of the bimodal model, and
saves a plot of both posteriors over the grid and both InferenceData as NetCDF.

    python examples/posterior_2d.py --out posterior_output
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_flowebm import FlowEBM, sample_posterior
from pyro_flowebm.app import RunConfig, train_run
from pyro_flowebm.distributions import kish_ess
from pyro_flowebm.io import arviz, write_netcdf
from pyro_flowebm.metrics import GridPosterior, grid_posterior

SHARP = 0.04


def bimodal(y: Tensor, ebm: FlowEBM) -> None:
    x = pyro.sample("x", ebm)
    with pyro.plate("obs", y.shape[-1]):
        pyro.sample("y", dist.Normal(x[..., 0], 0.5), obs=y)


def sharp(y: Tensor, ebm: FlowEBM) -> None:
    x = pyro.sample("x", ebm)
    pyro.sample("y0", dist.Normal(x[..., 0], SHARP), obs=y[0])
    pyro.sample("y1", dist.Normal(x[..., 1].abs(), SHARP), obs=y[1])


# The same likelihoods for the grid, at points (n, 2).
def bimodal_log_likelihood(x: Tensor, y: Tensor) -> Tensor:
    return dist.Normal(x[:, :1], 0.5).log_prob(y).sum(-1)


def sharp_log_likelihood(x: Tensor, y: Tensor) -> Tensor:
    first = dist.Normal(x[:, 0], SHARP).log_prob(y[0])
    return first + dist.Normal(x[:, 1].abs(), SHARP).log_prob(y[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("posterior_output"), help="folder")
    parser.add_argument("--backbone-steps", type=int, default=600, help="backbone fit steps")
    parser.add_argument("--steps", type=int, default=60, help="EBM training steps")
    parser.add_argument("--num-chains", type=int, default=8, help="SMC particle systems")
    parser.add_argument("--num-samples", type=int, default=500, help="particles per system")
    parser.add_argument(
        "--grid-points", type=int, default=481,
        help="grid points a side of the sharp posterior's boxes (twice that for the bimodal)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the training and sampling")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("backbone_steps", "steps", "num_chains", "grid_points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_samples < 2:
        parser.error(f"--num-samples must be >= 2, got {args.num_samples}")
    return args


def compare(idata, truth: GridPosterior) -> dict:
    """Estimates, their MCSE and the grid's truth: mean and sd of x, P(x_1 > 0), evidence."""
    az = arviz()
    x = idata.posterior["x"]
    idata.posterior["upper"] = (x[..., 1] > 0).astype(float)
    mean = az.mcse(idata, var_names=["x", "upper"])
    sd = az.mcse(idata, var_names=["x"], method="sd")
    rhat = az.rhat(idata, var_names=["x", "upper"])
    rows = {}
    for i in range(2):
        rows[f"mean x_{i}"] = (float(x[..., i].mean()), float(mean["x"][i]), float(truth.mean[i]))
        rows[f"sd x_{i}"] = (float(x[..., i].std()), float(sd["x"][i]), float(truth.sd[i]))
    upper = float(truth.expectation(lambda p: (p[:, 1] > 0).double()))
    rows["P(x_1 > 0)"] = (float(idata.posterior["upper"].mean()), float(mean["upper"]), upper)
    attrs = idata.attrs
    rows["log p(y)"] = (attrs["log_evidence"], attrs["log_evidence_stderr"], truth.log_evidence)
    return {
        "rows": {
            k: dict(zip(("estimate", "mcse", "truth"), v, strict=True)) for k, v in rows.items()
        },
        "max_rhat": float(max(rhat["x"].max(), rhat["upper"])),
        "seconds": attrs["sampling_time"],
    }


def table(name: str, result: dict) -> str:
    lines = [f"{name} ({result['seconds']:.1f} s, max R-hat {result['max_rhat']:.3f})"]
    lines.append(f"  {'':12s} {'estimate':>9s} {'mcse':>7s} {'grid':>9s} {'z':>6s}")
    for key, r in result["rows"].items():
        z = (r["estimate"] - r["truth"]) / r["mcse"]
        lines.append(
            f"  {key:12s} {r['estimate']:9.4f} {r['mcse']:7.4f} {r['truth']:9.4f} {z:6.2f}"
        )
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 5.5))
    for ax, (name, (idata, truth)) in zip(np.atleast_1d(axes), runs.items(), strict=True):
        x = idata.posterior["x"].values.reshape(-1, 2)
        prior = idata.prior["x"].values.reshape(-1, 2)
        ax.scatter(*prior[:2000].T, s=2, c="0.75", label="prior draws (the EBM)")
        points, weights = truth.points.numpy(), truth.weights.numpy()
        heavy = weights > weights.max() * 1e-3
        ax.scatter(*points[heavy].T, s=1, c="C0", alpha=0.05, label="grid truth (mass)")
        ax.scatter(*x.T, s=3, c="C3", alpha=0.5, label="posterior (SMC)")
        ax.set_title(f"{name}: P(x_1 > 0) = {float(idata.posterior['upper'].mean()):.3f}")
        ax.set_xlim(-5.5, 5.5)
        ax.set_ylim(-5.5, 5.5)
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=8, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    config = RunConfig(
        data="eight_gaussians",
        num_data=2000,
        num_heldout=200,
        backbone_steps=args.backbone_steps,
        steps=args.steps,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ebm = train_run(tmp, config, progress_bar=not args.no_progress)
    options = {
        "num_chains": args.num_chains,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "progress_bar": not args.no_progress,
    }
    y_bimodal = torch.tensor([0.1, -0.2, 0.05])
    y_sharp = torch.tensor([0.0, 4.0])
    # The prior's log Z once; each posterior on boxes that hold its mass (the bimodal
    # likelihood leaves |x_0| < 2.5, over 8 sds from the data; the sharp one two squares).
    log_z = grid_posterior(ebm).log_z
    bimodal_box = [(-2.5, 2.5, -20.0, 20.0)]
    sharp_boxes = [(-0.6, 0.6, 3.4, 4.6), (-0.6, 0.6, -4.6, -3.4)]
    points = args.grid_points
    runs = {
        "bimodal": (
            sample_posterior(bimodal, (y_bimodal, ebm), **options),
            grid_posterior(
                ebm, lambda x: bimodal_log_likelihood(x, y_bimodal), bimodal_box, 2 * points,
                log_z=log_z,
            ),
        ),
        "sharp": (
            sample_posterior(sharp, (y_sharp, ebm), **options),
            grid_posterior(
                ebm, lambda x: sharp_log_likelihood(x, y_sharp), sharp_boxes, points, log_z=log_z
            ),
        ),
    }  # fmt: skip
    result = {name: compare(idata, truth) for name, (idata, truth) in runs.items()}
    for name, r in result.items():
        print(table(name, r))
    prior = torch.as_tensor(runs["sharp"][0].prior["x"].values.reshape(-1, 2))
    ess = float(kish_ess(sharp_log_likelihood(prior, y_sharp)))
    result["sharp"]["sir_ess_fraction"] = ess / len(prior)
    print(f"sharp: importance resampling from the prior keeps {ess:.1f} of {len(prior)} draws")
    loo = arviz().loo(runs["bimodal"][0])
    result["bimodal"]["elpd_loo"] = float(loo.elpd_loo)
    print(f"bimodal: PSIS-LOO elpd {loo.elpd_loo:.3f} (se {loo.se:.3f})")

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "posterior.png")
    for name, (idata, _) in runs.items():
        write_netcdf(idata, args.out / f"{name}.nc")
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'posterior.png'}, summary.json, bimodal.nc and sharp.nc")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(parse_args())
