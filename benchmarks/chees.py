"""Does ChEES pick a good trajectory length? A sweep of T against HMC(chees=True).

Target: an anisotropic Gaussian in d dimensions (default 20) with standard deviations
log-spaced from 0.1 to 1, U(x) = sum_i x_i^2 / (2 sd_i^2). The step size is fixed first by
adapting it (dual averaging to acceptance 0.8, ``HMC(num_steps=10)``, 256 chains). Then,
for trajectory lengths T on a log grid, 256 chains started at exact draws run

- fixed T: ``HMC(step_size, num_steps=round(T / step_size), step_size_jitter=0)`` with
  fixed parameters (no jitter of any kind: the plain fixed trajectory);
- jittered T: ``HMC(step_size, chees=True, init_trajectory_length=T)`` without warm-up,
  i.e. every iteration uses u T with u ~ U(0, 1), ChEES's own jitter, T not adapted;

and the script measures ESS per gradient evaluation: the min over coordinates of ArviZ
bulk ESS of x_i, and of x_i^2, divided by chains x draws x leapfrog steps. Each T gets
the same budget of leapfrog steps per chain (draws = budget / steps per draw, clipped):
chains that start at exact draws are worth at least one draw each whatever the kernel
does, and long chains keep that floor small for short trajectories. Finally
``HMC(chees=True)`` adapts T (and its step size) during warm-up from exact draws; the
adapted trajectory length is compared with the T that maximizes ESS/grad in each
sweep. How to read it: ``T_chees / T_best`` within [0.5, 2] meets the issue's goal
(within a factor of 2 of the best T). The sweep is plotted to ``results/chees.png`` with
ChEES's T marked.

Timings do not matter here; ``torch.set_num_threads(1)`` anyway.

    python benchmarks/chees.py            # ~2 minutes
    python benchmarks/chees.py --quick    # ~15 seconds, smoke run
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from _common import RESULTS, base_parser, ess_bulk, markdown_table, setup, write_results
from torch import Tensor

from pyro_flowebm.infer import HMC, Kernel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--sd-min", type=float, default=0.1)
    parser.add_argument("--sd-max", type=float, default=1.0)
    parser.add_argument("--chains", type=int, default=256)
    parser.add_argument(
        "--grad-budget",
        type=int,
        default=5000,
        help="leapfrog steps per chain and T: draws = budget / steps per draw, clipped",
    )
    parser.add_argument("--min-draws", type=int, default=300)
    parser.add_argument("--max-draws", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=400, help="warm-up of the adaptive runs")
    parser.add_argument("--t-min", type=float, default=0.1)
    parser.add_argument("--t-max", type=float, default=8.0)
    parser.add_argument("--num-t", type=int, default=14, help="points of the T grid")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args(argv)
    if args.quick:
        args.dim, args.chains, args.warmup, args.num_t = 10, 128, 150, 6
        args.grad_budget, args.min_draws, args.max_draws = 1000, 100, 1000
    return args


def min_ess(draws: np.ndarray) -> tuple[float, float]:
    """Min over coordinates of bulk ESS of x_i and of x_i^2; draws (chain, draw, d)."""
    d = draws.shape[-1]
    first = min(ess_bulk(draws[..., i]) for i in range(d))
    second = min(ess_bulk(draws[..., i] ** 2) for i in range(d))
    return first, second


def collect(kernel: Kernel, state, potential, params, draws: int) -> tuple[np.ndarray, int, float]:
    """Run ``draws`` steps from ``state`` with fixed ``params``; return the draws (chain,
    draw, d), gradient evaluations per chain and wall seconds."""
    kept = []
    grads = 0
    start = time.perf_counter()
    for _ in range(draws):
        state, info = kernel.step(state, potential, params)
        kept.append(state.position.float())
        grads += info.num_grad_evals
    seconds = time.perf_counter() - start
    return torch.stack(kept, 1).numpy(), grads, seconds


def num_draws(steps_per_draw: float, args: argparse.Namespace) -> int:
    """Draws for a fixed budget of leapfrog steps per chain.

    Chains start at exact draws, so every chain is worth at least one independent draw
    whatever the kernel does: an ESS floor of about ``chains``. Long chains for short
    trajectories keep that floor small against the ESS the kernel itself earns.
    """
    draws = round(args.grad_budget / max(steps_per_draw, 1.0))
    return int(min(max(draws, args.min_draws), args.max_draws))


def sweep_point(
    kind: str, t: float, eps: float, potential, init: Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    if kind == "fixed":
        num_steps = max(1, round(t / eps))
        kernel = HMC(eps, num_steps, step_size_jitter=0.0)
        t_eff = num_steps * eps
        expected_steps = num_steps
    else:
        kernel = HMC(eps, chees=True, init_trajectory_length=t)
        t_eff = t
        expected_steps = t / (2 * eps) + 0.5
    n = num_draws(expected_steps, args)
    state, params = kernel.init(init, potential), kernel.init_params(init)
    draws, grads, seconds = collect(kernel, state, potential, params, n)
    ess_x, ess_x2 = min_ess(draws)
    total = grads * args.chains
    return {
        "kind": kind,
        "T": t_eff,
        "draws": n,
        "grad_evals": total,
        "mean_steps": grads / n,
        "seconds": seconds,
        "min_ess_x": ess_x,
        "min_ess_x2": ess_x2,
        "ess_x_per_grad": ess_x / total,
        "ess_x2_per_grad": ess_x2 / total,
    }


def best(points: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(points, key=lambda p: p[key] if math.isfinite(p[key]) else -1.0)


def plot(points: list[dict[str, Any]], t_chees: float, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"fixed": "-", "jittered": "--"}
    for kind, style in styles.items():
        rows = [p for p in points if p["kind"] == kind]
        t = [p["T"] for p in rows]
        ax.plot(t, [p["ess_x_per_grad"] for p in rows], style, marker="o", color="C0",
                label=f"{kind} T: min ESS(x) / grad")  # fmt: skip
        ax.plot(t, [p["ess_x2_per_grad"] for p in rows], style, marker="s", color="C1",
                label=f"{kind} T: min ESS(x^2) / grad")  # fmt: skip
    ax.axvline(t_chees, color="C3", lw=2, label=f"ChEES T = {t_chees:.2f}")
    ax.axvspan(t_chees / 2, 2 * t_chees, color="C3", alpha=0.08, label="ChEES T x [1/2, 2]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("trajectory length T")
    ax.set_ylabel("ESS per gradient evaluation")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup(args)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    sd = torch.logspace(math.log10(args.sd_min), math.log10(args.sd_max), args.dim, dtype=dtype)

    def potential(x: Tensor) -> Tensor:
        return 0.5 * (x / sd).pow(2).sum(-1)

    def exact(n: int) -> Tensor:
        return sd * torch.randn(n, args.dim, dtype=dtype)

    print(f"anisotropic Gaussian, d = {args.dim}, sd {args.sd_min}..{args.sd_max}")
    kernel = HMC(0.05, 10, target_accept_prob=0.8)
    start = exact(args.chains)
    state, adapt = kernel.init(start, potential), kernel.adaptation(start, args.warmup)
    for _ in range(args.warmup):
        state, info = adapt.step(state, potential)
    eps = adapt.adapted()["step_size"]
    print(f"adapted step size {eps:.4f} (HMC, 10 steps, target acceptance 0.8)")

    grid = np.geomspace(args.t_min, args.t_max, args.num_t)
    points = []
    fixed_grid = sorted({max(1, round(t / eps)) * eps for t in grid})  # distinct step counts
    for kind, ts in (("fixed", fixed_grid), ("jittered", grid)):
        for t in ts:
            p = sweep_point(kind, float(t), eps, potential, exact(args.chains), args)
            points.append(p)
            print(
                f"  {kind:8s} T {p['T']:6.3f}: {p['mean_steps']:6.1f} steps, "
                f"ESS/grad x {p['ess_x_per_grad']:.2e}, x^2 {p['ess_x2_per_grad']:.2e}",
                flush=True,
            )

    print("HMC(chees=True): adapting T ...")
    chees = HMC(eps, chees=True)
    start = exact(args.chains)
    state, adapt = chees.init(start, potential), chees.adaptation(start, args.warmup)
    for _ in range(args.warmup):
        state, _ = adapt.step(state, potential)
    t_chees = adapt.adapted()["trajectory_length"]
    eps_chees = adapt.adapted()["step_size"]
    n = num_draws(t_chees / (2 * eps_chees) + 0.5, args)
    draws, grads, _ = collect(chees, state, potential, adapt.params, n)  # warm-up is over
    ess_x, ess_x2 = min_ess(draws)
    total = grads * args.chains
    chees_point = {
        "T": t_chees,
        "step_size": eps_chees,
        "draws": n,
        "mean_steps": grads / n,
        "ess_x_per_grad": ess_x / total,
        "ess_x2_per_grad": ess_x2 / total,
    }
    comparison = []
    for kind in ("fixed", "jittered"):
        rows = [p for p in points if p["kind"] == kind]
        for key in ("ess_x_per_grad", "ess_x2_per_grad"):
            b = best(rows, key)
            comparison.append(
                {
                    "sweep": kind,
                    "criterion": key,
                    "best_T": b["T"],
                    "best_value": b[key],
                    "chees_T_over_best": t_chees / b["T"],
                    "within_factor_2": 0.5 <= t_chees / b["T"] <= 2.0,
                    "chees_value_over_best": chees_point[key] / b[key],
                }
            )
    print(
        f"ChEES T = {t_chees:.3f} (step size {chees_point['step_size']:.4f}, "
        f"{chees_point['mean_steps']:.1f} steps per iteration on average)"
    )
    for c in comparison:
        print(
            f"  {c['sweep']:8s} sweep, best T for {c['criterion']}: {c['best_T']:.3f}; "
            f"ChEES T / best = {c['chees_T_over_best']:.2f} "
            f"(within 2x: {c['within_factor_2']}); ChEES's ESS/grad = "
            f"{c['chees_value_over_best']:.2f} x the sweep's best"
        )

    out_dir = args.out if args.out is not None else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / ("chees_quick.png" if args.quick and args.out is None else "chees.png")
    title = (
        f"Gaussian d={args.dim}, sd {args.sd_min}-{args.sd_max}, step size {eps:.3f}\n"
        f"{args.chains} chains, {args.grad_budget} leapfrog steps per chain and T"
    )
    plot(points, t_chees, png, title)
    print(f"wrote {png}")

    md = "\n".join(
        [
            f"ChEES on an anisotropic Gaussian (d = {args.dim}, sd log-spaced "
            f"{args.sd_min}-{args.sd_max}), step size {eps:.4f} (adapted to acceptance 0.8), "
            f"{args.chains} chains, {args.grad_budget} leapfrog steps per chain and T "
            f"({args.min_draws}-{args.max_draws} draws). ESS/grad = min over "
            "coordinates of ArviZ bulk ESS / (chains x draws x leapfrog steps). "
            f"ChEES adapted T = {t_chees:.3f} (its own step size "
            f"{chees_point['step_size']:.4f}, {args.warmup} warm-up iterations). "
            f"Plot: [{png.name}]({png.name}).",
            "",
            markdown_table(
                [
                    "sweep",
                    "criterion",
                    "best T",
                    "ChEES T / best T",
                    "within 2x",
                    "ChEES ESS/grad / best",
                ],  # fmt: skip
                [
                    [
                        c["sweep"],
                        {"ess_x_per_grad": "min ESS(x)", "ess_x2_per_grad": "min ESS(x^2)"}[
                            c["criterion"]
                        ],
                        c["best_T"],
                        c["chees_T_over_best"],
                        c["within_factor_2"],
                        c["chees_value_over_best"],
                    ]
                    for c in comparison
                ],
            ),
            "",
            "The sweep:",
            "",
            markdown_table(
                [
                    "kind",
                    "T",
                    "steps/iter",
                    "min ESS x",
                    "min ESS x^2",
                    "ESS x/grad",
                    "ESS x^2/grad",
                ],  # fmt: skip
                [
                    [
                        p["kind"],
                        p["T"],
                        p["mean_steps"],
                        p["min_ess_x"],
                        p["min_ess_x2"],
                        p["ess_x_per_grad"],
                        p["ess_x2_per_grad"],
                    ]
                    for p in points
                ],
            ),
        ]
    )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results = {
        "settings": settings,
        "step_size": eps,
        "sd": sd.tolist(),
        "sweep": points,
        "chees": chees_point,
        "comparison": comparison,
        "plot": png.name,
    }
    write_results("chees", args, results, md)
    return results


if __name__ == "__main__":
    main()
