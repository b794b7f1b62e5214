"""fit_ebm: the maximum-likelihood tilt of a Gaussian, exact resume, the divergence guard."""

from __future__ import annotations

import json
import math

import normflows as nf
import numpy as np
import pyro
import pytest
import torch
from torch import Tensor, nn

from pyro_flowebm import FlowEBM, NormflowsTransform, fit_ebm, flow_backbone, flows
from pyro_flowebm.infer import sample_ebm
from pyro_flowebm.nn import ConvEnergy, MLPEnergy
from pyro_flowebm.train import TrainingDiverged


class LearnedQuadratic(nn.Module):
    """E(x) = 0.5 x^T A x + b^T x with A symmetric, all entries learned (zero at start)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2))

    @property
    def A(self) -> Tensor:
        return torch.stack(
            [torch.stack([self.a[0], self.a[1]]), torch.stack([self.a[1], self.a[2]])]
        )

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * torch.einsum("...i,ij,...j->...", x, self.A, x) + x @ self.b


def standard_normal_ebm(energy: nn.Module) -> FlowEBM:
    """q = N(0, I) exactly (an AffineConstFlow at the identity), tilted by ``energy``."""
    transform = NormflowsTransform([nf.flows.AffineConstFlow((2,))], event_shape=(2,))
    return FlowEBM(flow_backbone(transform, (2,)), energy)


def test_fit_ebm_recovers_the_gaussian_maximum_likelihood_tilt():
    # q = N(0, I) tilted by a quadratic is N(-P^-1 b, P^-1) with P = I + A: the maximum
    # likelihood tilt matches the data's mean and covariance (energy_reg = 0 leaves the
    # MLE unbiased). Start: mean 0, cov I; data: mean (1, -0.5), cov [[0.5, 0.2], [0.2, 1.5]].
    mean = torch.tensor([1.0, -0.5])
    cov = torch.tensor([[0.5, 0.2], [0.2, 1.5]])
    data = torch.distributions.MultivariateNormal(mean, cov).sample((4000,))
    energy = LearnedQuadratic()
    ebm = standard_normal_ebm(energy)
    history = fit_ebm(
        ebm, data, 1000, lr=0.05, energy_reg=0.0, persistent=True, independence_moves=1,
        mcmc_steps=3, step_size=0.3, progress_bar=False,
    )  # fmt: skip
    with torch.no_grad():
        precision = torch.eye(2) + energy.A
        model_cov = torch.linalg.inv(precision)
        model_mean = -model_cov @ energy.b
    sample_mean, sample_cov = data.mean(0), data.T.cov()
    # The target is the data's own moments; what is left is the optimizer's noise and the
    # persistent chains' lag at the end of the cosine schedule, measured at under 1% here
    # (600 steps had not converged: 12% off; 2000 steps: 0.3%). Tolerances: 2% of the
    # initial discrepancy of the mean (|(1, -0.5)| = 1.12) and 3% of the scale on the
    # covariance (initially 50-100% off).
    assert (model_mean - sample_mean).norm() < 0.02 * mean.norm()
    scale = sample_cov.diagonal().sqrt()
    assert ((model_cov - sample_cov).abs() / scale.outer(scale)).max() < 0.03
    assert 0.4 < history[-1]["acceptance"] < 0.95
    assert len(history) == 1000 and history[-1]["step"] == 999


def small_ebm() -> FlowEBM:
    return FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 16))


def test_resume_from_a_checkpoint_gives_the_same_weights_as_an_uninterrupted_run():
    data = torch.randn(300, 2) * 0.5 + 1.0
    kwargs = {"batch_size": 32, "persistent": True, "independence_moves": 1, "checkpoint_every": 5}
    kwargs["progress_bar"] = False

    torch.manual_seed(1)
    full = small_ebm()
    init = {k: v.clone() for k, v in full.energy.state_dict().items()}
    init_flow = {
        k: v.clone() for k, v in nn.ModuleList(full.backbone.transforms).state_dict().items()
    }
    states = []
    torch.manual_seed(2)
    fit_ebm(full, data, 20, on_checkpoint=states.append, finetune_lr=1e-3, **kwargs)
    assert [s["step"] for s in states] == [5, 10, 15, 20]

    # A fresh process would start from the checkpoint alone: new modules, new optimizer,
    # and a generator in another state.
    resumed = small_ebm()
    resumed.energy.load_state_dict(init)
    nn.ModuleList(resumed.backbone.transforms).load_state_dict(init_flow)
    torch.manual_seed(12345)
    tail = fit_ebm(resumed, data, 20, resume=states[1], finetune_lr=1e-3, **kwargs)
    assert [m["step"] for m in tail] == list(range(10, 20))
    for a, b in zip(full.energy.parameters(), resumed.energy.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        nn.ModuleList(full.backbone.transforms).parameters(),
        nn.ModuleList(resumed.backbone.transforms).parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_an_image_tilt_resumes_exactly_with_dequantized_batches():
    """Dequantization noise comes from the checkpointed generator: an image run resumed
    from a checkpoint ends with the same weights as an uninterrupted one."""
    images = torch.randint(17, (64, 1, 4, 4)) / 17
    kwargs = {"batch_size": 8, "mcmc_steps": 1, "num_steps": 2, "independence_moves": 1}
    kwargs |= {"checkpoint_every": 3, "dequantize": 17, "progress_bar": False}

    def image_ebm() -> FlowEBM:
        torch.manual_seed(3)
        t = flows.glow((1, 4, 4), num_levels=1, steps_per_level=1, hidden=4)
        t.inv(images[:32] + 0.5 / 17)  # ActNorm's initialization, the same for both
        return FlowEBM(flow_backbone(t, (1, 4, 4)), ConvEnergy((1, 4, 4), hidden=4))

    full, states = image_ebm(), []
    torch.manual_seed(4)
    fit_ebm(full, images, 6, on_checkpoint=states.append, validation_data=images, **kwargs)
    resumed = image_ebm()
    torch.manual_seed(999)
    fit_ebm(resumed, images, 6, resume=states[0], validation_data=images, **kwargs)
    for a, b in zip(full.energy.parameters(), resumed.energy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(states[0]["energy"]["net.0.weight"], full.energy.net[0].weight)


def test_dequantize_must_be_a_number_of_levels():
    ebm = small_ebm()
    with pytest.raises(
        ValueError, match="expected dequantize None or a number of levels >= 2, got 1"
    ):
        fit_ebm(ebm, torch.rand(10, 2), 2, dequantize=1, progress_bar=False)


def test_the_guard_stops_a_blow_up_before_the_bad_step():
    data = torch.randn(300, 2)
    ebm = small_ebm()
    seen = []

    def on_metrics(metrics: dict[str, float]) -> None:
        seen.append({k: v.clone() for k, v in ebm.energy.state_dict().items()})

    with pytest.raises(TrainingDiverged, match="training diverged at step") as caught:
        fit_ebm(ebm, data, 200, lr=1e3, grad_clip=1e6, batch_size=32, on_metrics=on_metrics,
                max_energy=1e3, progress_bar=False)  # fmt: skip
    step = caught.value.step
    assert 0 < step < 200 and len(seen) == step
    # The parameters are those of the last step that passed, all finite.
    params = ebm.energy.state_dict()
    assert all(torch.isfinite(v).all() for v in params.values())
    with torch.no_grad():
        assert ebm.energy_of(data).abs().max() < math.inf


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.full((10, 2), math.nan), "expected finite data"),
        (torch.zeros(10, 3), r"expected data of shape \(n, 2\)"),
        (torch.zeros(1, 2), "expected at least 2 data points"),
        (torch.zeros(0, 2), "expected at least 2 data points, got 0"),
    ],
)
def test_bad_data_is_refused_before_any_training(data, message):
    ebm = small_ebm()
    before = {k: v.clone() for k, v in ebm.energy.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        fit_ebm(ebm, data, 5, progress_bar=False)
    for k, v in ebm.energy.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "expected steps >= 1, got 0"),
        ({"lr": -1.0}, "expected lr > 0, got -1.0"),
        ({"independence_moves": -1}, "independence_moves >= 0"),
        ({"target_accept_prob": 1.0}, "0 < target_accept_prob < 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_ebm(small_ebm(), torch.zeros(10, 2), **{"steps": 5, **kwargs})


def test_fine_tuning_moves_the_backbone_only_when_asked():
    data = torch.randn(300, 2) * 0.5 + 1.0
    for finetune_lr, moved in ((None, False), (1e-2, True)):
        ebm = small_ebm()
        flow = nn.ModuleList(ebm.backbone.transforms)
        before = [p.clone() for p in flow.parameters()]
        fit_ebm(ebm, data, 5, batch_size=32, finetune_lr=finetune_lr, progress_bar=False)
        changed = any(not torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
        assert changed == moved


def test_compiled_training_and_sampling_follow_the_eager_chains():
    """``compile=True`` changes how the chains' gradients are computed, not what: the same
    weights after training and the same draws after it, to float32 rounding."""
    data = torch.randn(400, 2) * 0.5 + 1.0
    ebms = []
    for compile in (False, True):
        pyro.set_rng_seed(0)
        ebm = FlowEBM(flow_backbone(flows.realnvp(2, 1, 8), (2,)), MLPEnergy(2, 8))
        fit_ebm(ebm, data, steps=3, batch_size=32, compile=compile, progress_bar=False)
        ebms.append(ebm)
    eager, compiled = (dict(ebm.energy.named_parameters()) for ebm in ebms)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5)
    draws = [
        sample_ebm(ebm, "hmc-imh", 32, 6, 4, compile=compile, progress_bar=False)
        for ebm, compile in zip(ebms, (False, True), strict=True)
    ]
    recorded = [json.loads(d.posterior.attrs["kernel"])["kernels"] for d in draws]
    assert [[k["compile"] for k in kernels] for kernels in recorded] == [[False] * 2, [True] * 2]
    np.testing.assert_allclose(draws[1].posterior["x"], draws[0].posterior["x"], atol=1e-4)
