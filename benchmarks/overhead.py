"""Overhead of the vectorized HMC kernel over the gradient evaluations it makes.

The potential is the latent potential ``ebm.chain_potential`` of a FlowEBM built from
``flows.realnvp(2, num_layers=8, hidden=64)`` and ``energy.MLPEnergy(2, 64)``, every
parameter perturbed by N(0, 0.1^2) noise (the presets start as the identity and E = 0).
For each number of chains C the script times N iterations of
``HMC(step_size=0.1, num_steps=10)`` with fixed parameters (``kernel.init`` once, then
``kernel.step(state, potential, params)`` N times) and, interleaved with it in the same
run, the reference: the same number of batched gradient evaluations, N * num_steps calls of
``value_and_grad(potential, q)`` on a (C, 2) batch. Medians over repeats.

How to read it:

- ``ratio = HMC time / reference time``. 1.0 means the kernel costs exactly its gradient
  evaluations (the leapfrog arithmetic, momenta, Metropolis test and Python overhead are
  free); the goal is <= 1.10 at 1024 chains. Values slightly below 1 are timing noise and
  cache effects.
- ``chain-steps/s`` = chains x leapfrog steps per second of the HMC runs.

The compiled path (``HMC(..., compile=True)``, which runs each leapfrog step through
``torch.compile`` and ``torch.func``) is measured at one size: compile time (the first
step) and the steady-state step time against the eager kernel on the same potential, for
(A) ``ebm.chain_potential`` as it is (trainable parameters), (B) the same with frozen
parameters, (C) a whole 10-step leapfrog trajectory compiled as one function (a
benchmark-local experiment, not a package API) and (D) a standard Gaussian as a control.
Each case records what happened: a compiler failure, or a state that keeps an autograd
graph (both happened before the package's commit 3b1bb34), or the timings. Compile times
are cold: the script points Inductor at a fresh cache folder.

Timings use ``torch.set_num_threads(1)`` unless ``--threads`` says otherwise.

    python benchmarks/overhead.py            # ~4 minutes
    python benchmarks/overhead.py --quick    # ~20 seconds, smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import (
    base_parser,
    freeze,
    hmc_runner,
    markdown_table,
    median,
    random_ebm,
    setup,
    timed,
    write_results,
)
from torch import Tensor

from pyro_flowebm import FlowEBM
from pyro_flowebm.infer import HMC, value_and_grad
from pyro_flowebm.infer.integrators import functional_leapfrog_step

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--chains", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=list(DTYPES))
    parser.add_argument("--iters", type=int, default=10, help="HMC iterations per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--num-steps", type=int, default=10, help="leapfrog steps")
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--compile-chains", type=int, default=1024)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled path")
    parser.add_argument(
        "--no-trajectory", action="store_true", help="skip case C (about 45 s of compiling)"
    )
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="reuse torch.compile's on-disk cache (default: a fresh one, so compile times "
        "are cold)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.dtypes, args.iters, args.repeats = [256, 1024], ["float32"], 3, 3
    return args


# -- eager kernel against its gradient evaluations --------------------------------------------


def time_interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every run ``repeats`` times, rotating their order each repeat."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name]))
    return times


def grad_runner(potential: Callable[[Tensor], Tensor], q: Tensor, calls: int):
    def run() -> None:
        for _ in range(calls):
            value_and_grad(potential, q)

    return run


def eager_overhead(ebm: FlowEBM, chains: int, args: argparse.Namespace) -> dict[str, Any]:
    dtype = ebm.base_dist.mean.dtype
    q = torch.randn(chains, 2, dtype=dtype)
    kernel = HMC(args.step_size, args.num_steps)
    hmc, holder = hmc_runner(kernel, ebm.chain_potential, q, args.iters)
    grads = grad_runner(ebm.chain_potential, q, args.iters * args.num_steps)
    times = time_interleaved({"hmc": hmc, "grad": grads}, args.repeats)
    t_hmc, t_grad = median(times["hmc"]), median(times["grad"])
    per_repeat = [h / g for h, g in zip(times["hmc"], times["grad"], strict=True)]
    leapfrogs = chains * args.iters * args.num_steps
    return {
        "chains": chains,
        "dtype": str(dtype).removeprefix("torch."),
        "hmc_seconds": t_hmc,
        "grad_seconds": t_grad,
        "ratio": t_hmc / t_grad,
        "ratio_min": min(per_repeat),
        "ratio_max": max(per_repeat),
        "chain_steps_per_s": leapfrogs / t_hmc,
        "grad_chain_evals_per_s": leapfrogs / t_grad,
        "accept_rate": float(holder["info"].accept_prob.mean()),
        "hmc_times": times["hmc"],
        "grad_times": times["grad"],
    }


# -- the compiled path ------------------------------------------------------------------------


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def error_line(exc: BaseException) -> str:
    """The most telling line of a (torch.compile) exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "Error" in line or "NotImplemented" in line]
    return f"{type(exc).__name__}: {(telling or lines or [''])[-1]}"[:300]


def compare_to_eager(
    run_compiled: Callable[[], None],
    potential: Callable[[Tensor], Tensor],
    q: Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Time ``run_compiled`` (``args.iters`` HMC iterations' worth of leapfrog steps)
    against eager HMC and plain batched gradients, interleaved, and return the ratios."""
    eager = HMC(args.step_size, args.num_steps)
    run_eager, _ = hmc_runner(eager, potential, q, args.iters)
    run_grads = grad_runner(potential, q, args.iters * args.num_steps)
    times = time_interleaved(
        {"compiled": run_compiled, "eager": run_eager, "grad": run_grads}, args.repeats
    )
    t = {k: median(v) for k, v in times.items()}
    return {
        "status": "ok",
        "compiled_step_seconds": t["compiled"] / args.iters,
        "eager_step_seconds": t["eager"] / args.iters,
        "compiled_over_eager": t["compiled"] / t["eager"],
        "compiled_over_grad": t["compiled"] / t["grad"],
        "eager_over_grad": t["eager"] / t["grad"],
        "chain_steps_per_s": q.shape[0] * args.iters * args.num_steps / t["compiled"],
    }


def compiled_case(
    label: str,
    potential: Callable[[Tensor], Tensor],
    q: Tensor,
    args: argparse.Namespace,
    probe_steps: int = 4,
) -> dict[str, Any]:
    """Compile time, then either the failure, a growing autograd graph, or steady state."""
    torch._dynamo.reset()
    graphs_before = unique_graphs()
    out: dict[str, Any] = {"case": label}
    print(f"  {label}: compiling ...", flush=True)
    kernel = HMC(args.step_size, args.num_steps, compile=True)
    state, params = kernel.init(q, potential), kernel.init_params(q)
    start = time.perf_counter()
    try:
        state, info = kernel.step(state, potential, params)
    except Exception as exc:  # report any compiler failure, whatever its type
        out.update(
            status="error", error=error_line(exc), seconds_to_fail=time.perf_counter() - start
        )
        print(f"    failed after {out['seconds_to_fail']:.1f} s: {out['error']}")
        return out
    out["compile_seconds"] = time.perf_counter() - start
    step_seconds = []
    for _ in range(probe_steps):
        start = time.perf_counter()
        state, info = kernel.step(state, potential, params)
        step_seconds.append(time.perf_counter() - start)
    out["probe_step_seconds"] = step_seconds
    out["state_requires_grad"] = bool(state.position.requires_grad or state.grad.requires_grad)
    out["graphs_compiled"] = unique_graphs() - graphs_before
    if out["state_requires_grad"]:
        # The state carries an autograd graph to the parameters: every step adds to it.
        out["status"] = "state keeps an autograd graph (grows every step)"
        print(f"    {out['status']}; step seconds {[round(s, 3) for s in step_seconds]}")
        return out

    run_compiled, holder = hmc_runner(kernel, potential, q, args.iters)
    out.update(
        compare_to_eager(run_compiled, potential, q, args),
        graphs_compiled=unique_graphs() - graphs_before,
        accept_rate=float(holder["info"].accept_prob.mean()),
    )
    print(
        f"    compile {out['compile_seconds']:.1f} s, step {1e3 * out['compiled_step_seconds']:.1f}"
        f" ms compiled vs {1e3 * out['eager_step_seconds']:.1f} ms eager "
        f"(compiled/eager {out['compiled_over_eager']:.2f}, compiled/grads "
        f"{out['compiled_over_grad']:.2f}), {out['graphs_compiled']} graph(s)"
    )
    return out


def trajectory_case(
    potential: Callable[[Tensor], Tensor], q: Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Case C: the whole leapfrog trajectory as one compiled function (no Metropolis step)."""
    torch._dynamo.reset()
    num_steps, eps = args.num_steps, args.step_size

    inv_mass = torch.ones(q.shape[1:], dtype=q.dtype)

    def trajectory(q: Tensor, p: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u = g.new_zeros(q.shape[0])
        for _ in range(num_steps):
            q, p, u, g = functional_leapfrog_step(potential, q, p, g, eps, inv_mass)
        return q, p, u, g

    print("  C whole trajectory compiled: compiling ...", flush=True)
    compiled = torch.compile(trajectory)
    _, g = value_and_grad(potential, q)
    p = torch.randn_like(q)
    out: dict[str, Any] = {"case": "C whole trajectory compiled, frozen parameters"}
    start = time.perf_counter()
    try:
        result = compiled(q, p, g)
    except Exception as exc:  # report any compiler failure, whatever its type
        out.update(
            status="error", error=error_line(exc), seconds_to_fail=time.perf_counter() - start
        )
        print(f"    failed: {out['error']}")
        return out
    out["compile_seconds"] = time.perf_counter() - start
    reference = trajectory(q, p, g)
    out["max_abs_diff_vs_eager"] = max(
        float((a - b).abs().max()) for a, b in zip(result, reference, strict=True)
    )

    def run_compiled() -> None:
        for _ in range(args.iters):
            compiled(q, p, g)

    out.update(compare_to_eager(run_compiled, potential, q, args))
    print(
        f"    compile {out['compile_seconds']:.1f} s, trajectory "
        f"{1e3 * out['compiled_step_seconds']:.1f} ms vs eager HMC step "
        f"{1e3 * out['eager_step_seconds']:.1f} ms (ratio {out['compiled_over_eager']:.2f})"
    )
    return out


def compiled_path(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"\ncompiled path at {args.compile_chains} chains, float32")
    if args.warm_compile_cache:
        return compiled_cases(args)
    # Inductor caches compiled graphs on disk across processes: a fresh folder makes the
    # compile times those of a first run.
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(
        prefix="flowebm_inductor_", ignore_cleanup_errors=True
    ) as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            return compiled_cases(args)
        finally:
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def compiled_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    chains = args.compile_chains
    cases = []
    if not args.quick:
        ebm = random_ebm(args.seed, torch.float32)
        q = torch.randn(chains, 2)
        cases.append(compiled_case("A chain_potential", ebm.chain_potential, q, args))
        freeze(ebm)
        cases.append(
            compiled_case("B chain_potential, frozen parameters", ebm.chain_potential, q, args)
        )
        if not args.no_trajectory:
            cases.append(trajectory_case(ebm.chain_potential, q, args))
    q = torch.randn(chains, 2)
    cases.append(compiled_case("D standard Gaussian", lambda z: 0.5 * z.pow(2).sum(-1), q, args))
    return cases


# -- report -----------------------------------------------------------------------------------


def markdown(eager: list[dict[str, Any]], compiled: list[dict[str, Any]], args) -> str:
    lines = [
        f"HMC overhead: RealNVP(2, 8 layers, 64 hidden) + MLPEnergy(2, 64), random weights; "
        f"{args.iters} iterations x {args.num_steps} leapfrog steps, step size "
        f"{args.step_size}, median of {args.repeats} repeats, {torch.get_num_threads()} "
        "torch thread(s). ratio = HMC time / time of the same number of batched gradient "
        "evaluations (goal <= 1.10 at 1024 chains).",
        "",
        markdown_table(
            ["dtype", "chains", "ratio", "ratio range", "chain-steps/s", "HMC step (ms)"],
            [
                [
                    r["dtype"],
                    r["chains"],
                    r["ratio"],
                    f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
                    r["chain_steps_per_s"],
                    1e3 * r["hmc_seconds"] / args.iters,
                ]
                for r in eager
            ],
        ),
    ]
    if compiled:
        rows = []
        for c in compiled:
            if c["status"] == "ok":
                rows.append(
                    [
                        c["case"],
                        "ok",
                        c["compile_seconds"],
                        1e3 * c["compiled_step_seconds"],
                        1e3 * c["eager_step_seconds"],
                        c["compiled_over_eager"],
                        c["compiled_over_grad"],
                    ]
                )
            elif c["status"] == "error":
                rows.append([c["case"], c["error"], math.nan, "", "", "", ""])
            else:
                probe = ", ".join(f"{1e3 * s:.0f}" for s in c["probe_step_seconds"])
                rows.append(
                    [c["case"], f"{c['status']}; steps {probe} ms", c["compile_seconds"]] + [""] * 4
                )
        lines += [
            "",
            f"Compiled path (`HMC(..., compile=True)`), {args.compile_chains} chains, float32. "
            "Step = one HMC iteration of "
            f"{args.num_steps} leapfrog steps; the ratios are medians over interleaved repeats.",
            "",
            markdown_table(
                [
                    "case",
                    "status",
                    "compile (s)",
                    "compiled step (ms)",
                    "eager step (ms)",
                    "compiled / eager",
                    "compiled / grads",
                ],
                rows,
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup(args)
    eager = []
    for name in args.dtypes:
        ebm = random_ebm(args.seed, DTYPES[name])
        for chains in args.chains:
            r = eager_overhead(ebm, chains, args)
            eager.append(r)
            print(
                f"{name:8s} {chains:5d} chains: HMC/grads {r['ratio']:.3f} "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}), "
                f"{r['chain_steps_per_s']:,.0f} chain-steps/s, "
                f"step {1e3 * r['hmc_seconds'] / args.iters:.1f} ms, "
                f"accept {r['accept_rate']:.2f}",
                flush=True,
            )
    compiled = [] if args.no_compile else compiled_path(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out",) and not k.startswith("_")}
    results = {"settings": settings, "eager": eager, "compiled": compiled}
    write_results("overhead", args, results, markdown(eager, compiled, args))
    return results


if __name__ == "__main__":
    main()
