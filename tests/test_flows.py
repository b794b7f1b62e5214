"""The normflows adapter: log-determinants, inverses, shapes, dtypes, caching, errors."""

from __future__ import annotations

import io
import pickle

import normflows as nf
import pytest
import torch
from torch import nn

from pyro_flowebm import NormflowsTransform, fit_backbone, flow_backbone, flows

PRESETS = {
    "realnvp-2d": lambda: flows.realnvp(2, num_layers=4, hidden=16),
    "realnvp-3d": lambda: flows.realnvp(3, num_layers=3, hidden=16),
    "spline-2d": lambda: flows.neural_spline(2, num_layers=2, hidden=16),
    "spline-3d": lambda: flows.neural_spline(3, num_layers=2, hidden=16),
}


def randomized(make):
    """A preset with random weights: RealNVP's couplings start as the identity, which
    tests nothing, and larger weights exercise the splines' bins too."""
    t = make()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_log_det_equals_slogdet_of_autograd_jacobian(name):
    t = randomized(PRESETS[name])
    d = t.event_shape[0]
    z = 1.5 * torch.randn(6, d)
    x = t(z)
    log_det = t.log_abs_det_jacobian(z, x)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: t(v), z[i])
        assert jac.shape == (d, d)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(log_det[i], logabs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_inverse_round_trip_and_inverse_log_det(name):
    t = randomized(PRESETS[name])
    z = 1.5 * torch.randn(50, t.event_shape[0])
    x = t(z)
    z_back = t.inv(x)
    torch.testing.assert_close(z_back, z, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        t.inv.log_abs_det_jacobian(x, z_back), -t.log_abs_det_jacobian(z, x), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("sample_shape", [(), (5,), (3, 4)])
def test_leading_shapes_are_flattened_and_restored(sample_shape):
    t = randomized(PRESETS["realnvp-2d"])
    q = flow_backbone(t, (2,))
    x = q.sample(sample_shape)
    assert x.shape == (*sample_shape, 2)
    assert q.log_prob(x).shape == sample_shape
    z = torch.randn(*sample_shape, 2)
    x = t(z)
    assert x.shape == z.shape
    assert t.log_abs_det_jacobian(z, x).shape == sample_shape
    # Each point is mapped on its own: the batched result equals the point-by-point one.
    flat = t(z.reshape(-1, 2))
    torch.testing.assert_close(x.reshape(-1, 2), flat)


def test_log_det_has_the_input_dtype():
    # Permute builds its log-det as float32 on the CPU whatever the input; the adapter must
    # not, and must not add it in place into a float32 accumulator either.
    # One float32 module serves both dtypes: its elementwise scale promotes a float64 input.
    t = NormflowsTransform(
        [nf.flows.Permute(2, mode="swap"), nf.flows.AffineConstFlow((2,))], event_shape=(2,)
    ).float()
    with torch.no_grad():
        t.layers[1].s.fill_(0.1)
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(4, 2, dtype=dtype)
        x = t(z)
        log_det = t.log_abs_det_jacobian(z, x)
        assert x.dtype == dtype and log_det.dtype == dtype
        torch.testing.assert_close(log_det, torch.full((4,), 0.2, dtype=dtype))
    for make in (PRESETS["realnvp-2d"], PRESETS["spline-2d"]):
        t32 = make().float()
        z = torch.randn(3, 2, dtype=torch.float32)
        assert t32.log_abs_det_jacobian(z, t32(z)).dtype == torch.float32
        t64 = make().double()
        z = torch.randn(3, 2, dtype=torch.float64)
        assert t64.log_abs_det_jacobian(z, t64(z)).dtype == torch.float64


def test_cache_reuses_the_forward_pass():
    t = NormflowsTransform(randomized(PRESETS["realnvp-2d"]).layers, (2,), cache_size=1)
    z = torch.randn(5, 2)
    x = t(z)
    assert t(z) is x
    assert t.inv(x) is z
    calls = []
    handle = t.layers[0].register_forward_hook(lambda *args: calls.append(1))
    log_det = t.log_abs_det_jacobian(z, x)
    assert calls == []  # served from the cache
    fresh = torch.randn(5, 2)
    t.log_abs_det_jacobian(fresh, x)
    assert calls == [1]  # a pair it has not seen is recomputed
    handle.remove()
    torch.testing.assert_close(log_det, t.forward_and_log_det(z)[1])


def test_parameters_are_trainable_through_the_backbone():
    t = randomized(PRESETS["realnvp-2d"])
    q = flow_backbone(t, (2,))
    q.log_prob(torch.randn(16, 2)).sum().backward()
    for name, p in t.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_matches_normflows_own_log_prob():
    layers = list(randomized(PRESETS["realnvp-2d"]).layers)
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), layers)
    model.double()
    q = flow_backbone(NormflowsTransform(model, (2,)), (2,))
    x = 2 * torch.randn(20, 2)
    torch.testing.assert_close(q.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nf.flows.MetropolisHastings(
            nf.distributions.DiagGaussian(2), nf.distributions.DiagGaussianProposal((2,), 0.1), 5
        ),
        lambda: nf.flows.HamiltonianMonteCarlo(
            nf.distributions.DiagGaussian(2), 5, torch.zeros(2), torch.zeros(2)
        ),
    ],
    ids=["MetropolisHastings", "HamiltonianMonteCarlo"],
)
def test_stochastic_layers_are_refused(layer):
    with pytest.raises(TypeError, match="expected bijective normflows layers, got .* position 1"):
        NormflowsTransform([nf.flows.Permute(2, mode="swap"), layer()], (2,))


def test_bad_layers_and_values_are_refused():
    with pytest.raises(TypeError, match="expected normflows.flows.Flow layers, got Linear"):
        NormflowsTransform([nn.Linear(2, 2)], (2,))
    with pytest.raises(ValueError, match="at least one"):
        NormflowsTransform([], (2,))
    t = flows.realnvp(2, 2, 8)
    with pytest.raises(ValueError, match=r"expected a value with event shape \(2,\), got shape"):
        t(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"expected event_shape \(2,\)"):
        flow_backbone(t, (3,))
    with pytest.raises(ValueError, match="expected dim >= 2"):
        flows.realnvp(1)


def test_save_load_and_pickle_round_trips():
    t = randomized(PRESETS["spline-2d"])
    z = torch.randn(10, 2)
    x = t(z)  # leaves a graph-carrying cache behind, which must not be pickled
    buffer = io.BytesIO()
    torch.save(t, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(z), x, atol=0, rtol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(t))(z), x, atol=0, rtol=0)
    state = flows.neural_spline(2, num_layers=2, hidden=16)
    state.load_state_dict(t.state_dict())
    torch.testing.assert_close(state(z), x, atol=0, rtol=0)


def test_fit_backbone_learns_a_shifted_scaled_gaussian():
    # Truth N((3, -1), diag(0.25, 4)): the fitted flow's mean and sd must come close,
    # within a tolerance far above the Monte Carlo error of 4000 draws (~0.03 sd).
    data = torch.randn(2000, 2) * torch.tensor([0.5, 2.0]) + torch.tensor([3.0, -1.0])
    q = flow_backbone(flows.realnvp(2, num_layers=2, hidden=16), (2,))
    losses = fit_backbone(q, data, steps=600, lr=1e-2, progress_bar=False)
    assert len(losses) == 600
    with torch.no_grad():
        x = q.sample((4000,))
    torch.testing.assert_close(x.mean(0), torch.tensor([3.0, -1.0]), atol=0.15, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 2.0]), atol=0, rtol=0.1)
    # The true density's expected NLL is log(2 pi) + log(0.5 * 2) + 1 = 2.838.
    assert sum(losses[-50:]) / 50 < 2.838 + 0.1


def test_fit_backbone_refuses_bad_data():
    q = flow_backbone(flows.realnvp(2, 2, 8), (2,))
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="expected finite data, got 1 non-finite"):
        fit_backbone(q, bad, steps=1, progress_bar=False)
    with pytest.raises(ValueError, match=r"expected data of shape \(n, 2\), got \(10, 3\)"):
        fit_backbone(q, torch.randn(10, 3), steps=1, progress_bar=False)
    with pytest.raises(ValueError, match="expected at least 1 data point, got 0"):
        fit_backbone(q, torch.randn(0, 2), steps=1, progress_bar=False)


# -- multiscale image flows ------------------------------------------------------------------------

IMAGE_FLOWS = {
    "glow-1x4x4-2-levels": lambda: flows.glow((1, 4, 4), num_levels=2, steps_per_level=2, hidden=4),
    "glow-3x2x2-no-logit": lambda: flows.glow(
        (3, 2, 2), num_levels=1, steps_per_level=2, hidden=4, logit_alpha=None
    ),
    "glow-2x4x4-1-level": lambda: flows.glow((2, 4, 4), num_levels=1, steps_per_level=3, hidden=4),
}


def initialized_image_flow(name: str) -> NormflowsTransform:
    """An image flow whose ActNorms saw one batch (their data-dependent initialization),
    then random weights everywhere: zero-initialized conditioners test nothing."""
    t = IMAGE_FLOWS[name]()
    t.inv(0.05 + 0.9 * torch.rand(16, *t.event_shape))
    return randomized(lambda: t)


@pytest.mark.parametrize("name", sorted(IMAGE_FLOWS))
def test_image_flow_log_det_equals_slogdet_of_autograd_jacobian(name):
    t = initialized_image_flow(name)
    d = t.event_shape.numel()
    # Latent points of pixels inside (0.05, 0.95): where the logit saturates, the Jacobian's
    # condition number passes 1e17 and slogdet itself loses digits.
    z = t.inv(0.05 + 0.9 * torch.rand(3, *t.event_shape)).detach()
    x = t(z)
    log_det = t.log_abs_det_jacobian(z, x)
    assert log_det.shape == (3,)
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(t.event_shape)), z[i])
        sign, logabs = torch.linalg.slogdet(jac.reshape(d, d))
        assert sign != 0
        torch.testing.assert_close(log_det[i], logabs, atol=1e-8, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(IMAGE_FLOWS))
def test_image_flow_inverse_round_trip_and_inverse_log_det(name):
    t = initialized_image_flow(name)
    x = 0.02 + 0.96 * torch.rand(20, *t.event_shape)
    z = t.inv(x)
    assert z.shape == x.shape
    torch.testing.assert_close(t(z), x, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        t.inv.log_abs_det_jacobian(x, z), -t.log_abs_det_jacobian(z, t(z)), atol=1e-8, rtol=0
    )


def test_image_backbone_log_prob_is_the_change_of_variables():
    """log q(x) = log N(z; 0, I) + log|det dz/dx|, with the Jacobian of the inverse by autograd:
    the logit pre-transform's log-det is accounted."""
    t = initialized_image_flow("glow-1x4x4-2-levels")
    q = flow_backbone(t, t.event_shape)
    x = 0.05 + 0.9 * torch.rand(2, *t.event_shape)
    for i in range(len(x)):
        z = t.inv(x[i : i + 1])[0]
        jac = torch.autograd.functional.jacobian(
            lambda v: t.inv(v.reshape(1, *t.event_shape))[0], x[i]
        )
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        expected = expected + torch.linalg.slogdet(jac.reshape(16, 16))[1]
        torch.testing.assert_close(q.log_prob(x[i]), expected, atol=1e-8, rtol=1e-10)


def test_image_flow_logit_maps_onto_the_unit_interval():
    t = flows.glow((1, 4, 4), num_levels=1, steps_per_level=1, hidden=4, logit_alpha=0.05)
    x = t(torch.randn(100, 1, 4, 4))
    lo, hi = -0.05 / 0.9, 1 + 0.05 / 0.9
    assert bool(((x > lo) & (x < hi)).all())


def test_image_flow_parameters_all_receive_gradients():
    t = initialized_image_flow("glow-1x4x4-2-levels")
    q = flow_backbone(t, t.event_shape)
    q.log_prob(0.05 + 0.9 * torch.rand(8, 1, 4, 4)).sum().backward()
    for name, p in t.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_image_flow_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*num_levels = 4"):
        flows.glow((1, 6, 8), num_levels=2)
    with pytest.raises(ValueError, match=r"expected event_shape \(C, H, W\), got \(8, 8\)"):
        flows.glow((8, 8))
    with pytest.raises(ValueError, match="logit_alpha"):
        flows.glow((1, 4, 4), num_levels=1, logit_alpha=0.5)
    with pytest.raises(ValueError, match="expected num_levels >= 1, got 0"):
        flows.glow((1, 4, 4), num_levels=0)


def test_image_flow_actnorm_initializes_once_and_travels_with_the_state_dict():
    """ActNorm standardizes the first batch it sees (Glow's data-dependent initialization),
    never a later one, and a state dict loaded into a fresh flow is not re-initialized."""
    torch.manual_seed(1)
    t = flows.glow((1, 4, 4), num_levels=1, steps_per_level=1, hidden=4, logit_alpha=None)
    first = 3.0 + 2.0 * torch.randn(64, 1, 4, 4)
    t.inv(first)
    actnorm = [m for m in t.modules() if isinstance(m, nf.flows.ActNorm)][0]
    s, shift = actnorm.s.detach().clone(), actnorm.t.detach().clone()
    t.inv(-5.0 + 0.1 * torch.randn(64, 1, 4, 4))  # a very different batch changes nothing
    torch.testing.assert_close(actnorm.s, s, atol=0, rtol=0)
    torch.testing.assert_close(actnorm.t, shift, atol=0, rtol=0)
    fresh = flows.glow((1, 4, 4), num_levels=1, steps_per_level=1, hidden=4, logit_alpha=None)
    fresh.load_state_dict(t.state_dict())
    x = torch.randn(8, 1, 4, 4)
    torch.testing.assert_close(fresh.inv(x), t.inv(x), atol=0, rtol=0)
    torch.testing.assert_close(fresh(x), t(x), atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(1, 5), (2, 5), (5, 1), (5, 2), (5, 6)])
def test_dense_traced_by_torch_compile_equals_the_linear_layer(shape):
    """Under torch.compile a thin Dense is a broadcast product and a sum (what Inductor
    fuses); the numbers and the gradients are those of the matrix multiply."""
    from pyro_flowebm.nn import Dense

    layer = Dense(*shape)
    x = torch.randn(7, 3, shape[0], requires_grad=True)
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    traced = torch.compile(layer, backend=record, fullgraph=True)
    out, expected = traced(x), nn.functional.linear(x, layer.weight, layer.bias)
    calls = {str(node.target) for g in graphs for node in g.graph.nodes}
    # thin layers are traced without a matrix multiply, wide ones with one
    assert any("linear" in c for c in calls) == (min(shape) > 2)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grads = torch.autograd.grad(out.sum(), [x, layer.weight])
    expected_grads = torch.autograd.grad(expected.sum(), [x, layer.weight])
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
