"""FlowEBMReparam: NUTS on a Pyro model with a FlowEBM prior, in the flow's latent space."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z99, GaussianCase, mcse_z_scores
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive

from pyro_flowebm import FlowEBMReparam

SIGMA = 1.5


def make_model(prior):
    def model(y):
        x = pyro.sample("x", prior)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(x, SIGMA).to_event(1), obs=y)

    return model


def test_nuts_through_the_reparam_recovers_the_analytic_posterior(gaussian_case: GaussianCase):
    y = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 0.5]])
    prior_precision = torch.linalg.inv(gaussian_case.cov)
    precision = prior_precision + len(y) / SIGMA**2 * torch.eye(2)
    cov = torch.linalg.inv(precision)
    mean = cov @ (prior_precision @ gaussian_case.mean + y.sum(0) / SIGMA**2)

    reparam = FlowEBMReparam()
    model = poutine.reparam(make_model(gaussian_case.ebm), config={"x": reparam})
    # Four chains one after another: Pyro's num_chains > 1 would fork processes where
    # cores allow, and warn where they do not.
    chains = []
    for _ in range(4):
        mcmc = MCMC(NUTS(model), num_samples=300, warmup_steps=200, disable_progbar=True)
        mcmc.run(y)
        chains.append(mcmc.get_samples())
    assert set(chains[0]) == {"x_latent"}
    latent = {"x_latent": torch.cat([c["x_latent"] for c in chains])}
    x = Predictive(model, posterior_samples=latent, return_sites=["x"])(y)["x"]
    # Predictive adds one dimension per plate level of the model (max_plate_nesting = 1).
    assert x.shape == (1200, 1, 2)
    x = x.squeeze(1)
    torch.testing.assert_close(x, reparam.transform_samples(latent)["x"])
    by_chain = x.reshape(4, 300, 2)
    z = mcse_z_scores(by_chain, mean, cov)
    assert (z["mean"] < Z99).all(), z
    assert (z["variance"] < Z99).all(), z


def test_trace_has_a_latent_site_and_a_deterministic_x(gaussian_case: GaussianCase):
    y = torch.zeros(2, 2)
    model = poutine.reparam(make_model(gaussian_case.ebm), config={"x": FlowEBMReparam()})
    trace = poutine.trace(model).get_trace(y)
    trace.compute_log_prob()
    latent, x = trace.nodes["x_latent"], trace.nodes["x"]
    assert latent["value"].shape == (2,)
    torch.testing.assert_close(
        latent["log_prob"], gaussian_case.ebm.latent_log_prob(latent["value"])
    )
    torch.testing.assert_close(x["value"], gaussian_case.transform(latent["value"]))
    assert x["is_observed"] and (x["log_prob"] == 0).all()
    # The site's log density reuses x = g(z): one flow pass per model evaluation at a given
    # z (as MCMC evaluates it; drawing z from the prior is a pass of its own).
    calls = []
    layer = gaussian_case.transform.layers[0]
    handle = layer.register_forward_hook(lambda *args: calls.append(1))
    at_z = poutine.condition(model, data={"x_latent": latent["value"]})
    poutine.trace(at_z).get_trace(y).compute_log_prob()
    handle.remove()
    assert calls == [1]


def test_plates_and_to_event_are_kept(gaussian_case: GaussianCase):
    def model():
        with pyro.plate("items", 3):
            pyro.sample("x", gaussian_case.ebm)
        pyro.sample("w", gaussian_case.ebm.expand([4]).to_event(1))

    reparam = FlowEBMReparam()
    config = {"x": reparam, "w": reparam}
    trace = poutine.trace(poutine.reparam(model, config=config)).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["x_latent"]["value"].shape == (3, 2)
    assert trace.nodes["x_latent"]["log_prob"].shape == (3,)
    assert trace.nodes["w_latent"]["value"].shape == (4, 2)
    assert trace.nodes["w_latent"]["log_prob"].shape == ()
    out = reparam.transform_samples(
        {"x_latent": torch.zeros(5, 3, 2), "w_latent": torch.zeros(5, 4, 2)}
    )
    assert out["x"].shape == (5, 3, 2) and out["w"].shape == (5, 4, 2)


def test_misuse_is_refused(gaussian_case: GaussianCase):
    reparam = FlowEBMReparam()
    with pytest.raises(RuntimeError, match="has not seen a site yet"):
        reparam.transform_samples({"x_latent": torch.zeros(2)})

    def observed():
        pyro.sample("x", gaussian_case.ebm, obs=torch.zeros(2))

    with pytest.raises(NotImplementedError, match="site 'x' is observed"):
        poutine.reparam(observed, config={"x": reparam})()

    def normal():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(TypeError, match="expected site 'x' to have a FlowEBM distribution"):
        poutine.reparam(normal, config={"x": reparam})()

    def good():
        pyro.sample("x", gaussian_case.ebm)

    poutine.reparam(good, config={"x": reparam})()
    with pytest.raises(KeyError, match="expected latent draws 'x_latent'"):
        reparam.transform_samples({"z": torch.zeros(2)})
