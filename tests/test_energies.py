"""Energy networks: the ConvNet energy for images (shapes, zero start, gradients, norms)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_flowebm import FlowEBM, flow_backbone, flows
from pyro_flowebm.nn import ConvEnergy


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 5), (2, 1, 1)])
def test_conv_energy_starts_at_zero_and_keeps_leading_shapes(shape):
    energy = ConvEnergy(shape, hidden=4, num_layers=3)
    x = torch.rand(2, 3, *shape)
    e = energy(x)
    assert e.shape == (2, 3)
    assert bool((e == 0).all())


def test_zero_conv_energy_leaves_the_backbone_exactly():
    """A new FlowEBM with a ConvEnergy is its backbone: U(z) = |z|^2 / 2, log p = log q."""
    t = flows.glow((1, 4, 4), num_levels=1, steps_per_level=1, hidden=4)
    q = flow_backbone(t, (1, 4, 4))
    ebm = FlowEBM(q, ConvEnergy((1, 4, 4), hidden=4))
    x = 0.05 + 0.9 * torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(ebm.log_prob(x), q.log_prob(x), atol=0, rtol=0)
    z = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(ebm.latent_potential(z), 0.5 * z.pow(2).sum((1, 2, 3)))


@pytest.mark.parametrize("activation", ["silu", "leaky_relu"])
def test_every_parameter_receives_a_gradient(activation):
    energy = ConvEnergy((1, 8, 8), hidden=4, num_layers=3, activation=activation)
    nn.init.normal_(energy.net[-1].weight)
    energy(torch.rand(6, 1, 8, 8)).sum().backward()
    for name, p in energy.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_spectral_norm_bounds_every_convolution():
    """After the power iteration has run, each convolution's weight, as an (out, in k k)
    matrix, has largest singular value 1 (torch's spectral_norm normalizes that matrix)."""
    energy = ConvEnergy((1, 8, 8), hidden=4, num_layers=3, spectral_norm=True)
    with torch.no_grad():
        for m in energy.modules():
            if isinstance(m, nn.Conv2d):
                m.parametrizations.weight.original.mul_(5.0)
        for _ in range(1000):  # one power iteration per forward in training mode
            energy(torch.rand(1, 1, 8, 8))
    energy.eval()
    convs = [m for m in energy.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2)
        torch.testing.assert_close(sigma, torch.tensor(1.0), atol=1e-4, rtol=0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"expected event_shape \(C, H, W\), got \(64,\)"):
        ConvEnergy((64,))
    with pytest.raises(ValueError, match="expected num_layers >= 1, got 0"):
        ConvEnergy((1, 8, 8), num_layers=0)
    with pytest.raises(ValueError, match=r"activation in \['leaky_relu', 'silu'\]"):
        ConvEnergy((1, 8, 8), activation="relu")
