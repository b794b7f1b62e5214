"""Pyro NUTS on a FlowEBM in latent and data space: exactness, output, divergences."""

from __future__ import annotations

import pytest
import torch
from conftest import GaussianCase, assert_moments

from pyro_flowebm import FlowEBM, data_space_nuts, flow_backbone, flows, latent_nuts


@pytest.mark.parametrize("sampler", [latent_nuts, data_space_nuts])
def test_nuts_recovers_the_tilted_gaussian(gaussian_case: GaussianCase, sampler):
    idata = sampler(gaussian_case.ebm, 500, 300, 4, seed=1, progress_bar=False)
    x = torch.as_tensor(idata.posterior["x"].values)
    assert x.shape == (4, 500, 2)
    assert_moments(x, gaussian_case.mean, gaussian_case.cov)
    assert int(idata.sample_stats["diverging"].sum()) == 0


def test_output_groups_dims_stats_and_attrs(gaussian_case: GaussianCase):
    idata = latent_nuts(gaussian_case.ebm, 30, 20, 2, seed=3, progress_bar=False)
    post, stats = idata.posterior, idata.sample_stats
    assert post["x"].dims == ("chain", "draw", "x_dim_0")
    assert post["z"].dims == ("chain", "draw", "z_dim_0")
    # x is g(z), draw by draw.
    z = torch.as_tensor(post["z"].values)
    torch.testing.assert_close(
        torch.as_tensor(post["x"].values), gaussian_case.transform(z).detach()
    )
    for name in ("diverging", "acceptance_rate", "step_size", "lp"):
        assert stats[name].dims == ("chain", "draw"), name
    accept = stats["acceptance_rate"].values
    assert ((accept >= 0) & (accept <= 1)).all()
    assert (stats["step_size"].values > 0).all()
    # Step sizes are fixed after warm-up: one value per chain.
    assert (stats["step_size"].values == stats["step_size"].values[:, :1]).all()
    torch.testing.assert_close(
        torch.as_tensor(stats["lp"].values), gaussian_case.ebm.latent_log_prob(z).detach()
    )
    attrs = post.attrs
    assert attrs["space"] == "latent" and attrs["seed"] == 3
    assert attrs["num_samples"] == 30 and attrs["warmup_steps"] == 20
    assert attrs["inference_library"] == "pyro"


def test_per_draw_acceptance_matches_pyro_mean(gaussian_case: GaussianCase):
    from pyro.infer import MCMC, NUTS

    idata = latent_nuts(gaussian_case.ebm, 50, 30, 1, seed=5, progress_bar=False)
    # The same chain run directly in Pyro reports the running mean we decompose.
    torch.manual_seed(5)
    init = gaussian_case.ebm.base_dist.sample((1,))[0]
    kernel = NUTS(potential_fn=lambda p: gaussian_case.ebm.latent_potential(p["value"]))
    final_mean = []
    mcmc = MCMC(
        kernel,
        50,
        30,
        initial_params={"value": init},
        disable_progbar=True,
        hook_fn=lambda kernel, params, stage, i: final_mean.append(kernel._mean_accept_prob),
    )
    mcmc.run()
    torch.testing.assert_close(
        torch.as_tensor(idata.posterior["z"].values[0]), mcmc.get_samples()["value"]
    )
    assert idata.sample_stats["acceptance_rate"].values.mean() == pytest.approx(
        final_mean[-1], abs=1e-9
    )


def test_seed_reproduces_and_leaves_the_caller_stream_alone(gaussian_case: GaussianCase):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = latent_nuts(gaussian_case.ebm, 20, 10, 2, seed=7, progress_bar=False)
    assert torch.equal(torch.rand(3), expected_next)
    b = latent_nuts(gaussian_case.ebm, 20, 10, 2, seed=7, progress_bar=False)
    assert (a.posterior["z"].values == b.posterior["z"].values).all()
    c = latent_nuts(gaussian_case.ebm, 20, 10, 2, seed=8, progress_bar=False)
    assert not (a.posterior["z"].values == c.posterior["z"].values).all()


def test_non_finite_energy_is_a_counted_divergence_not_a_nan():
    # E is NaN on the half-plane x0 > 0.5 and -inf on x1 > 1: both must be rejected.
    def energy(x):
        e = torch.zeros(x.shape[:-1], dtype=x.dtype)
        e = torch.where(x[..., 0] > 0.5, torch.full_like(e, float("nan")), e)
        return torch.where(x[..., 1] > 1.0, torch.full_like(e, float("-inf")), e)

    ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), energy)
    init = torch.tensor([[-1.0, 0.0], [-0.5, -0.5]])
    for sampler in (latent_nuts, data_space_nuts):
        idata = sampler(ebm, 60, 40, 2, init=init, seed=0, progress_bar=False)
        x = idata.posterior["x"].values
        assert torch.isfinite(torch.as_tensor(x)).all()
        assert (x[..., 0] <= 0.5).all() and (x[..., 1] <= 1.0).all()
        assert int(idata.sample_stats["diverging"].sum()) > 0
        assert torch.isfinite(torch.as_tensor(idata.sample_stats["lp"].values)).all()


def test_bad_arguments_are_refused(gaussian_case: GaussianCase):
    ebm = gaussian_case.ebm
    with pytest.raises(ValueError, match=r"expected init of shape \(3, 2\), got \(2, 2\)"):
        latent_nuts(ebm, 5, 5, 3, init=torch.zeros(2, 2), progress_bar=False)
    with pytest.raises(ValueError, match="expected finite init"):
        latent_nuts(ebm, 5, 5, 1, init=torch.full((1, 2), float("nan")), progress_bar=False)
    with pytest.raises(ValueError, match="expected num_samples >= 1, got 0"):
        latent_nuts(ebm, 0, 5, 1, progress_bar=False)
    with pytest.raises(TypeError, match="expected a FlowEBM, got Normal"):
        latent_nuts(torch.distributions.Normal(0.0, 1.0), 5, 5, 1)
    walled = FlowEBM(gaussian_case.backbone, lambda x: torch.full(x.shape[:-1], float("inf")))
    with pytest.raises(ValueError, match="expected a finite potential at the initial point"):
        latent_nuts(walled, 5, 5, 1, progress_bar=False)
