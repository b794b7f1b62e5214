"""Properties at the API boundary, over generated inputs: the shapes, dtypes and identities
of FlowEBM's densities and draws, run_chains' output for any small run, and the refusal
of any invalid count or step size."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pyro_flowebm import FlowEBM, flow_backbone, flows
from pyro_flowebm.infer import HMC, MALA, ULA, Cycle, IndependenceMH, run_chains
from pyro_flowebm.nn import MLPEnergy

# Deterministic (derandomized, no example database) and bounded: the file runs in seconds.
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def _model() -> FlowEBM:
    """A float64 FlowEBM with a non-zero energy, built once (collection runs in float32:
    the dtype is explicit) on a generator of its own."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transform = flows.realnvp(2, num_layers=2, hidden=8).double()
        energy = MLPEnergy(2, hidden=8).double()
        with torch.no_grad():
            for p in [*transform.parameters(), *energy.parameters()]:
                p.add_(0.3 * torch.randn_like(p))
    return FlowEBM(flow_backbone(transform, (2,)), energy)


EBM = _model()
KERNELS = {
    "hmc": lambda: HMC(0.3, 2),
    "mala": lambda: MALA(0.3),
    "ula": lambda: ULA(0.1),
    "imh": IndependenceMH,
    "cycle": lambda: Cycle([HMC(0.3, 2), IndependenceMH()]),
}

batch_shapes = st.lists(st.integers(1, 5), max_size=3).map(tuple)
points = batch_shapes.flatmap(
    lambda shape: arrays(np.float64, (*shape, 2), elements=st.floats(-4.0, 4.0, width=64))
).map(torch.from_numpy)


@FAST
@given(x=points)
def test_densities_have_the_batch_shape_and_the_identities_hold(x):
    batch = x.shape[:-1]
    log_p, energy = EBM.log_prob(x), EBM.energy_of(x)
    for value in (log_p, energy, EBM.latent_potential(x)):
        assert value.shape == batch and value.dtype == torch.float64
        assert torch.isfinite(value).all()
    torch.testing.assert_close(log_p, EBM.backbone.log_prob(x) - energy)
    # Flattening the batch for the energy network and restoring it is the identity.
    torch.testing.assert_close(energy.reshape(-1), EBM.energy_of(x.reshape(-1, 2)))
    z = x
    half_sq = 0.5 * z.pow(2).sum(-1)
    torch.testing.assert_close(EBM.latent_potential(z), half_sq + EBM.energy_of(EBM.transform(z)))


@FAST
@given(sample_shape=batch_shapes, batch_shape=st.lists(st.integers(1, 3), max_size=1))
def test_draws_have_the_sample_and_batch_shape(sample_shape, batch_shape):
    ebm = EBM.expand(torch.Size(batch_shape))
    x = ebm.sample(torch.Size(sample_shape))
    assert x.shape == (*sample_shape, *batch_shape, 2) and x.dtype == torch.float64
    assert torch.isfinite(x).all() and not x.requires_grad
    assert ebm.log_prob(x).shape == (*sample_shape, *batch_shape)


@settings(FAST, max_examples=20)
@given(
    kernel=st.sampled_from(sorted(KERNELS)),
    num_chains=st.integers(1, 4),
    num_samples=st.integers(1, 4),
    thin=st.integers(1, 3),
    warmup_steps=st.integers(0, 3),
)
def test_run_chains_returns_every_kept_draw(kernel, num_chains, num_samples, thin, warmup_steps):
    idata = run_chains(
        EBM, KERNELS[kernel](), num_chains, num_samples, warmup_steps,
        thin=thin, seed=0, progress_bar=False,
    )  # fmt: skip
    x, z = (torch.as_tensor(idata.posterior[k].values) for k in ("x", "z"))
    assert x.shape == z.shape == (num_chains, num_samples, 2)
    assert x.dtype == torch.float64 and torch.isfinite(x).all()
    torch.testing.assert_close(x, EBM.transform(z).detach())
    for name in ("acceptance_rate", "step_size", "diverging", "energy", "lp", "n_steps"):
        assert idata.sample_stats[name].shape == (num_chains, num_samples)
    attrs = idata.posterior.attrs
    assert (attrs["num_samples"], attrs["thin"], attrs["warmup_steps"]) == (
        num_samples,
        thin,
        warmup_steps,
    )


def walled(q: torch.Tensor) -> torch.Tensor:
    """A standard normal cut by a wall at q_0 = 1 beyond which the potential is NaN."""
    u = 0.5 * q.pow(2).sum(-1)
    return torch.where(q[:, 0] < 1.0, u, torch.full_like(u, math.nan))


@settings(FAST, max_examples=15)
@given(kernel=st.sampled_from(sorted(KERNELS)), seed=st.integers(0, 2**16))
def test_chains_never_step_into_nan(kernel, seed):
    init = torch.zeros(8, 2)
    idata = run_chains(
        walled, KERNELS[kernel](), 8, 10, 5, init=init, seed=seed, progress_bar=False
    )
    x = torch.as_tensor(idata.posterior["x"].values)
    assert torch.isfinite(x).all() and (x[..., 0] < 1.0).all()


COUNTS = {"num_chains": 1, "num_samples": 1, "warmup_steps": 0, "thin": 1}
invalid_counts = st.one_of(
    st.sampled_from(sorted(COUNTS)).flatmap(
        lambda name: st.tuples(st.just(name), st.integers(-(2**31), COUNTS[name] - 1))
    ),
    st.tuples(st.sampled_from(sorted(COUNTS)), st.one_of(st.booleans(), st.floats())),
)


@FAST
@given(bad=invalid_counts)
def test_any_invalid_count_is_refused_by_name(bad):
    name, value = bad
    kwargs = {"num_chains": 2, "num_samples": 2, "warmup_steps": 0, "thin": 1} | {name: value}
    with pytest.raises((ValueError, TypeError), match=name) as caught:
        run_chains(EBM, HMC(), progress_bar=False, **kwargs)
    expected = ValueError if type(value) is int else TypeError
    assert caught.type is expected


not_finite_positive = st.floats().filter(lambda v: not (v > 0 and math.isfinite(v)))


@FAST
@given(kernel=st.sampled_from([HMC, MALA, ULA]), value=not_finite_positive)
def test_any_step_size_that_is_not_finite_positive_is_refused(kernel, value):
    with pytest.raises(ValueError, match=re.escape(f"expected step_size > 0, got {value}")):
        kernel(step_size=value)
    k = kernel(step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        k.step_size = value
    assert k.step_size == 0.1


@FAST
@given(
    kernel=st.sampled_from([HMC, MALA, ULA]),
    value=st.floats(min_value=1e-6, max_value=1e6, exclude_min=False),
)
def test_any_finite_positive_step_size_is_kept(kernel, value):
    k = kernel(step_size=value)
    assert k.step_size == value
    params = k.init_params(torch.zeros(3, 2))
    assert torch.isfinite(params.step_size).all() and (params.step_size > 0).all()
