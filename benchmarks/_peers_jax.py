"""The JAX side of peers.py: the potential ported from torch, BlackJAX HMC and NumPyro NUTS.

The potential is written as JAX users write it: a function of one point whose dense
layers are ``h @ W + b`` with ``W`` stored once as the transpose of torch's
``(out, in)`` weight, so that after ``jax.vmap`` XLA sees plain ``(chains, in) @ (in,
out)`` dots. Written in torch's layout (``W @ h + b``) the vmapped gradient carries
transposes and copies of every activation, which made it about 1.6 times slower here.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import normflows as nf
import numpy as np
import torch
from _common import ebm_modules
from torch import Tensor, nn

from pyro_flowebm import FlowEBM
from pyro_flowebm.infer import value_and_grad

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def import_jax(threads: int):
    """Import jax, blackjax and numpyro, with XLA on one thread; a clear error if missing."""
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if XLA_ONE_THREAD not in flags:
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


# -- the potential in JAX --------------------------------------------------------------------


def mlp_spec(net: nn.Module, prefix: str, state: dict[str, Tensor]) -> list[tuple]:
    """(kind, W, b) for an nn.Sequential of Linear / Tanh / SiLU, from a state_dict.

    ``W`` is torch's weight transposed, shape ``(in, out)``: the layer is ``h @ W + b``.
    """
    spec: list[tuple] = []
    for name, layer in net.named_children():
        if isinstance(layer, nn.Linear):
            w = state[f"{prefix}{name}.weight"].detach().cpu().numpy()
            b = state[f"{prefix}{name}.bias"].detach().cpu().numpy()
            spec.append(("linear", np.ascontiguousarray(w.T), b))
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
            spec.append(("coupling", mlp_spec(net, f"layers.{i}.flows.1.param_map.", state)))
        elif isinstance(layer, nf.flows.Permute) and layer.mode == "swap":
            spec.append(("swap", None))
        else:
            raise TypeError(f"layer {i}: no JAX version of {type(layer).__name__}")
    return spec


def jax_potential(ebm: FlowEBM, jax):
    """U(z) = |z|^2 / 2 + E(g(z)) for one point z of shape (d,), in JAX."""
    jnp = jax.numpy
    transform, energy = ebm_modules(ebm)

    def to_jax(spec):
        return [(k, None if w is None else jnp.asarray(w), b if b is None else jnp.asarray(b))
                for k, w, b in spec]  # fmt: skip

    flow = [(kind, None if s is None else to_jax(s)) for kind, s in flow_spec(transform)]
    energy_mlp = to_jax(mlp_spec(energy.net, "net.", energy.state_dict()))
    activation = {"tanh": jnp.tanh, "silu": jax.nn.silu}

    def mlp(spec, h):
        for kind, w, b in spec:
            h = h @ w + b if kind == "linear" else activation[kind](h)
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
