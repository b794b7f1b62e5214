"""FlowEBM: identities, the analytic Gaussian case, Pyro's shape contract, errors."""

from __future__ import annotations

import io
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import GaussianCase, z_bound
from pyro.infer import Predictive
from torch.distributions.transforms import AffineTransform

from pyro_flowebm import FlowEBM, flow_backbone, flows
from pyro_flowebm.distributions import ImportanceResampler
from pyro_flowebm.infer import SMCResampler, estimate_log_z
from pyro_flowebm.nn import MLPEnergy


def random_ebm(dim: int = 2) -> FlowEBM:
    transform = flows.realnvp(dim, num_layers=4, hidden=16)
    energy = MLPEnergy(dim, hidden=16)
    with torch.no_grad():
        for p in [*transform.parameters(), *energy.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    return FlowEBM(flow_backbone(transform, (dim,)), energy)


def test_zero_energy_gives_the_backbone_exactly():
    transform = flows.realnvp(2, num_layers=4, hidden=16)
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = flow_backbone(transform, (2,))
    ebm = FlowEBM(q, MLPEnergy(2, 16))  # MLPEnergy starts at E = 0
    x = 3 * torch.randn(100, 2)
    assert torch.equal(ebm.log_prob(x), q.log_prob(x))


def test_gaussian_backbone_with_quadratic_energy_is_the_analytic_gaussian(gaussian_case):
    x = 3 * torch.randn(1000, 2)
    diff = gaussian_case.ebm.log_prob(x) - gaussian_case.analytic().log_prob(x)
    assert diff.var() < 1e-10
    # The constant really is a constant: log Z, not zero, so the test is not vacuous.
    assert diff.mean().abs() > 1e-3


def test_latent_potential_is_data_potential_minus_log_det():
    ebm = random_ebm()
    z = 1.5 * torch.randn(1000, 2)
    x, log_det = ebm.backbone.transforms[0].forward_and_log_det(z)
    lhs = ebm.latent_potential(z)
    rhs = -ebm.log_prob(x) - log_det
    assert (lhs - rhs).var() < 1e-10
    # And U is 0.5 |z|^2 + E(g(z)) on the nose.
    torch.testing.assert_close(lhs, 0.5 * z.pow(2).sum(-1) + ebm.energy(x))
    torch.testing.assert_close(ebm.latent_log_prob(z), -lhs)


def test_latent_potential_gradient_flows_to_z_and_energy():
    ebm = random_ebm()
    z = torch.randn(8, 2, requires_grad=True)
    ebm.latent_potential(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert all(p.grad is not None for p in ebm.energy.parameters())


def test_shapes_expand_and_to_event():
    ebm = random_ebm()
    assert ebm.batch_shape == () and ebm.event_shape == (2,)
    x = torch.randn(5, 3, 2)
    expanded = ebm.expand([3])
    assert expanded.batch_shape == (3,) and expanded.event_shape == (2,)
    assert expanded.sample((5,)).shape == (5, 3, 2)
    torch.testing.assert_close(expanded.log_prob(x), ebm.log_prob(x))
    independent = expanded.to_event(1)
    assert independent.event_shape == (3, 2)
    torch.testing.assert_close(independent.log_prob(x), ebm.log_prob(x).sum(-1))
    # An expanded model refuses values that do not broadcast with its batch shape.
    with pytest.raises(ValueError):
        expanded.log_prob(torch.randn(5, 4, 2))
    latent = expanded.latent()
    assert latent.batch_shape == (3,)
    torch.testing.assert_close(latent.log_prob(x), ebm.latent_log_prob(x))


def test_sample_returns_draws_of_the_right_shape():
    ebm = random_ebm()
    for shape in [(), (7,), (2, 3)]:
        x = ebm.sample(shape)
        assert x.shape == (*shape, 2)
        assert torch.isfinite(x).all()
        assert ebm.support.check(x).all()
    assert not ebm.sample((4,)).requires_grad


def test_support_and_pyro_contract():
    ebm = random_ebm()
    assert not ebm.has_rsample
    assert ebm.support.event_dim == 1
    assert ebm.arg_constraints == {}


def test_save_load_and_pickle_preserve_log_prob():
    ebm = random_ebm()
    x = torch.randn(20, 2)
    expected = ebm.log_prob(x)
    buffer = io.BytesIO()
    torch.save(ebm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.log_prob(x), expected)
    assert torch.equal(pickle.loads(pickle.dumps(ebm)).log_prob(x), expected)
    expanded = pickle.loads(pickle.dumps(ebm.expand([4]).to_event(1)))
    assert torch.equal(expanded.log_prob(x[:4]), expected[:4].sum())


def test_bad_values_are_refused_with_expected_and_given():
    ebm = random_ebm()
    with pytest.raises(
        ValueError, match=r"expected value with event shape \(2,\), got shape \(4, 3\)"
    ):
        ebm.log_prob(torch.randn(4, 3))
    bad = torch.randn(4, 2)
    bad[1, 0] = float("inf")
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="expected finite values, got 2 non-finite entries"):
        ebm.log_prob(bad)
    with pytest.raises(ValueError, match=r"expected z with event shape \(2,\), got shape \(3,\)"):
        ebm.latent_potential(torch.randn(3))


def test_energy_of_the_wrong_shape_is_refused():
    q = flow_backbone(flows.realnvp(2, 2, 8), (2,))
    ebm = FlowEBM(q, lambda x: x)  # returns (N, 2), not (N,)
    with pytest.raises(ValueError, match=r"expected the energy to return shape \(4,\) or \(4, 1\)"):
        ebm.log_prob(torch.randn(4, 2))
    column = FlowEBM(q, lambda x: x.sum(-1, keepdim=True))  # (N, 1) is accepted
    assert column.log_prob(torch.randn(4, 2)).shape == (4,)


def test_bad_backbones_are_refused(gaussian_case: GaussianCase):
    with pytest.raises(TypeError, match="expected backbone to be a pyro.distributions"):
        FlowEBM(torch.distributions.Normal(0.0, 1.0), MLPEnergy(2))
    with pytest.raises(TypeError, match="expected a callable energy"):
        FlowEBM(gaussian_case.backbone, 3.0)
    import pyro.distributions as dist

    shifted = dist.TransformedDistribution(
        dist.Normal(torch.ones(2), 1.0).to_event(1), [gaussian_case.transform]
    )
    with pytest.raises(ValueError, match="expected the backbone's base distribution"):
        FlowEBM(shifted, MLPEnergy(2))


def mixture_ebm() -> tuple[FlowEBM, torch.Tensor, torch.Tensor]:
    """An EBM whose law is an unbalanced mixture of three Gaussians (weights 0.6, 0.3, 0.1,
    sd 0.4): a broad Gaussian backbone tilted by E = log q - log mixture. Returns the model,
    the mode centres and the modes' weights by a grid integral of its unnormalized density."""
    centres = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.6, 0.3, 0.1])),
        dist.Normal(centres, 0.4).to_event(1),
    )
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    backbone = dist.TransformedDistribution(
        base, [AffineTransform(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0]), event_dim=1)]
    )
    ebm = FlowEBM(backbone, lambda x: backbone.log_prob(x) - mixture.log_prob(x))
    line = torch.linspace(-8, 8, 801)
    grid = torch.stack(torch.meshgrid(line, line, indexing="ij"), -1).reshape(-1, 2)
    p = ebm.log_prob(grid).exp()
    weights = torch.bincount(nearest(grid, centres), weights=p, minlength=3)
    return ebm, centres, weights / weights.sum()


def nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, centres).argmin(-1)


def assert_mode_weights(x: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor) -> None:
    """Mode frequencies of the draws within binomial standard errors of the weights."""
    n = x.shape[0]
    freq = torch.bincount(nearest(x, centres), minlength=3) / n
    z = (freq - weights).abs() / (weights * (1 - weights) / n).sqrt()
    assert (z < z_bound(3)).all(), (freq, weights)


def test_sample_draws_the_ebm_not_the_backbone():
    ebm, centres, weights = mixture_ebm()
    assert torch.allclose(weights, torch.tensor([0.6, 0.3, 0.1]), atol=1e-3)
    x = ebm.sample((4000,))
    assert x.shape == (4000, 2)
    assert_mode_weights(x, centres, weights)
    # The backbone's draws are elsewhere: a third of them are not near any mode.
    far = torch.cdist(ebm.backbone.sample((4000,)), centres).min(-1).values > 1.6
    assert far.float().mean() > 0.3
    assert (torch.cdist(x, centres).min(-1).values > 1.6).float().mean() < 0.01


def test_predictive_draws_the_ebm_prior():
    ebm, centres, weights = mixture_ebm()

    def model():
        pyro.sample("x", ebm)

    draws = Predictive(model, num_samples=1000)()["x"]
    assert draws.shape == (1000, 2)
    assert_mode_weights(draws, centres, weights)
    draws = Predictive(model, num_samples=2000, parallel=True)()["x"]
    assert draws.shape == (2000, 2)
    assert_mode_weights(draws, centres, weights)


def test_smc_resampler_draws_the_ebm():
    ebm, centres, weights = mixture_ebm()
    x = ebm.with_sampler(SMCResampler(min_particles=4096)).sample((2000,))
    assert_mode_weights(x, centres, weights)


def test_importance_resampler_warns_when_its_weights_have_degenerated():
    ebm, _, _ = mixture_ebm()
    few = ebm.with_sampler(ImportanceResampler(particles_per_draw=1, min_particles=2))
    with pytest.warns(UserWarning, match="effective sample size is .* the draws repeat"):
        few.sample((2000,))
    with pytest.raises(ValueError, match="expected the sampler to return latent draws of shape"):
        ebm.with_sampler(lambda model, n: torch.zeros(n + 1, 2)).sample((3,))
    with pytest.raises(TypeError, match="expected a sampler callable"):
        ebm.with_sampler(3)


def test_normalized_log_prob_integrates_to_one(gaussian_case: GaussianCase):
    estimate = estimate_log_z(gaussian_case.ebm, 4096, method="is", seed=0)
    normalized = gaussian_case.ebm.normalized(estimate)
    assert normalized.log_z == estimate.log_z and normalized.log_z_stderr == estimate.stderr
    line = torch.linspace(-6, 6, 601)
    grid = torch.stack(torch.meshgrid(line, line, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_p = normalized.log_prob(grid)
    mass = log_p.exp().sum() * (line[1] - line[0]) ** 2
    # exp(-log_z) carries the estimate's relative error: the mass is 1 within it.
    assert abs(float(mass) - 1) < 3 * estimate.stderr
    torch.testing.assert_close(
        log_p,
        gaussian_case.analytic().log_prob(grid),
        atol=4 * estimate.stderr,
        rtol=0,
    )
    # Expanding, and the unnormalized model, keep what they had.
    assert normalized.expand([3]).log_z == estimate.log_z and gaussian_case.ebm.log_z is None
    assert gaussian_case.ebm.normalized(0.25, stderr=0.1).log_z_stderr == 0.1
    with pytest.raises(ValueError, match="expected a finite log_z, got nan"):
        gaussian_case.ebm.normalized(float("nan"))
    with pytest.raises(TypeError, match="expected log_z as a number or an estimate"):
        gaussian_case.ebm.normalized("0.5")
