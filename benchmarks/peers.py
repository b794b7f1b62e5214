"""Side by side with the JAX peers: BlackJAX HMC and NumPyro NUTS on the same potential.

The potential is the one of overhead.py (RealNVP(2, 8 layers, 64 hidden) and
MLPEnergy(2, 64), random weights from the same seed), re-implemented in pure JAX from the
torch weights as JAX users write it (``_peers_jax.py``: one point at a time, dense layers
``h @ W + b`` with the transposed weight stored once, ``jax.vmap`` over chains): normflows'
``AffineCouplingBlock`` (split the first ceil(d/2) coordinates z1, ``(shift, log_scale) =
net(z1)[:, 0::2], [:, 1::2]``, z2 <- z2 exp(log_scale) + shift, merge) followed by
``Permute(mode="swap")``, then the MLP energy. The JAX potential and its gradient are
checked against torch's on random points (float32 tolerances) before anything is timed.
All float32, 256, 1024 and 4096 chains (``--chains``):

1. Speed, chain-steps per second (chains x leapfrog steps / s), timed in interleaved
   rounds in one process: each round runs, once each and in a rotating order, ours eager
   ``HMC(0.1, 10 steps)``, ours ``HMC(compile=True)``, torch ``value_and_grad``, JAX
   ``jit(vmap(value_and_grad))`` and BlackJAX ``hmc`` (``jax.vmap`` over chains of
   ``step``, the iterations in a jitted ``lax.scan``, same step size and 10 leapfrog
   steps); samplers do ``--iters`` iterations, gradients ``--iters`` x 10 evaluations.
   Every ratio is computed within a round; the report gives the median and the middle
   half (25th-75th percentile) over rounds, and the load average before and after.
   NumPyro ``NUTS(potential_fn=...)`` over all chains at once (leapfrog steps actually
   taken by each chain, from its ``num_steps`` field) is timed in its own phase, not
   interleaved.
2. First-call (compile) times in child processes: ours ``HMC(compile=True)`` with an
   empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` set to a
   fresh folder: cold) and again on the same folder (warm); BlackJAX and the JAX gradient
   with JAX's persistent compilation cache off (its default) and on (cold, then warm).
3. ESS per second on the 8-Gaussians model of mixing.py (RealNVP(2, 6, 32) fitted by
   maximum likelihood, E = 0), latent space: ours (eager and compiled) and BlackJAX with
   the same fixed HMC(0.3, 5 steps), NumPyro NUTS vectorized with its own adaptation;
   mode-indicator and x[0] bulk ESS as in mixing.py. Compiled and JAX times exclude
   compilation (each is run once first on another seed).

Threads: ``torch.set_num_threads(1)`` and, set before jax is imported,
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.

Needs jax, blackjax and numpyro: ``pip install -e '.[bench]'``.

    python benchmarks/peers.py            # ~12 minutes
    python benchmarks/peers.py --quick    # ~50 seconds, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    base_parser,
    ess_bulk,
    fitted_eight_gaussians,
    fmt_rhat,
    hmc_runner,
    markdown_table,
    median,
    mode_indicator_ess,
    random_ebm,
    setup,
    timed,
    write_results,
)
from _peers_jax import (
    blackjax_sampler,
    check_potential,
    import_jax,
    jax_potential,
    numpyro_mcmc,
    numpyro_vectorized,
)

from pyro_flowebm.diagnostics import mixing_summary, to_inference_data
from pyro_flowebm.infer import HMC, run_chains, value_and_grad

# The interleaved rows, by short name, and the ratios reported (speed of the first over
# speed of the second, so > 1 means the first is faster).
ROWS = {
    "ours eager": "ours eager HMC",
    "ours compiled": "ours HMC(compile=True)",
    "torch gradient": "torch value_and_grad (reference)",
    "JAX gradient": "JAX jit(vmap(value_and_grad)) (reference)",
    "BlackJAX": "BlackJAX HMC (vmap, scan, jit)",
}
RATIOS = [
    ("ours compiled", "BlackJAX"),
    ("ours eager", "BlackJAX"),
    ("ours compiled", "JAX gradient"),
    ("ours eager", "JAX gradient"),
    ("ours compiled", "ours eager"),
    ("torch gradient", "JAX gradient"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--chains", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--iters", type=int, default=10, help="HMC iterations per round")
    parser.add_argument("--num-steps", type=int, default=10, help="leapfrog steps (speed)")
    parser.add_argument("--step-size", type=float, default=0.1, help="step size (speed)")
    parser.add_argument("--nuts-chains", type=int, default=1024, help="NumPyro NUTS (speed)")
    parser.add_argument("--nuts-warmup", type=int, default=100, help="NumPyro NUTS (speed)")
    parser.add_argument("--nuts-draws", type=int, default=50, help="NumPyro NUTS (speed)")
    parser.add_argument("--fit-steps", type=int, default=1500, help="8 Gaussians backbone")
    parser.add_argument("--ess-chains", type=int, default=1024, help="ESS part: chains")
    parser.add_argument("--ess-warmup", type=int, default=100, help="ESS part: warm-up")
    parser.add_argument("--ess-draws", type=int, default=300, help="ESS part: draws per chain")
    parser.add_argument("--no-compile", action="store_true", help="skip our compiled path")
    parser.add_argument("--child", choices=["ours", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--jax-cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.iters, args.rounds = [256], 3, 3
        args.nuts_chains, args.nuts_warmup, args.nuts_draws = 256, 20, 10
        args.fit_steps, args.ess_chains = 300, 256
        args.ess_warmup, args.ess_draws, args.no_compile = 30, 60, True
    return args


# -- 1. speed, interleaved --------------------------------------------------------------------


def speed_callables(ebm, potential, q, args, jax, blackjax) -> tuple[dict, dict]:
    """The interleaved rows at one chain count, and notes (first calls, acceptance)."""
    jnp = jax.numpy
    L, n, eps = args.num_steps, args.iters, args.step_size
    q_jax = jnp.asarray(q.numpy())
    # Fixed parameters and no step-size jitter: BlackJAX's HMC, written as its users write it.
    calls = {
        "ours eager": hmc_runner(HMC(eps, L, step_size_jitter=0.0), ebm.chain_potential, q, n)[0]
    }
    notes: dict[str, Any] = {}
    if not args.no_compile:
        torch.compiler.reset()  # a static-shape compile for this chain count, as in one run
        kernel = HMC(eps, L, step_size_jitter=0.0, compile=True)
        run = hmc_runner(kernel, ebm.chain_potential, q, 1)[0]
        try:
            notes["ours compiled first step (s), in process"] = timed(run)
        except Exception as exc:  # report any compiler failure, whatever its type
            message = str(exc).strip().splitlines()
            notes["ours compiled error"] = f"{type(exc).__name__}: {message[-1:]}"[:200]
            print(f"  ours compiled: failed ({notes['ours compiled error']})")
        else:
            calls["ours compiled"] = hmc_runner(kernel, ebm.chain_potential, q, n)[0]

    def torch_grads() -> None:
        for _ in range(n * L):
            value_and_grad(ebm.chain_potential, q)

    grad_fn = jax.jit(jax.vmap(jax.value_and_grad(potential)))
    sampler = blackjax_sampler(potential, jax, blackjax, eps, L, keep=False)
    key = jax.random.PRNGKey(args.seed)
    calls["torch gradient"] = torch_grads
    calls["JAX gradient"] = lambda: jax.block_until_ready([grad_fn(q_jax) for _ in range(n * L)])
    calls["BlackJAX"] = lambda: jax.block_until_ready(sampler(key, q_jax, n))
    notes["BlackJAX first call (s), in process"] = timed(calls["BlackJAX"])
    notes["BlackJAX accept rate"] = float(sampler(key, q_jax, n)[1])
    return calls, notes


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of every callable in each round; the order rotates from round to round."""
    names = list(calls)
    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            times[k].append(timed(calls[k]))
    return times


def ratio_stats(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Median and middle half of the per-round speed ratios of RATIOS."""
    out = {}
    for a, b in RATIOS:
        if a in times and b in times:
            per_round = np.asarray(times[b]) / np.asarray(times[a])  # speed of a / speed of b
            p25, p50, p75 = np.percentile(per_round, [25, 50, 75])
            out[f"{a} / {b}"] = {
                "median": float(p50),
                "p25": float(p25),
                "p75": float(p75),
                "per_round": per_round.tolist(),
            }
    return out


def speed_at(C: int, ebm, potential, args, jax, blackjax) -> dict[str, Any]:
    L, n = args.num_steps, args.iters
    print(f"\nspeed at {C} chains, {args.rounds} interleaved rounds of {n} iterations x {L} steps")
    q = torch.randn(C, 2)
    calls, notes = speed_callables(ebm, potential, q, args, jax, blackjax)
    load_before = os.getloadavg()
    times = interleaved(calls, args.rounds)
    load_after = os.getloadavg()
    rows = {
        k: {"chain_steps_per_s": C * n * L / median(t), "median_seconds": median(t), "seconds": t}
        for k, t in times.items()
    }
    ratios = ratio_stats(times)
    for k, row in rows.items():
        print(f"  {ROWS[k]}: {row['chain_steps_per_s']:,.0f} chain-steps/s")
    for k, r in ratios.items():
        print(f"  {k}: {r['median']:.2f} (middle half {r['p25']:.2f}-{r['p75']:.2f})")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    return {
        "chains": C,
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def nuts_speed(C: int, potential, jax, args, eager_speed: float | None) -> dict[str, Any]:
    """NumPyro's vectorized NUTS at ``C`` chains, timed in its own phase."""
    q = torch.randn(C, 2)
    r = numpyro_vectorized(
        potential, jax, C, args.nuts_warmup, args.nuts_draws, q.numpy(), args.seed
    )
    taken = int(r["num_steps"].sum())
    row = {
        "chains": C,
        "chain_steps_per_s": taken / r["seconds"],
        "seconds": r["seconds"],
        "compile_seconds": r["compile_seconds"],
        "warmup_seconds": r["warmup_seconds"],
        "mean_steps": float(r["num_steps"].mean()),
        "max_steps": int(r["num_steps"].max()),
        "step_size": r["step_size"],
        # vmapped NUTS runs every chain until the longest tree of the iteration is done
        "padded_chain_steps_per_s": C * float(r["num_steps"].max(0).sum()) / r["seconds"],
        "vs_ours_eager_median": None if eager_speed is None else taken / r["seconds"] / eager_speed,
    }
    print(
        f"\nNumPyro NUTS at {C} chains (own phase): {row['chain_steps_per_s']:,.0f} "
        f"chain-steps/s (mean {row['mean_steps']:.1f}, max {row['max_steps']} steps per draw; "
        f"{row['padded_chain_steps_per_s']:,.0f} counting the longest tree), "
        f"compile {r['compile_seconds']:.1f} s"
    )
    return row


def speed(args: argparse.Namespace, jax, blackjax) -> dict[str, Any]:
    ebm = random_ebm(args.seed, torch.float32)
    potential = jax_potential(ebm, jax)
    check = check_potential(ebm, potential, jax, args.seed)
    load_before = os.getloadavg()
    per_chains = {str(C): speed_at(C, ebm, potential, args, jax, blackjax) for C in args.chains}
    load_after = os.getloadavg()
    eager = per_chains.get(str(args.nuts_chains), {}).get("rows", {}).get("ours eager")
    nuts = nuts_speed(args.nuts_chains, potential, jax, args, eager and eager["chain_steps_per_s"])
    return {
        "check": check,
        "chains": per_chains,
        "numpyro": nuts,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


# -- 2. first calls: compile times, cold and warm, in child processes ----------------------


def child(args: argparse.Namespace) -> None:
    """One first call in a fresh process (``--child``); prints its times as JSON."""
    C, L, n, eps = args.chains[0], args.num_steps, args.iters, args.step_size
    torch.set_num_threads(args.threads)
    ebm = random_ebm(args.seed, torch.float32)
    q = torch.randn(C, 2, generator=torch.Generator().manual_seed(args.seed))
    if args.child == "ours":
        run = hmc_runner(
            HMC(eps, L, step_size_jitter=0.0, compile=True), ebm.chain_potential, q, 1
        )[0]
        out = {"first_step_s": timed(run), "second_step_s": timed(run)}
    else:
        jax, blackjax, _ = import_jax(args.threads)
        if args.jax_cache_dir:
            jax.config.update("jax_compilation_cache_dir", args.jax_cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        potential = jax_potential(ebm, jax)
        q_jax = jax.numpy.asarray(q.numpy())
        grad_fn = jax.jit(jax.vmap(jax.value_and_grad(potential)))
        sampler = blackjax_sampler(potential, jax, blackjax, eps, L, keep=False)
        key = jax.random.PRNGKey(args.seed)
        out = {
            "gradient_first_call_s": timed(lambda: jax.block_until_ready(grad_fn(q_jax))),
            "gradient_second_call_s": timed(lambda: jax.block_until_ready(grad_fn(q_jax))),
            "blackjax_first_call_s": timed(lambda: jax.block_until_ready(sampler(key, q_jax, n))),
            "blackjax_second_call_s": timed(lambda: jax.block_until_ready(sampler(key, q_jax, n))),
        }
    print(json.dumps(out))


def run_child(kind: str, C: int, args, env: dict[str, str], jax_cache: str | None = None):
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    command += ["--chains", str(C), "--seed", str(args.seed), "--threads", str(args.threads)]
    command += ["--iters", str(args.iters), "--num-steps", str(args.num_steps)]
    command += ["--step-size", str(args.step_size)]
    if jax_cache:
        command += ["--jax-cache-dir", jax_cache]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def compile_times(args: argparse.Namespace) -> dict[str, Any]:
    """First calls in fresh processes: Inductor and JAX caches empty (cold), then warm."""
    C = 1024 if 1024 in args.chains else args.chains[0]
    print(f"\nfirst calls at {C} chains in child processes (cold: empty cache folders)")
    with tempfile.TemporaryDirectory(prefix="peers_cache_") as tmp:
        env = dict(os.environ)
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
        env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
        jax_cache = os.path.join(tmp, "jax")
        out: dict[str, Any] = {"chains": C}
        if not args.no_compile:
            out["ours cold"] = run_child("ours", C, args, env)
            out["ours warm"] = run_child("ours", C, args, env)
        out["JAX, persistent cache off (default)"] = run_child("jax", C, args, env)
        out["JAX, persistent cache on, cold"] = run_child("jax", C, args, env, jax_cache)
        out["JAX, persistent cache on, warm"] = run_child("jax", C, args, env, jax_cache)
    for k, v in out.items():
        print(f"  {k}: {v}")
    return out


# -- 3. ESS per second on 8 Gaussians ---------------------------------------------------------


def mixing_stats(x: np.ndarray, modes: np.ndarray, seconds: float) -> dict[str, Any]:
    summary = mixing_summary(to_inference_data({"x": x}), modes, var_names=["x"])
    mode_ess, _ = mode_indicator_ess(x, modes)
    ess_x0 = ess_bulk(x[..., 0])
    return {
        "seconds": seconds,
        "ess_x0": ess_x0,
        "ess_mode": mode_ess,
        "ess_x0_per_s": ess_x0 / seconds,
        "ess_mode_per_s": mode_ess / seconds,
        "mode_rhat": float(summary.mode_rhat),
        "transitions": summary.total_transitions,
    }


def ours_ess(ebm, modes, z0, args, compile: bool) -> dict[str, Any]:
    """Our fixed HMC(0.3, 5 steps); compiled, it runs once first on another seed."""
    kernel = HMC(0.3, 5, adapt_step_size=False, step_size_jitter=0.0, compile=compile)
    C, warmup, draws = args.ess_chains, args.ess_warmup, args.ess_draws

    def run(seed: int):
        return run_chains(
            ebm, kernel, C, draws, warmup, init=z0, seed=seed, progress_bar=False
        )  # fmt: skip

    extra = {}
    if compile:
        torch.compiler.reset()
        extra["first_run_seconds"] = timed(lambda: run(args.seed + 1))
    start = time.perf_counter()
    idata = run(args.seed)
    seconds = time.perf_counter() - start
    x = idata.posterior["x"].transpose("chain", "draw", ...).to_numpy()
    if compile:
        extra["compile_seconds"] = extra["first_run_seconds"] - seconds
    return dict(mixing_stats(x, modes, seconds), **extra)


def ess(args: argparse.Namespace, jax, blackjax) -> dict[str, Any]:
    C, warmup, draws = args.ess_chains, args.ess_warmup, args.ess_draws
    print(f"\nESS per second on 8 Gaussians, {C} chains, {warmup} warm-up + {draws} draws")
    ebm, _, modes, fit_seconds = fitted_eight_gaussians(args.seed, args.fit_steps)
    modes = modes.numpy()
    potential = jax_potential(ebm, jax)
    check = check_potential(ebm, potential, jax, args.seed)
    z0 = torch.randn(C, 2, generator=torch.Generator().manual_seed(args.seed))
    rows = {"ours HMC(0.3, 5 steps)": ours_ess(ebm, modes, z0, args, compile=False)}
    if not args.no_compile:
        rows["ours HMC(0.3, 5 steps, compile=True)"] = ours_ess(ebm, modes, z0, args, True)

    def to_x(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ebm.transform(torch.from_numpy(np.array(z))).numpy()

    sampler = blackjax_sampler(potential, jax, blackjax, 0.3, 5, keep=True)
    z_jax = jax.numpy.asarray(z0.numpy())
    n = warmup + draws
    first = timed(
        lambda: jax.block_until_ready(sampler(jax.random.PRNGKey(args.seed + 1), z_jax, n))
    )
    start = time.perf_counter()
    _, _, kept = jax.block_until_ready(sampler(jax.random.PRNGKey(args.seed), z_jax, n))
    seconds = time.perf_counter() - start
    z = np.asarray(kept)[warmup:].transpose(1, 0, 2)
    rows["BlackJAX HMC(0.3, 5 steps)"] = dict(
        mixing_stats(to_x(z), modes, seconds), compile_seconds=first - seconds
    )
    r = numpyro_vectorized(potential, jax, C, warmup, draws, z0.numpy(), args.seed)
    rows["NumPyro NUTS (vectorized)"] = dict(
        mixing_stats(to_x(r["z"]), modes, r["warmup_seconds"] + r["seconds"]),
        compile_seconds=r["compile_seconds"],
        mean_steps=float(r["num_steps"].mean()),
    )
    if not args.quick:
        r = numpyro_mcmc(potential, jax, C, warmup, draws, z0.numpy(), args.seed)
        rows["NumPyro MCMC(chain_method='vectorized').run, compilation included"] = dict(
            mixing_stats(to_x(r["z"]), modes, r["seconds"])
        )
    ref = rows["ours HMC(0.3, 5 steps)"]
    for label, row in rows.items():
        row["ess_mode_per_s_vs_ours"] = row["ess_mode_per_s"] / ref["ess_mode_per_s"]
        print(
            f"  {label}: {row['seconds']:.1f} s, mode ESS {row['ess_mode']:.0f} "
            f"({row['ess_mode_per_s']:,.0f}/s, {row['ess_mode_per_s_vs_ours']:.2f}x ours eager)"
            f", ESS x0 {row['ess_x0']:.0f}, mode R-hat {row['mode_rhat']:.3f}"
        )
    info = {"chains": C, "warmup": warmup, "draws": draws, "fit_seconds": fit_seconds}
    return dict(info, check=check, rows=rows)


# -- report -----------------------------------------------------------------------------------


def fmt_ratio(r: dict[str, float] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} ({r['p25']:.2f}-{r['p75']:.2f})"


def speed_markdown(s: dict[str, Any], args) -> list[str]:
    counts = list(s["chains"])
    loads = ", ".join(
        f"{c}: {s['chains'][c]['load_average_before'][0]:.2f} -> "
        f"{s['chains'][c]['load_average_after'][0]:.2f}"
        for c in counts
    )
    speed_rows = [
        [ROWS[k]]
        + [s["chains"][c]["rows"].get(k, {}).get("chain_steps_per_s", "-") for c in counts]
        for k in ROWS
    ]
    ratio_rows = [
        [f"{a} / {b}"] + [fmt_ratio(s["chains"][c]["ratios"].get(f"{a} / {b}")) for c in counts]
        for a, b in RATIOS
    ]
    nuts = s["numpyro"]
    heads = [f"{c} chains" for c in counts]
    return [
        f"Speed, timed interleaved: {args.rounds} rounds in one process, each running every "
        "row below once (rotating order); samplers do "
        f"{args.iters} iterations x {args.num_steps} leapfrog steps (step size "
        f"{args.step_size}), gradients {args.iters * args.num_steps} evaluations. "
        f"1-minute load average before -> after, per chain count: {loads}.",
        "",
        "Median chain-steps/s over rounds (chains x leapfrog steps, or gradient "
        "evaluations x chains, per second):",
        "",
        markdown_table(["row", *heads], speed_rows),
        "",
        "Per-round speed ratios (> 1: the first is faster): median over rounds and, in "
        "brackets, the middle half (25th-75th percentile):",
        "",
        markdown_table(["ratio", *heads], ratio_rows),
        "",
        f"NumPyro NUTS (vectorized), {nuts['chains']} chains, timed in its own phase (not "
        f"interleaved), {args.nuts_warmup} warm-up + {args.nuts_draws} draws: "
        f"{nuts['chain_steps_per_s']:,.0f} chain-steps/s counting the steps each chain took "
        f"({nuts['mean_steps']:.1f} per draw on average, {nuts['max_steps']} at most; "
        f"{nuts['padded_chain_steps_per_s']:,.0f} counting the longest tree of each draw), "
        f"first call (compile) {nuts['compile_seconds']:.1f} s.",
    ]


def compile_markdown(c: dict[str, Any]) -> list[str]:
    def cell(run: dict[str, Any], key: str) -> str:
        return run["error"][0] if "error" in run else f"{run[key]:.2f}"

    rows = []
    for label in ("ours cold", "ours warm"):
        if label in c:
            name = f"ours HMC(compile=True), Inductor cache {label.split()[1]}"
            rows.append([name, cell(c[label], "first_step_s"), cell(c[label], "second_step_s")])
    for label in [k for k in c if k.startswith("JAX")]:
        for what in ("blackjax", "gradient"):
            name = "BlackJAX HMC" if what == "blackjax" else "JAX jit(vmap(value_and_grad))"
            rows.append([f"{name}, {label[5:]}", cell(c[label], f"{what}_first_call_s"),
                         cell(c[label], f"{what}_second_call_s")])  # fmt: skip
    return [
        f"First calls (compilation) at {c['chains']} chains, each in a fresh process; cold = "
        "empty cache folder (`TORCHINDUCTOR_CACHE_DIR`, `TRITON_CACHE_DIR`, or JAX's "
        "`jax_compilation_cache_dir`), warm = the same folder again. Ours: one HMC "
        "iteration; BlackJAX: the jitted scan of the iterations above; JAX: one batched "
        "gradient. JAX's persistent cache is off by default, so by default every new "
        "process pays the cold time.",
        "",
        markdown_table(["what", "first call (s)", "second call (s)"], rows),
    ]


def markdown(results: dict[str, Any], args) -> str:
    s, c, e = results["speed"], results["compile_times"], results["ess"]
    v = ", ".join(f"{k} {val}" for k, val in results["versions"].items())
    ess_rows = [
        [label, r["seconds"], r["ess_mode"], r["ess_mode_per_s"], r["ess_mode_per_s_vs_ours"],
         r["ess_x0"], fmt_rhat(r["mode_rhat"])]
        for label, r in e["rows"].items()
    ]  # fmt: skip
    return "\n".join(
        [
            f"Peers ({v}); float32, 1 thread for torch and XLA. Model: RealNVP(2, 8, 64) + "
            "MLPEnergy(2, 64), random weights. The JAX potential is written as JAX users "
            "write it (a function of one point, dense layers `h @ W + b` with the weight "
            "transposed once to (in, out), `jax.vmap` over chains) and checked equal to "
            f"torch's on {s['check']['points']} points before timing: max |dU| "
            f"{s['check']['max_abs_diff_potential']:.1e}, max |d grad| "
            f"{s['check']['max_abs_diff_grad']:.1e}.",
            "",
            *speed_markdown(s, args),
            "",
            *(compile_markdown(c) + [""] if c["chains"] else []),
            f"ESS per second on the 8-Gaussians model (RealNVP(2, 6, 32) fitted by maximum "
            f"likelihood, E = 0), latent space, {e['chains']} chains, {e['warmup']} warm-up + "
            f"{e['draws']} draws; wall time includes warm-up, not compilation (compiled and "
            "JAX samplers run once first on another seed); one run each, not interleaved.",
            "",
            markdown_table(
                [
                    "sampler",
                    "wall (s)",
                    "mode ESS",
                    "mode ESS/s",
                    "vs ours eager",
                    "ESS x0",
                    "mode R-hat",
                ],
                ess_rows,
            ),  # fmt: skip
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    jax, blackjax, numpyro = import_jax(args.threads)
    setup(args)
    versions = {
        "jax": jax.__version__,
        "blackjax": blackjax.__version__,
        "numpyro": numpyro.__version__,
    }
    print(
        ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compile_times": {"chains": None} if args.quick else compile_times(args),
    }
    results["speed"] = speed(args, jax, blackjax)
    results["ess"] = ess(args, jax, blackjax)
    write_results("peers", args, results, markdown(results, args))
    return results


if __name__ == "__main__":
    main()
