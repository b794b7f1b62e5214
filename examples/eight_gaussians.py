"""Eight Gaussians on a ring: latent-space NUTS mixes across modes, data-space NUTS does not.

Fits a RealNVP backbone to the data by maximum likelihood, tilts it with an MLP energy
(zero at initialization, so the EBM is the fitted flow), and samples the same model with
Pyro's NUTS twice from the same starting points, one chain in each of four modes: in the
flow's latent space and in data space. Prints both mixing summaries side by side and saves
a plot of the chains over the data and both runs' chains as NetCDF (latent.nc, data.nc).

    python examples/eight_gaussians.py --out demo_output
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyro_flowebm import FlowEBM, data_space_nuts, fit_backbone, flow_backbone, flows, latent_nuts
from pyro_flowebm.datasets import eight_gaussians, eight_gaussians_modes
from pyro_flowebm.diagnostics import mixing_summary, plot_chains, write_netcdf
from pyro_flowebm.nn import MLPEnergy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--num-data", type=int, default=4000, help="training points")
    parser.add_argument("--layers", type=int, default=6, help="RealNVP coupling layers")
    parser.add_argument("--hidden", type=int, default=32, help="coupling network width")
    parser.add_argument("--fit-steps", type=int, default=1500, help="backbone Adam steps")
    parser.add_argument("--lr", type=float, default=5e-3, help="backbone learning rate")
    parser.add_argument("--num-samples", type=int, default=200, help="draws per chain")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps per chain")
    parser.add_argument("--max-tree-depth", type=int, default=5, help="NUTS tree depth, both")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, fit and chains")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("num_data", "layers", "hidden", "fit_steps", "num_samples", "max_tree_depth"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def side_by_side(left: str, right: str, titles: tuple[str, str]) -> str:
    a, b = left.splitlines(), right.splitlines()
    width = max(len(line) for line in a + [titles[0]]) + 4
    rows = [titles[0].ljust(width) + titles[1], "-" * (width + len(titles[1]))]
    for i in range(max(len(a), len(b))):
        rows.append((a[i] if i < len(a) else "").ljust(width) + (b[i] if i < len(b) else ""))
    return "\n".join(rows)


def run(args: argparse.Namespace) -> dict:
    """Fit, sample both ways, report; returns the two summaries and the timings."""
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(args.seed)
    progress = not args.no_progress
    data = eight_gaussians(args.num_data, generator=torch.Generator().manual_seed(args.seed))
    modes = eight_gaussians_modes()

    start = time.perf_counter()
    backbone = flow_backbone(flows.realnvp(2, args.layers, args.hidden), event_shape=(2,))
    losses = fit_backbone(backbone, data, args.fit_steps, lr=args.lr, progress_bar=progress)
    fit_seconds = time.perf_counter() - start
    ebm = FlowEBM(backbone, MLPEnergy(2, hidden=32))

    # One chain in each of four modes, the same points in both spaces.
    init_x = modes[[0, 2, 4, 6]]
    with torch.no_grad():
        init_z = ebm.transform.inv(init_x)
    settings = {
        "num_samples": args.num_samples,
        "warmup_steps": args.warmup,
        "num_chains": 4,
        "seed": args.seed,
        "max_tree_depth": args.max_tree_depth,
        "progress_bar": progress,
    }
    start = time.perf_counter()
    latent = latent_nuts(ebm, init=init_z, **settings)
    latent_seconds = time.perf_counter() - start
    start = time.perf_counter()
    data_space = data_space_nuts(ebm, init=init_x, **settings)
    data_seconds = time.perf_counter() - start

    summaries = {
        "latent": mixing_summary(latent, modes, var_names=["x"]),
        "data": mixing_summary(data_space, modes, var_names=["x"]),
    }
    print(
        side_by_side(
            str(summaries["latent"]),
            str(summaries["data"]),
            (
                f"latent-space NUTS ({latent_seconds:.1f} s)",
                f"data-space NUTS ({data_seconds:.1f} s)",
            ),
        )
    )

    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharex=True, sharey=True)
    for ax, (name, idata) in zip(axes, [("latent", latent), ("data", data_space)], strict=True):
        s = summaries[name]
        plot_chains(
            idata,
            data=data[:1000],
            log_density=ebm.log_prob,
            ax=ax,
            extent=(-5.5, 5.5, -5.5, 5.5),
            title=f"{name}-space NUTS: mode R-hat {s.mode_rhat:.3g}, "
            f"{s.total_transitions} mode switches",
        )
    fig.tight_layout()
    plot_path = args.out / "chains.png"
    fig.savefig(plot_path, dpi=110)
    plt.close(fig)

    result = {
        "fit_seconds": fit_seconds,
        "final_nll": sum(losses[-50:]) / min(50, len(losses)),
        "latent_seconds": latent_seconds,
        "data_seconds": data_seconds,
        "latent": summaries["latent"].to_dict(),
        "data": summaries["data"].to_dict(),
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    # The chains themselves, for `pyro-flowebm report latent.nc --compare data.nc`.
    write_netcdf(latent, args.out / "latent.nc")
    write_netcdf(data_space, args.out / "data.nc")
    print(f"\nwrote {plot_path}, {args.out / 'summary.json'}, latent.nc and data.nc")
    return {"summaries": summaries, "idata": {"latent": latent, "data": data_space}, **result}


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
