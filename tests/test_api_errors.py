"""Bad inputs at the Python API: each is refused early, with the exception type, the
argument's name and the value given in the message."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pyro_flowebm import FlowEBM, fit_ebm, flow_backbone, flows
from pyro_flowebm.infer import (
    HMC,
    MALA,
    ULA,
    IndependenceMH,
    corrected_sample,
    latent_nuts,
    run_chains,
    sample_ebm,
)
from pyro_flowebm.nn import MLPEnergy

NAN, INF = math.nan, math.inf
# Parameters are made at collection, before conftest sets float64 as the default.
F64 = {"dtype": torch.float64}


def backbone(dtype: torch.dtype = torch.float64):
    return flow_backbone(flows.realnvp(2, 2, 8).to(dtype), (2,))


def small_ebm(energy=None, dtype: torch.dtype = torch.float64) -> FlowEBM:
    return FlowEBM(backbone(dtype), energy if energy is not None else MLPEnergy(2, 8).to(dtype))


def quadratic(q: Tensor) -> Tensor:
    return 0.5 * q.pow(2).sum(-1)


class Detached(nn.Module):
    """A quadratic energy whose forward detaches its output: no gradient reaches x."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return (self.scale * x.pow(2).sum(-1)).detach()


class NoGrad(nn.Module):
    """The same energy computed under ``torch.no_grad()``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLPEnergy(2, 8)
        nn.init.normal_(self.net.net[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)


class InputDetached(nn.Module):
    """An energy that detaches its input: its output carries a gradient to its parameters,
    none to x."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLPEnergy(2, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.detach())


KERNELS = {"HMC": HMC, "MALA": MALA, "ULA": ULA}
BAD_STEP_SIZES = [
    (NAN, ValueError, "got nan"),
    (INF, ValueError, "got inf"),
    (-INF, ValueError, "got -inf"),
    (-1.0, ValueError, "got -1.0"),
    (0.0, ValueError, "got 0.0"),
    ("a", TypeError, "got str 'a'"),
    (True, TypeError, "got bool True"),
    (None, TypeError, "got NoneType None"),
]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize(("value", "error", "given"), BAD_STEP_SIZES)
def test_a_bad_step_size_is_refused_by_every_kernel(kernel, value, error, given):
    with pytest.raises(error, match=f"step_size.*{given}"):
        KERNELS[kernel](step_size=value)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("value", [NAN, INF, -0.5, 0])
def test_a_step_size_set_after_construction_is_checked(kernel, value):
    k = KERNELS[kernel](step_size=0.1)
    with pytest.raises(ValueError, match=f"expected step_size > 0, got {value}"):
        k.step_size = value
    assert k.step_size == 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"step_size": NAN, "per_chain_step_size": True}, ValueError, "step_size > 0, got nan"),
        ({"step_size": INF, "chees": True}, ValueError, "step_size > 0, got inf"),
        ({"chees": True, "init_trajectory_length": NAN}, ValueError, "trajectory_length > 0"),
        ({"num_steps": 0}, ValueError, "num_steps >= 1, got 0"),
        ({"num_steps": 2.5}, TypeError, "integer num_steps, got float 2.5"),
        ({"max_energy_error": NAN}, ValueError, "max_energy_error > 0, got nan"),
        ({"target_accept_prob": NAN}, ValueError, "target_accept_prob < 1, got nan"),
        ({"step_size_jitter": NAN}, ValueError, "step_size_jitter >= 0, got nan"),
        ({"step_size_jitter": "a"}, TypeError, "number step_size_jitter, got str"),
    ],
)
def test_bad_hmc_settings_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        HMC(**kwargs)


def test_a_nan_step_size_set_on_a_kernel_never_reaches_the_chains():
    """The hostile case: a NaN step size used to give chains frozen at their start."""
    kernel = HMC(0.1, 3)
    with pytest.raises(ValueError, match="step_size"):
        kernel.step_size = NAN
    idata = run_chains(quadratic, kernel, 4, 5, init=torch.randn(4, 2), progress_bar=False)
    x = torch.as_tensor(idata.posterior["x"].values)
    assert torch.isfinite(x).all() and (x[:, 1:] != x[:, :1]).any()


COUNTS = [
    ("num_chains", 0, ValueError, "num_chains >= 1, got 0"),
    ("num_chains", -1, ValueError, "num_chains >= 1, got -1"),
    ("num_chains", 2.5, TypeError, "integer num_chains, got float 2.5"),
    ("num_chains", True, TypeError, "integer num_chains, got bool True"),
    ("num_samples", 0, ValueError, "num_samples >= 1, got 0"),
    ("num_samples", "3", TypeError, "integer num_samples, got str '3'"),
    ("warmup_steps", -1, ValueError, "warmup_steps >= 0, got -1"),
    ("thin", 0, ValueError, "thin >= 1, got 0"),
    ("thin", 1.0, TypeError, "integer thin, got float 1.0"),
    ("seed", -1, ValueError, "seed >= 0, got -1"),
    ("seed", 0.5, TypeError, "integer seed, got float 0.5"),
]


@pytest.mark.parametrize(("name", "value", "error", "message"), COUNTS)
def test_bad_counts_are_refused_by_run_chains(name, value, error, message):
    kwargs = {"num_chains": 2, "num_samples": 3, "warmup_steps": 0, "thin": 1, "seed": 0}
    kwargs[name] = value
    init = torch.zeros(2, 2)
    with pytest.raises(error, match=message):
        run_chains(quadratic, HMC(), init=init, progress_bar=False, **kwargs)


@pytest.mark.parametrize(("name", "value", "error", "message"), COUNTS)
@pytest.mark.parametrize("sampler", ["hmc", "data-hmc", "nuts"])
def test_bad_counts_are_refused_by_sample_ebm(sampler, name, value, error, message):
    kwargs = {"num_chains": 2, "num_samples": 3, "warmup_steps": 0, "thin": 1, "seed": 0}
    kwargs[name] = value
    with pytest.raises(error, match=message):
        sample_ebm(small_ebm(), sampler, progress_bar=False, **kwargs)


@pytest.mark.parametrize(
    ("init", "error", "message"),
    [
        (torch.tensor([[0.0, NAN], [0.0, 0.0]], **F64), ValueError, "expected finite init, got 1"),
        (torch.zeros(2, 3, **F64), ValueError, r"init of shape \(2, 2\), got \(2, 3\)"),
        (torch.zeros(3, 2, **F64), ValueError, r"init of shape \(2, 2\), got \(3, 2\)"),
        (torch.zeros(2, 2, dtype=torch.float32), TypeError, "float64, got torch.float32"),
        (torch.zeros(2, 2, dtype=torch.long), TypeError, "got dtype torch.int64"),
        ([[0.0, 0.0], [0.0, 0.0]], TypeError, "init as a floating-point tensor, got list"),
    ],
)
def test_bad_init_is_refused_for_a_flowebm(init, error, message):
    with pytest.raises(error, match=message):
        run_chains(small_ebm(), HMC(), 2, 3, init=init, progress_bar=False)


def test_float64_init_on_a_float32_model_names_both_dtypes():
    ebm = small_ebm(dtype=torch.float32)
    init = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"init of dtype torch.float32, got torch.float64"):
        run_chains(ebm, HMC(), 2, 3, init=init, progress_bar=False)
    with pytest.raises(TypeError, match=r"init of dtype torch.float32, got torch.float64"):
        latent_nuts(ebm, 3, 0, 2, init=init, progress_bar=False)


@pytest.mark.parametrize(
    ("potential", "error", "message"),
    [
        (lambda q: 1.0, TypeError, r"potential to return a tensor of shape \(2,\), got float"),
        (lambda q: q.pow(2).sum(-1, keepdim=True), ValueError, r"shape \(2,\).*got \(2, 1\)"),
        (lambda q: q.sum(-1).long(), TypeError, "floating-point values, got torch.int64"),
        (lambda q: quadratic(q).detach(), ValueError, "potential to be differentiable"),
        (lambda q: torch.as_tensor(quadratic(q).tolist()), ValueError, "requires_grad=False"),
    ],
)
def test_bad_potential_functions_are_refused_at_the_first_evaluation(potential, error, message):
    init = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    with pytest.raises(error, match=message):
        run_chains(potential, HMC(), 2, 3, init=init, progress_bar=False)


def test_an_integer_init_for_a_potential_function_is_refused():
    init = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="init as a floating-point tensor, got dtype torch.int64"):
        run_chains(quadratic, HMC(), 2, 3, init=init, progress_bar=False)


BAD_ENERGIES = {
    "int64": (lambda x: x.sum(-1).long(), TypeError, "dtype torch.float64.*got torch.int64"),
    "float32": (lambda x: x.pow(2).sum(-1).float(), TypeError, "got torch.float32"),
    "wrong shape": (lambda x: x, ValueError, r"energy to return shape \(\d+,\)"),
    "no tensor": (lambda x: 0.0, TypeError, "energy to return a tensor.*got float"),
    "detached": (Detached, ValueError, "energy to be differentiable"),
    "no_grad": (NoGrad, ValueError, "energy to be differentiable"),
    "input detached": (InputDetached, ValueError, r"energy to be differentiable.*=True\)"),
    "python values": (
        lambda x: torch.as_tensor(x.pow(2).sum(-1).tolist(), dtype=x.dtype),
        ValueError,
        "energy to be differentiable",
    ),
}


def energy_named(name: str):
    energy, error, message = BAD_ENERGIES[name]
    return (energy() if isinstance(energy, type) else energy), error, message


@pytest.mark.parametrize("name", list(BAD_ENERGIES))
def test_bad_energies_are_refused_before_latent_mcmc(name):
    energy, error, message = energy_named(name)
    with pytest.raises(error, match=message):
        run_chains(small_ebm(energy), HMC(), 2, 3, progress_bar=False)


@pytest.mark.parametrize("name", ["int64", "detached", "no_grad"])
@pytest.mark.parametrize("sampler", ["data-hmc", "nuts", "hmc-imh"])
def test_bad_energies_are_refused_by_every_preset(sampler, name):
    energy, error, message = energy_named(name)
    with pytest.raises(error, match=message):
        sample_ebm(small_ebm(energy), sampler, 2, 3, 0, progress_bar=False)


@pytest.mark.parametrize("name", ["detached", "no_grad", "input detached"])
def test_bad_energies_are_refused_by_corrected_sample_and_training(name):
    energy, error, message = energy_named(name)
    with pytest.raises(error, match=message):
        corrected_sample(small_ebm(energy), (4,), mcmc_steps=2)
    with pytest.raises(error, match=message):
        fit_ebm(small_ebm(energy), torch.randn(20, 2), 2, progress_bar=False)


def test_log_prob_refuses_an_integer_or_wrongly_shaped_energy():
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="energy to return dtype torch.float64"):
        small_ebm(lambda x: x.sum(-1).long()).log_prob(x)
    with pytest.raises(ValueError, match=r"energy to return shape \(3,\) or \(3, 1\).*\(3, 2\)"):
        small_ebm(lambda x: x).log_prob(x)


@pytest.mark.parametrize(
    "energy",
    [
        lambda x: torch.zeros(x.shape[0], dtype=x.dtype),  # constant, no parameters
        lambda x: torch.where(x[:, 0] > 100, INF, 0.0).to(x.dtype),  # a wall, no gradient
        lambda x: x.pow(2).sum(-1),  # differentiable, no parameters
    ],
)
def test_constant_and_parameterless_energies_stay_legal(energy):
    ebm = small_ebm(energy)
    idata = run_chains(ebm, IndependenceMH(), 4, 3, seed=0, progress_bar=False)
    assert idata.posterior["x"].shape == (4, 3, 2)
    ebm.check_energy(torch.tensor([[0.0, 0.0], [200.0, 0.0]]))  # constant where finite


def test_an_untrained_model_passes_and_the_check_leaves_buffers_alone():
    ebm = small_ebm()  # MLPEnergy: zero output at start, still differentiable
    ebm.energy.register_buffer("count", torch.zeros(()))
    hook = ebm.energy.register_forward_hook(lambda m, i, o: m.count.add_(1) and None)
    ebm.check_energy(torch.randn(5, 2))
    hook.remove()
    assert ebm.energy.count.item() == 0
    run_chains(ebm, HMC(0.1, 2), 2, 3, seed=0, progress_bar=False)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (torch.full((10, 2), NAN), {}, ValueError, "expected finite data, got 20 non-finite"),
        (torch.zeros(10, 3), {}, ValueError, r"data of shape \(n, 2\), got \(10, 3\)"),
        (torch.zeros(10), {}, ValueError, r"data of shape \(n, 2\), got \(10,\)"),
        (torch.randn(10, 2), {"lr": NAN}, ValueError, "expected lr > 0, got nan"),
        (torch.randn(10, 2), {"lr": 0.0}, ValueError, "expected lr > 0, got 0.0"),
        (torch.randn(10, 2), {"lr": "fast"}, TypeError, "number lr, got str 'fast'"),
        (torch.randn(10, 2), {"batch_size": 0}, ValueError, "batch_size >= 1, got 0"),
        (torch.randn(10, 2), {"batch_size": 8.0}, TypeError, "integer batch_size, got float"),
        (torch.randn(10, 2), {"step_size": INF}, ValueError, "step_size > 0, got inf"),
        (torch.randn(10, 2), {"steps": True}, TypeError, "integer steps, got bool True"),
    ],
)
def test_fit_ebm_refuses_bad_data_and_settings(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        fit_ebm(small_ebm(), data, **{"steps": 2, "progress_bar": False, **kwargs})


def test_corrected_sample_refuses_a_kernel_that_is_not_one():
    with pytest.raises(TypeError, match="expected a pyro_flowebm.infer kernel, got str"):
        corrected_sample(small_ebm(), (4,), mcmc_steps=2, kernel="hmc")


def test_fit_ebm_refuses_a_model_that_is_not_a_flowebm():
    with pytest.raises(TypeError, match="expected a FlowEBM, got TransformedDistribution"):
        fit_ebm(backbone(), torch.randn(10, 2), 2, progress_bar=False)


def test_sample_ebm_refuses_an_unknown_sampler_and_a_non_flowebm():
    with pytest.raises(ValueError, match=r"expected sampler in \[.*'hmc'.*\], got 'mala'"):
        sample_ebm(small_ebm(), "mala", 2, 3, 0, progress_bar=False)
    with pytest.raises(TypeError, match="expected a FlowEBM, got function"):
        sample_ebm(quadratic, "hmc", 2, 3, 0, progress_bar=False)
    with pytest.raises(ValueError, match="expected thin=1 with the nuts sampler, got 2"):
        sample_ebm(small_ebm(), "nuts", 2, 3, 0, thin=2, progress_bar=False)


def test_flowebm_refuses_a_bad_backbone_or_energy_at_construction():
    with pytest.raises(TypeError, match="expected backbone to be a .* got Normal"):
        FlowEBM(torch.distributions.Normal(0.0, 1.0), MLPEnergy(2, 8))
    with pytest.raises(TypeError, match="expected a callable energy, got int"):
        FlowEBM(backbone(), 3)
