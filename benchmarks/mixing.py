"""Mixing per second and per gradient on 8 Gaussians: batched latent kernels against Pyro NUTS.

The model is the one of examples/eight_gaussians.py: 8 Gaussians on a ring (radius 4, sd
0.15), a ``flows.realnvp(2, 6, 32)`` backbone fitted by ``train.fit_backbone`` (1500
steps, lr 5e-3, seed 0, in float64 like the example, then cast to ``--dtype``) and
``MLPEnergy(2, 32)`` at its zero init, so the EBM is the fitted flow. Every sampler runs
on that model in the same process:

- (a) ``run_chains(ebm, HMC(...))`` in latent space, 256 chains: a fixed 5-step HMC with
  step-size adaptation, and ``HMC(chees=True)``;
- (b) ``run_chains(ebm, Cycle([HMC(...), IndependenceMH()], [4, 1]))`` in latent space;
- (c) ``latent_nuts``: Pyro NUTS in latent space, 4 chains, 300 warm-up + 500 draws
  (the reference of every ratio);
- (d) ``data_space_nuts``: Pyro NUTS on -log q(x) + E(x), 4 chains, same draws,
  ``--data-nuts-depth`` (default 6) as maximum tree depth;
- (e) ``run_chains`` on the data-space potential ``E(x) - log q(x)`` with HMC and with
  ULA, 256 chains started at backbone draws.

For each: wall seconds (warm-up included), gradient evaluations (one per chain and
potential gradient, warm-up included, counted by wrapping ``ebm.energy_of`` in a counter;
the kernels' own ``n_steps`` over the kept draws is stored too), ArviZ bulk ESS of x[0],
x[1] and of the mode indicator (min over the 8 one-hot nearest-mode indicators; a mode no
chain visited counts as ESS 0), ESS per second and per gradient evaluation, the mode R-hat
and the mode transitions of ``diagnostics.mixing_summary``, and the ratio of each ESS rate
to (c) measured in the same run. The issue's targets: batched latent HMC >= 10x the
mode-indicator ESS/s of (c) and >= 1000x that of (d), with mode R-hat <= 1.01.

Timings use ``torch.set_num_threads(1)`` unless ``--threads`` says otherwise.

    python benchmarks/mixing.py            # ~4 minutes
    python benchmarks/mixing.py --quick    # ~25 seconds, smoke run
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import (
    base_parser,
    ess_bulk,
    fitted_eight_gaussians,
    fmt_rhat,
    markdown_table,
    mode_indicator_ess,
    setup,
    write_results,
)
from torch import Tensor

from pyro_flowebm import FlowEBM, data_space_nuts, latent_nuts
from pyro_flowebm.diagnostics import mixing_summary
from pyro_flowebm.infer import HMC, ULA, Cycle, IndependenceMH, run_chains

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--fit-steps", type=int, default=1500, help="backbone Adam steps")
    parser.add_argument("--chains", type=int, default=256, help="chains of (a), (b), (e)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up of (a), (b), (e)")
    parser.add_argument("--draws", type=int, default=500, help="kept draws of (a), (b), (e)")
    parser.add_argument("--nuts-warmup", type=int, default=300, help="warm-up of (c), (d)")
    parser.add_argument("--nuts-draws", type=int, default=500, help="draws of (c), (d)")
    parser.add_argument("--nuts-chains", type=int, default=4)
    parser.add_argument("--data-nuts-depth", type=int, default=6, help="max tree depth of (d)")
    parser.add_argument(
        "--data-nuts-draws",
        type=int,
        default=None,
        help="warm-up and draws of (d), if fewer than (c)'s (default: the same)",
    )
    parser.add_argument("--ula-step", type=float, default=0.02, help="ULA step size")
    parser.add_argument("--ula-thin", type=int, default=5, help="ULA: keep every n-th step")
    parser.add_argument("--skip", nargs="*", default=[], help="sampler keys to leave out")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.fit_steps, args.chains, args.warmup, args.draws = 300, 64, 50, 100
        args.nuts_warmup, args.nuts_draws, args.nuts_chains = 50, 100, 2
        args.data_nuts_depth, args.data_nuts_draws = 4, 40
    return args


# -- counting gradient evaluations -------------------------------------------------------------


class GradCounter:
    """Counts points whose energy is evaluated under autograd: one per chain and gradient.

    Installed as an instance attribute over ``ebm.energy_of``, which both the latent and the
    data-space potentials call once per evaluation; calls without gradients (initial checks,
    pushing draws through the flow) are not counted.
    """

    def __init__(self, ebm: FlowEBM) -> None:
        self.ebm = ebm
        self.count = 0
        self.other = 0
        self._inner = ebm.energy_of

    def __enter__(self) -> GradCounter:
        inner = self._inner

        @functools.wraps(inner)
        def energy_of(x: Tensor) -> Tensor:
            points = x.numel() // 2
            if x.requires_grad and torch.is_grad_enabled():
                self.count += points
            else:
                self.other += points
            return inner(x)

        self.ebm.energy_of = energy_of  # shadows the method for this instance only
        return self

    def __exit__(self, *exc: object) -> None:
        del self.ebm.energy_of


# -- samplers ------------------------------------------------------------------------------------


def samplers(ebm: FlowEBM, args: argparse.Namespace) -> dict[str, tuple[str, Callable[[], Any]]]:
    common = {"seed": args.seed, "progress_bar": args.progress}
    batched = {"num_chains": args.chains, "num_samples": args.draws, "warmup_steps": args.warmup}
    nuts = {
        "num_chains": args.nuts_chains,
        "num_samples": args.nuts_draws,
        "warmup_steps": args.nuts_warmup,
        **common,
    }
    data_nuts = dict(nuts, max_tree_depth=args.data_nuts_depth)
    if args.data_nuts_draws is not None:
        data_nuts.update(num_samples=args.data_nuts_draws, warmup_steps=args.data_nuts_draws)

    def data_potential(x: Tensor) -> Tensor:
        return ebm.energy_of(x) - ebm.backbone.log_prob(x)

    def data_init() -> Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            with torch.no_grad():
                return ebm.backbone.sample((args.chains,))

    return {
        "a_hmc": (
            f"(a) latent HMC(0.3, 5 steps), {args.chains} chains",
            lambda: run_chains(ebm, HMC(step_size=0.3, num_steps=5), **batched, **common),
        ),
        "a_chees": (
            f"(a) latent HMC(chees=True), {args.chains} chains",
            lambda: run_chains(ebm, HMC(step_size=0.3, chees=True), **batched, **common),
        ),
        "b_cycle": (
            f"(b) latent Cycle([HMC(0.3, 5), IndependenceMH()], [4, 1]), {args.chains} chains",
            lambda: run_chains(
                ebm,
                Cycle([HMC(step_size=0.3, num_steps=5), IndependenceMH()], [4, 1]),
                **batched,
                **common,
            ),
        ),
        "c_latent_nuts": (
            f"(c) Pyro latent NUTS, {args.nuts_chains} chains",
            lambda: latent_nuts(ebm, **nuts),
        ),
        "d_data_nuts": (
            f"(d) Pyro data-space NUTS (max_tree_depth {args.data_nuts_depth}), "
            f"{args.nuts_chains} chains",
            lambda: data_space_nuts(ebm, **data_nuts),
        ),
        "e_data_hmc": (
            f"(e) data-space HMC(0.05, 10 steps), {args.chains} chains",
            lambda: run_chains(
                data_potential,
                HMC(step_size=0.05, num_steps=10),
                **batched,
                init=data_init(),
                **common,
            ),
        ),
        "e_data_ula": (
            f"(e) data-space ULA({args.ula_step}), thin {args.ula_thin}, {args.chains} chains",
            lambda: run_chains(
                data_potential,
                ULA(step_size=args.ula_step),
                **batched,
                thin=args.ula_thin,
                init=data_init(),
                **common,
            ),
        ),
    }


def measure(
    key: str, label: str, run: Callable[[], Any], ebm: FlowEBM, modes: np.ndarray
) -> dict[str, Any]:
    print(f"{label} ...", flush=True)
    with GradCounter(ebm) as counter:
        start = time.perf_counter()
        idata = run()
        seconds = time.perf_counter() - start
    x = idata.posterior["x"].transpose("chain", "draw", ...).to_numpy()
    chains, draws = x.shape[:2]
    mode_ess, per_mode = mode_indicator_ess(x, modes)
    visited_ess = [v for v in per_mode if v > 0 and not math.isnan(v)]
    summary = mixing_summary(idata, modes, var_names=["x"])
    stats = idata.sample_stats
    kernel_grads = int(stats["n_steps"].sum()) if "n_steps" in stats else None
    ess_x = [ess_bulk(x[..., i]) for i in range(2)]
    r = {
        "key": key,
        "label": label,
        "chains": chains,
        "draws": draws,
        "seconds": seconds,
        "grad_evals": counter.count,
        "kernel_n_steps_kept_draws": kernel_grads,
        "ess_x0": ess_x[0],
        "ess_x1": ess_x[1],
        "ess_mode": mode_ess,
        "ess_mode_visited": min(visited_ess) if visited_ess else math.nan,
        "ess_mode_per_mode": per_mode,
        "mode_rhat": float(summary.mode_rhat),
        "rhat_x": [float(v) for v in summary.table["r_hat"].to_numpy()],
        "transitions": summary.total_transitions,
        "modes_visited_min": int(summary.modes_visited.min()),
        "modes_visited_max": int(summary.modes_visited.max()),
        "unvisited_modes": summary.unvisited,
        "divergences": int(stats["diverging"].sum()),
        "accept_rate": float(stats["acceptance_rate"].mean()),
        "step_size": float(np.nanmean(stats["step_size"].to_numpy())),
    }
    for name in ("ess_x0", "ess_x1", "ess_mode", "ess_mode_visited"):
        r[f"{name}_per_s"] = r[name] / seconds
        r[f"{name}_per_grad"] = r[name] / max(counter.count, 1)
    print(
        f"  {seconds:.1f} s, {counter.count:,} gradient evaluations, ESS x0 {ess_x[0]:.0f}, "
        f"mode ESS {mode_ess:.1f} ({r['ess_mode_per_s']:.3g}/s), mode R-hat "
        f"{r['mode_rhat']:.3f}, {r['transitions']} transitions, modes per chain "
        f"{r['modes_visited_min']}-{r['modes_visited_max']}, accept {r['accept_rate']:.2f}",
        flush=True,
    )
    return r


def add_ratios(results: list[dict[str, Any]], ref_key: str, suffix: str) -> None:
    ref = next((r for r in results if r["key"] == ref_key), None)
    for r in results:
        for name in (
            "ess_x0_per_s",
            "ess_mode_per_s",
            "ess_mode_visited_per_s",
            "ess_mode_per_grad",
            "ess_x0_per_grad",
        ):
            value = math.nan
            if ref is not None and ref[name] > 0:
                value = r[name] / ref[name]
            elif ref is not None and r[name] > 0:
                value = math.inf
            r[f"{name}_vs_{suffix}"] = value


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, for each batched latent HMC run."""
    out = []
    for r in results:
        if not r["key"].startswith(("a_", "b_")):
            continue
        out.append(
            {
                "sampler": r["label"],
                "mode_ess_per_s_vs_latent_nuts": r["ess_mode_per_s_vs_latent_nuts"],
                "goal_10x_latent_nuts": r["ess_mode_per_s_vs_latent_nuts"] >= 10,
                "mode_ess_per_s_vs_data_nuts": r["ess_mode_per_s_vs_data_nuts"],
                "goal_1000x_data_nuts": r["ess_mode_per_s_vs_data_nuts"] >= 1000,
                # (d) usually never visits some modes (mode ESS 0, ratio inf): the ratio of
                # the min ESS over the modes each sampler did visit is the informative one.
                "visited_mode_ess_per_s_vs_data_nuts": r["ess_mode_visited_per_s_vs_data_nuts"],
                "mode_rhat": r["mode_rhat"],
                "goal_rhat": r["mode_rhat"] <= 1.01,
            }
        )
    return out


def markdown(results: list[dict[str, Any]], goals: list[dict[str, Any]], meta: dict) -> str:
    table = markdown_table(
        [
            "sampler",
            "chains x draws",
            "wall (s)",
            "grad evals",
            "ESS x0",
            "ESS x1",
            "mode ESS",
            "mode ESS/s",
            "mode ESS/grad",
            "mode ESS/s vs (c)",
            "mode ESS/grad vs (c)",
            "mode R-hat",
            "transitions",
            "modes/chain",
        ],
        [
            [
                r["label"],
                f"{r['chains']} x {r['draws']}",
                r["seconds"],
                r["grad_evals"],
                r["ess_x0"],
                r["ess_x1"],
                r["ess_mode"],
                r["ess_mode_per_s"],
                r["ess_mode_per_grad"],
                r["ess_mode_per_s_vs_latent_nuts"],
                r["ess_mode_per_grad_vs_latent_nuts"],
                fmt_rhat(r["mode_rhat"]),
                r["transitions"],
                f"{r['modes_visited_min']}-{r['modes_visited_max']}",
            ]
            for r in results
        ],
    )
    goal_table = markdown_table(
        [
            "sampler",
            "mode ESS/s vs (c)",
            ">= 10x",
            "vs (d)",
            ">= 1000x",
            "vs (d), visited modes only",
            "mode R-hat",
            "<= 1.01",
        ],
        [
            [
                g["sampler"],
                g["mode_ess_per_s_vs_latent_nuts"],
                g["goal_10x_latent_nuts"],
                g["mode_ess_per_s_vs_data_nuts"],
                g["goal_1000x_data_nuts"],
                g["visited_mode_ess_per_s_vs_data_nuts"],
                fmt_rhat(g["mode_rhat"]),
                g["goal_rhat"],
            ]
            for g in goals
        ],
    )
    return "\n".join(
        [
            f"8 Gaussians, RealNVP(2, 6, 32) fitted by maximum likelihood "
            f"({meta['fit_steps']} steps, {meta['fit_seconds']:.1f} s), E = 0, {meta['dtype']}, "
            f"{meta['threads']} torch thread(s). Wall time includes warm-up; gradient "
            "evaluations are per chain, warm-up included. Mode ESS = min over the 8 one-hot "
            "nearest-mode indicators of ArviZ bulk ESS (a mode never visited counts as 0). "
            "Ratios are against (c), Pyro latent NUTS, measured in the same run.",
            "",
            table,
            "",
            "Targets of the issue (mode-indicator ESS per second):",
            "",
            goal_table,
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup(args)
    dtype = DTYPES[args.dtype]
    print(f"fitting RealNVP(2, 6, 32) on 8 Gaussians, {args.fit_steps} steps ...", flush=True)
    ebm, _, modes, fit_seconds = fitted_eight_gaussians(
        args.seed, args.fit_steps, dtype=dtype, progress=args.progress
    )
    print(f"  {fit_seconds:.1f} s")
    modes = modes.numpy()
    results = []
    for key, (label, run) in samplers(ebm, args).items():
        if key in args.skip:
            continue
        results.append(measure(key, label, run, ebm, modes))
    add_ratios(results, "c_latent_nuts", "latent_nuts")
    add_ratios(results, "d_data_nuts", "data_nuts")
    goals = targets(results)
    for g in goals:
        print(
            f"{g['sampler']}: mode ESS/s {g['mode_ess_per_s_vs_latent_nuts']:.3g}x latent NUTS "
            f"(goal 10x), {g['mode_ess_per_s_vs_data_nuts']:.3g}x data-space NUTS (goal 1000x; "
            f"{g['visited_mode_ess_per_s_vs_data_nuts']:.3g}x over visited modes only), "
            f"mode R-hat {g['mode_rhat']:.4f} (goal <= 1.01)"
        )
    meta = {
        "fit_steps": args.fit_steps,
        "fit_seconds": fit_seconds,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
    }
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out = {"settings": settings, **meta, "samplers": results, "targets": goals}
    write_results("mixing", args, out, markdown(results, goals, meta))
    return out


if __name__ == "__main__":
    main()
