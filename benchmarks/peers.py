"""Side by side with the JAX peers: BlackJAX HMC and NumPyro NUTS on the same potential.

The potential is the one of overhead.py (RealNVP(2, 8 layers, 64 hidden) and
MLPEnergy(2, 64), random weights from the same seed), re-implemented in pure JAX from the
torch weights: normflows' ``AffineCouplingBlock`` (split the first ceil(d/2) coordinates
z1, ``(shift, log_scale) = net(z1)[:, 0::2], [:, 1::2]``, z2 <- z2 exp(log_scale) +
shift, merge) followed by ``Permute(mode="swap")``, then the MLP energy. The JAX potential
and its gradient are checked against torch's on random points (float32 tolerances) before
anything is timed. All float32, 1024 chains (``--chains``):

1. Speed, chain-steps per second (chains x leapfrog steps / s): ours (eager
   ``HMC(0.1, 10 steps)``; ``HMC(compile=True)`` if it works, else the failure and the
   cache-free workaround), BlackJAX ``hmc`` (``jax.vmap`` over chains of ``step``, the
   iterations in a jitted ``lax.scan``, same step size and 10 leapfrog steps), NumPyro
   ``NUTS(potential_fn=...)`` with ``chain_method="vectorized"`` (leapfrog steps actually
   taken by each chain, from its ``num_steps`` field), and the raw batched gradient of each
   framework (torch ``value_and_grad``, ``jit(vmap(value_and_grad))``). Every ratio is
   against ours, eager, in the same run.
2. ESS per second on the 8-Gaussians model of mixing.py (RealNVP(2, 6, 32) fitted by
   maximum likelihood, E = 0), latent space: ours and BlackJAX with the same fixed
   HMC(0.3, 5 steps), NumPyro NUTS vectorized with its own adaptation; mode-indicator and
   x[0] bulk ESS as in mixing.py. JAX times exclude compilation (the jitted sampler is run
   once on another key first; compile time is reported on its own).

Threads: ``torch.set_num_threads(1)`` and, set before jax is imported,
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.

Needs jax, blackjax and numpyro: ``pip install -e '.[bench]'``.

    python benchmarks/peers.py            # ~2 minutes
    python benchmarks/peers.py --quick    # ~25 seconds, smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import normflows as nf
import numpy as np
import torch
from _common import (
    base_parser,
    ebm_modules,
    ess_bulk,
    fitted_eight_gaussians,
    fmt_rhat,
    markdown_table,
    median,
    mode_indicator_ess,
    random_ebm,
    setup,
    write_results,
)
from torch import Tensor, nn

from pyro_flowebm import FlowEBM
from pyro_flowebm.diagnostics import mixing_summary, to_inference_data
from pyro_flowebm.infer import HMC, run_chains, value_and_grad

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def import_jax(threads: int):
    """Import jax, blackjax and numpyro, with XLA on one thread; a clear error if missing."""
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    try:
        import blackjax
        import jax
        import numpyro
    except ImportError as exc:
        sys.exit(
            f"benchmarks/peers.py needs jax, blackjax and numpyro ({exc.name} is missing); "
            "install them with: pip install -e '.[bench]'"
        )
    return jax, blackjax, numpyro


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument("--chains", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=10, help="HMC iterations per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=10, help="leapfrog steps (speed)")
    parser.add_argument("--step-size", type=float, default=0.1, help="step size (speed)")
    parser.add_argument("--nuts-warmup", type=int, default=100, help="NumPyro NUTS (speed)")
    parser.add_argument("--nuts-draws", type=int, default=50, help="NumPyro NUTS (speed)")
    parser.add_argument("--fit-steps", type=int, default=1500, help="8 Gaussians backbone")
    parser.add_argument("--ess-warmup", type=int, default=100, help="ESS part: warm-up")
    parser.add_argument("--ess-draws", type=int, default=300, help="ESS part: draws per chain")
    parser.add_argument("--no-compile", action="store_true", help="skip our compiled path")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.iters, args.repeats = 256, 3, 2
        args.nuts_warmup, args.nuts_draws, args.fit_steps = 20, 10, 300
        args.ess_warmup, args.ess_draws, args.no_compile = 30, 60, True
    return args


# -- the potential in JAX --------------------------------------------------------------------


def _mlp_spec(net: nn.Module, prefix: str, state: dict[str, Tensor]) -> list[tuple]:
    """(kind, weight, bias) for an nn.Sequential of Linear / Tanh / SiLU, from a state_dict."""
    spec: list[tuple] = []
    for name, layer in net.named_children():
        if isinstance(layer, nn.Linear):
            w = state[f"{prefix}{name}.weight"].detach().cpu().numpy()
            b = state[f"{prefix}{name}.bias"].detach().cpu().numpy()
            spec.append(("linear", w, b))
        elif isinstance(layer, nn.Tanh | nn.SiLU):
            spec.append((type(layer).__name__.lower(), None, None))
        else:
            raise TypeError(f"expected Linear, Tanh or SiLU layers, got {type(layer).__name__}")
    return spec


def flow_spec(transform: nn.Module) -> list[tuple]:
    """The RealNVP preset's layers, read from the transform's state_dict."""
    state = transform.state_dict()
    spec: list[tuple] = []
    for i, layer in enumerate(transform.layers):
        if isinstance(layer, nf.flows.AffineCouplingBlock):
            split, coupling, merge = layer.flows
            if not (
                split.mode == merge.mode == "channel"
                and coupling.scale
                and coupling.scale_map == "exp"
            ):
                raise TypeError(f"layer {i}: expected an exp-scale coupling with channel split")
            net = coupling.param_map
            spec.append(("coupling", _mlp_spec(net, f"layers.{i}.flows.1.param_map.", state)))
        elif isinstance(layer, nf.flows.Permute) and layer.mode == "swap":
            spec.append(("swap", None))
        else:
            raise TypeError(f"layer {i}: no JAX version of {type(layer).__name__}")
    return spec


def jax_potential(ebm: FlowEBM, jax):
    """U(z) = |z|^2 / 2 + E(g(z)) for one point z of shape (d,), in JAX."""
    jnp = jax.numpy
    transform, energy = ebm_modules(ebm)
    flow = [
        (
            kind,
            [
                (k, None if w is None else jnp.asarray(w), None if b is None else jnp.asarray(b))
                for k, w, b in mlp
            ]
            if mlp is not None
            else None,
        )  # fmt: skip
        for kind, mlp in flow_spec(transform)
    ]
    energy_mlp = [
        (k, None if w is None else jnp.asarray(w), None if b is None else jnp.asarray(b))
        for k, w, b in _mlp_spec(energy.net, "net.", energy.state_dict())
    ]
    activation = {"tanh": jnp.tanh, "silu": jax.nn.silu}

    def mlp(spec, h):
        for kind, w, b in spec:
            h = w @ h + b if kind == "linear" else activation[kind](h)
        return h

    def g(z):
        d = z.shape[-1]
        for kind, net in flow:
            if kind == "coupling":
                d1 = -(-d // 2)  # torch.chunk(2): the first chunk has ceil(d / 2)
                z1, z2 = z[:d1], z[d1:]
                param = mlp(net, z1)
                shift, log_scale = param[0::2], param[1::2]
                z = jnp.concatenate([z1, z2 * jnp.exp(log_scale) + shift])
            else:  # Permute(mode="swap"): the last d - d // 2 coordinates first
                z = jnp.concatenate([z[d // 2 :], z[: d // 2]])
        return z

    def potential(z):
        return 0.5 * jnp.sum(z**2) + mlp(energy_mlp, g(z))[0]

    return potential


def check_potential(ebm: FlowEBM, potential, jax, seed: int, n: int = 512) -> dict[str, float]:
    """Assert that the JAX potential and gradient equal torch's on random points."""
    q = 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))
    u_torch, g_torch = value_and_grad(ebm.chain_potential, q)
    u_jax, g_jax = jax.jit(jax.vmap(jax.value_and_grad(potential)))(jax.numpy.asarray(q.numpy()))
    u_jax, g_jax = np.asarray(u_jax), np.asarray(g_jax)
    np.testing.assert_allclose(u_jax, u_torch.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g_jax, g_torch.numpy(), rtol=1e-3, atol=1e-4)
    out = {
        "max_abs_diff_potential": float(np.abs(u_jax - u_torch.numpy()).max()),
        "max_abs_diff_grad": float(np.abs(g_jax - g_torch.numpy()).max()),
        "points": n,
    }
    print(
        f"JAX potential = torch potential on {n} points: max |dU| "
        f"{out['max_abs_diff_potential']:.2e}, max |d grad U| {out['max_abs_diff_grad']:.2e}"
    )
    return out


# -- samplers ---------------------------------------------------------------------------------


def blackjax_sampler(potential, jax, blackjax, step_size: float, num_steps: int, keep: bool):
    """A jitted function (key, positions, n) -> (final positions, acceptance, draws)."""
    jnp = jax.numpy
    kernel = blackjax.hmc(
        lambda z: -potential(z),
        step_size=step_size,
        inverse_mass_matrix=jnp.ones(2),
        num_integration_steps=num_steps,
    )

    def run(key, positions, n):
        states = jax.vmap(kernel.init)(positions)
        chains = positions.shape[0]

        def one(states, key):
            states, info = jax.vmap(kernel.step)(jax.random.split(key, chains), states)
            kept = states.position if keep else None
            return states, (info.acceptance_rate.mean(), kept)

        states, (accept, draws) = jax.lax.scan(one, states, jax.random.split(key, n))
        return states.position, accept.mean(), draws

    return jax.jit(run, static_argnums=2)


def numpyro_vectorized(
    potential, jax, chains: int, warmup: int, draws: int, init: np.ndarray, seed: int
) -> dict[str, Any]:
    """NumPyro NUTS over all chains at once, compiled once.

    ``MCMC(chain_method="vectorized")`` runs ``vmap(NUTS.sample)`` in a jitted loop but
    compiles that loop again at every ``run`` call (about 3 s at 256 chains here); this
    runs the same vmapped ``NUTS.sample`` in a ``lax.scan`` of ``chunk`` iterations, jitted
    once, so that warm-up and sampling are timed without compilation.
    """
    from numpyro.infer import NUTS

    chunk = math.gcd(warmup, draws) if warmup > 0 else draws
    while chunk > 50 and chunk % 2 == 0:
        chunk //= 2
    kernel = NUTS(potential_fn=potential)
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    state = kernel.init(keys, warmup, init_params=jax.numpy.asarray(init))

    def body(s, _):
        s = kernel.sample(s, (), {})
        return s, (s.z, s.num_steps)

    run = jax.jit(lambda s: jax.lax.scan(body, s, None, length=chunk))
    start = time.perf_counter()
    jax.block_until_ready(run(state))  # compiles; the result is thrown away
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(warmup // chunk):
        state, _ = run(state)
    jax.block_until_ready(state)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    kept = []
    for _ in range(draws // chunk):
        state, out = run(state)
        kept.append(out)
    jax.block_until_ready(kept)
    seconds = time.perf_counter() - start
    z = np.concatenate([np.asarray(k[0]) for k in kept]).swapaxes(0, 1)
    steps = np.concatenate([np.asarray(k[1]) for k in kept]).swapaxes(0, 1)
    return {
        "compile_seconds": compile_seconds,
        "warmup_seconds": warmup_seconds,
        "seconds": seconds,
        "z": z,
        "num_steps": steps,
        "step_size": float(np.mean(np.asarray(state.adapt_state.step_size))),
    }


def numpyro_mcmc(
    potential, jax, chains: int, warmup: int, draws: int, init: np.ndarray, seed: int
) -> dict[str, Any]:
    """``MCMC(NUTS(potential_fn), chain_method="vectorized").run``, end to end."""
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(potential_fn=potential),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=jax.numpy.asarray(init))
    z = np.asarray(jax.block_until_ready(mcmc.get_samples(group_by_chain=True)))
    return {"seconds": time.perf_counter() - start, "z": z}


# -- 1. speed ---------------------------------------------------------------------------------


def timed_repeats(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def speed(args: argparse.Namespace, jax, blackjax) -> dict[str, Any]:
    jnp = jax.numpy
    C, L, n, eps = args.chains, args.num_steps, args.iters, args.step_size
    ebm = random_ebm(args.seed, torch.float32)
    potential = jax_potential(ebm, jax)
    check = check_potential(ebm, potential, jax, args.seed)
    q = torch.randn(C, 2)
    q_jax = jnp.asarray(q.numpy())
    rows: dict[str, dict[str, Any]] = {}
    chain_steps = C * n * L

    print(f"\nspeed at {C} chains, {n} iterations x {L} leapfrog steps, step size {eps}")
    # Fixed parameters and no step-size jitter: BlackJAX's HMC, written as its users write it.
    kernel = HMC(eps, L, step_size_jitter=0.0)
    ours_potential, params = ebm.chain_potential, kernel.init_params(q)
    holder = {"state": kernel.init(q, ours_potential)}

    def ours() -> None:
        state = holder["state"]
        for _ in range(n):
            state, _ = kernel.step(state, ours_potential, params)
        holder["state"] = state

    def torch_grads() -> None:
        for _ in range(n * L):
            value_and_grad(ebm.chain_potential, q)

    # Interleave ours with the torch gradients so that both see the same machine load.
    times_ours, times_grad = [], []
    ours(), torch_grads()
    for _ in range(args.repeats):
        for fn, times in ((ours, times_ours), (torch_grads, times_grad)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    t_ours = median(times_ours)
    rows["ours eager HMC"] = {"chain_steps_per_s": chain_steps / t_ours, "seconds": t_ours}
    rows["torch value_and_grad (reference)"] = {
        "chain_steps_per_s": chain_steps / median(times_grad),
        "seconds": median(times_grad),
    }
    print(f"  ours eager: {chain_steps / t_ours:,.0f} chain-steps/s")

    if not args.no_compile:
        rows.update(ours_compiled(ebm, q, args, chain_steps, eps, L, n))

    grad_fn = jax.jit(jax.vmap(jax.value_and_grad(potential)))
    t = median(timed_repeats(lambda: jax.block_until_ready(grad_fn(q_jax)), args.repeats * 10))
    rows["JAX jit(vmap(value_and_grad)) (reference)"] = {
        "chain_steps_per_s": C / t,
        "seconds": t * n * L,
    }
    print(f"  JAX gradients: {C / t:,.0f} chain-evals/s")

    sampler = blackjax_sampler(potential, jax, blackjax, eps, L, keep=False)
    key = jax.random.PRNGKey(args.seed)
    start = time.perf_counter()
    jax.block_until_ready(sampler(key, q_jax, n))
    compile_seconds = time.perf_counter() - start
    times = timed_repeats(lambda: jax.block_until_ready(sampler(key, q_jax, n)), args.repeats)
    _, accept, _ = sampler(key, q_jax, n)
    rows["BlackJAX HMC (vmap, scan, jit)"] = {
        "chain_steps_per_s": chain_steps / median(times),
        "seconds": median(times),
        "compile_seconds": compile_seconds,
        "accept_rate": float(accept),
    }
    print(
        f"  BlackJAX HMC: {chain_steps / median(times):,.0f} chain-steps/s "
        f"(first call {compile_seconds:.1f} s)"
    )

    r = numpyro_vectorized(
        potential, jax, C, args.nuts_warmup, args.nuts_draws, q.numpy(), args.seed
    )
    taken = int(r["num_steps"].sum())
    rows["NumPyro NUTS (vectorized)"] = {
        "chain_steps_per_s": taken / r["seconds"],
        "seconds": r["seconds"],
        "compile_seconds": r["compile_seconds"],
        "warmup_seconds": r["warmup_seconds"],
        "mean_steps": float(r["num_steps"].mean()),
        "max_steps": int(r["num_steps"].max()),
        "step_size": r["step_size"],
        # vmapped NUTS runs every chain until the longest tree of the iteration is done
        "padded_chain_steps_per_s": C * float(r["num_steps"].max(0).sum()) / r["seconds"],
    }
    print(
        f"  NumPyro NUTS: {taken / r['seconds']:,.0f} chain-steps/s over "
        f"{args.nuts_draws} draws (mean {r['num_steps'].mean():.1f}, max "
        f"{r['num_steps'].max()} leapfrog steps per draw; "
        f"{rows['NumPyro NUTS (vectorized)']['padded_chain_steps_per_s']:,.0f} counting "
        f"the steps of the longest tree), compile {r['compile_seconds']:.1f} s"
    )
    ref = rows["ours eager HMC"]["chain_steps_per_s"]
    for row in rows.values():
        row["vs_ours_eager"] = row["chain_steps_per_s"] / ref
    return {"chains": C, "check": check, "rows": rows}


def ours_compiled(ebm, q, args, chain_steps, eps, L, n) -> dict[str, dict[str, Any]]:
    """``HMC(compile=True)`` on ``ebm.chain_potential``: its speed, or its failure."""
    label = "ours HMC(compile=True)"
    kernel = HMC(eps, L, step_size_jitter=0.0, compile=True)
    potential, params = ebm.chain_potential, kernel.init_params(q)
    holder = {"state": kernel.init(q, potential)}
    start = time.perf_counter()
    try:
        holder["state"], _ = kernel.step(holder["state"], potential, params)
    except Exception as exc:  # report any compiler failure, whatever its type
        message = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {message[-1] if message else ''}"[:200]
        print(f"  {label}: failed ({error})")
        return {label: {"error": error, "chain_steps_per_s": math.nan, "seconds": math.nan}}
    compile_seconds = time.perf_counter() - start

    def run() -> None:
        s = holder["state"]
        for _ in range(n):
            s, _ = kernel.step(s, potential, params)
        holder["state"] = s

    t = median(timed_repeats(run, args.repeats))
    print(f"  {label}: {chain_steps / t:,.0f} chain-steps/s (first step {compile_seconds:.1f} s)")
    return {
        label: {
            "chain_steps_per_s": chain_steps / t,
            "seconds": t,
            "compile_seconds": compile_seconds,
        }
    }


# -- 2. ESS per second on 8 Gaussians ---------------------------------------------------------


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


def ess(args: argparse.Namespace, jax, blackjax) -> dict[str, Any]:
    jnp = jax.numpy
    C, warmup, draws = args.chains, args.ess_warmup, args.ess_draws
    print(f"\nESS per second on 8 Gaussians, {C} chains, {warmup} warm-up + {draws} draws")
    ebm, _, modes, fit_seconds = fitted_eight_gaussians(args.seed, args.fit_steps)
    modes = modes.numpy()
    potential = jax_potential(ebm, jax)
    check = check_potential(ebm, potential, jax, args.seed)
    z0 = torch.randn(C, 2, generator=torch.Generator().manual_seed(args.seed))
    rows = {}

    start = time.perf_counter()
    idata = run_chains(
        ebm,
        HMC(step_size=0.3, num_steps=5, adapt_step_size=False, step_size_jitter=0.0),
        C,
        draws,
        warmup,
        init=z0,
        seed=args.seed,
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    x = idata.posterior["x"].transpose("chain", "draw", ...).to_numpy()
    rows["ours HMC(0.3, 5 steps)"] = mixing_stats(x, modes, seconds)

    def to_x(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ebm.transform(torch.from_numpy(np.array(z))).numpy()

    sampler = blackjax_sampler(potential, jax, blackjax, 0.3, 5, keep=True)
    z_jax = jnp.asarray(z0.numpy())
    start = time.perf_counter()
    jax.block_until_ready(sampler(jax.random.PRNGKey(args.seed + 1), z_jax, warmup + draws))
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, _, kept = jax.block_until_ready(
        sampler(jax.random.PRNGKey(args.seed), z_jax, warmup + draws)
    )
    seconds = time.perf_counter() - start
    z = np.asarray(kept)[warmup:].transpose(1, 0, 2)
    rows["BlackJAX HMC(0.3, 5 steps)"] = dict(
        mixing_stats(to_x(z), modes, seconds), compile_seconds=compile_seconds - seconds
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
            f"({row['ess_mode_per_s']:,.0f}/s, {row['ess_mode_per_s_vs_ours']:.2f}x ours), "
            f"ESS x0 {row['ess_x0']:.0f}, mode R-hat {row['mode_rhat']:.3f}"
        )
    return {
        "chains": C,
        "warmup": warmup,
        "draws": draws,
        "fit_seconds": fit_seconds,
        "check": check,
        "rows": rows,
    }


# -- report -----------------------------------------------------------------------------------


def markdown(s: dict[str, Any], e: dict[str, Any], versions: dict[str, str], args) -> str:
    speed_rows = []
    for label, r in s["rows"].items():
        note = r.get("error", "")
        if "compile_seconds" in r:
            note = f"first call {r['compile_seconds']:.1f} s"
        if "mean_steps" in r:
            note += f"; {r['mean_steps']:.1f} steps/draw (max {r['max_steps']})"
        speed_rows.append([label, r["chain_steps_per_s"], r["vs_ours_eager"], note])
    ess_rows = [
        [
            label,
            r["seconds"],
            r["ess_mode"],
            r["ess_mode_per_s"],
            r["ess_mode_per_s_vs_ours"],
            r["ess_x0"],
            fmt_rhat(r["mode_rhat"]),
        ]
        for label, r in e["rows"].items()
    ]
    v = ", ".join(f"{k} {val}" for k, val in versions.items())
    return "\n".join(
        [
            f"Peers ({v}); float32, 1 thread for torch and XLA. Speed: RealNVP(2, 8, 64) + "
            f"MLPEnergy(2, 64), random weights, {s['chains']} chains, step size "
            f"{args.step_size}, {args.num_steps} leapfrog steps; chain-steps/s = chains x "
            "leapfrog steps per second (NumPyro: steps its chains actually took); ratios "
            "against ours, eager, in the same run. JAX potential checked against torch: max "
            f"|dU| {s['check']['max_abs_diff_potential']:.1e}, max |d grad| "
            f"{s['check']['max_abs_diff_grad']:.1e}.",
            "",
            markdown_table(["sampler", "chain-steps/s", "vs ours eager", "note"], speed_rows),
            "",
            f"ESS per second on the 8-Gaussians model (RealNVP(2, 6, 32) fitted by maximum "
            f"likelihood, E = 0), latent space, {e['chains']} chains, {e['warmup']} warm-up + "
            f"{e['draws']} draws; wall time includes warm-up, not JAX compilation.",
            "",
            markdown_table(
                [
                    "sampler",
                    "wall (s)",
                    "mode ESS",
                    "mode ESS/s",
                    "vs ours",
                    "ESS x0",
                    "mode R-hat",
                ],  # fmt: skip
                ess_rows,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
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
    s = speed(args, jax, blackjax)
    e = ess(args, jax, blackjax)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results = {
        "settings": settings,
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "speed": s,
        "ess": e,
    }
    write_results("peers", args, results, markdown(s, e, versions, args))
    return results


if __name__ == "__main__":
    main()
