"""Vectorized kernels: exactness by z-tests with known truth, ChEES, divergences, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import GaussianCase, assert_moments, mcse_z_scores

from pyro_flowebm.infer import HMC, MALA, ULA, Cycle, IndependenceMH, run_chains, value_and_grad

EXACT_KERNELS = {
    "hmc": lambda: HMC(step_size=0.3, num_steps=5),
    "hmc-per-chain-mass": lambda: HMC(
        step_size=0.3, num_steps=5, per_chain_step_size=True, adapt_mass_matrix=True
    ),
    "hmc-chees": lambda: HMC(chees=True),
    "mala": lambda: MALA(step_size=0.5),
    "cycle": lambda: Cycle([HMC(step_size=0.3, num_steps=3), IndependenceMH()], [2, 1]),
}

# A banana: x1 ~ N(0, S1^2), x2 | x1 ~ N(B (x1^2 - S1^2), 1).
# E[x] = 0, Var x1 = S1^2, Var x2 = 1 + 2 B^2 S1^4.
S1, B = 1.0, 0.5
BANANA_MEAN = torch.zeros(2)
BANANA_COV = torch.diag(torch.tensor([S1**2, 1 + 2 * B**2 * S1**4]))


def banana_draws(n):
    x1 = S1 * torch.randn(n)
    return torch.stack([x1, B * (x1**2 - S1**2) + torch.randn(n)], dim=-1)


def banana_potential(q):
    x1, x2 = q[..., 0], q[..., 1]
    return 0.5 * x1**2 / S1**2 + 0.5 * (x2 - B * (x1**2 - S1**2)) ** 2


@pytest.mark.parametrize("name", [*EXACT_KERNELS, "independence"])
def test_kernel_samples_the_tilted_gaussian(gaussian_case: GaussianCase, name):
    kernel = EXACT_KERNELS[name]() if name != "independence" else IndependenceMH()
    idata = run_chains(gaussian_case.ebm, kernel, 256, 200, 300, seed=2, progress_bar=False)
    x = torch.as_tensor(idata.posterior["x"].values)
    assert_moments(x, gaussian_case.mean, gaussian_case.cov)
    assert int(idata.sample_stats["diverging"].sum()) == 0


@pytest.mark.parametrize("name", sorted(EXACT_KERNELS))
def test_kernel_samples_the_banana(name):
    # Chains start at exact draws: any drift away from the banana's moments is the kernel's.
    kernel = EXACT_KERNELS[name]()
    init = banana_draws(512)
    idata = run_chains(
        banana_potential, kernel, 512, 200, 200, init=init, seed=3, progress_bar=False
    )
    x = torch.as_tensor(idata.posterior["x"].values)
    assert_moments(x, BANANA_MEAN, BANANA_COV)


def test_ula_has_its_known_discretization_bias():
    # On N(0, s^2), ULA is x' = a x + eps xi with a = 1 - eps^2 / (2 s^2): its stationary
    # law is N(0, eps^2 / (1 - a^2)), not N(0, s^2). Both facts are checked.
    s, eps = 1.0, 0.8
    a = 1 - eps**2 / (2 * s**2)
    stationary = eps**2 / (1 - a**2)
    init = torch.randn(1024, 1)
    idata = run_chains(
        lambda q: 0.5 * q.pow(2).sum(-1) / s**2, ULA(eps), 1024, 100, 100, init=init, seed=4,
        progress_bar=False,
    )  # fmt: skip
    x = torch.as_tensor(idata.posterior["x"].values)
    assert_moments(x, torch.zeros(1), torch.full((1, 1), stationary))
    z_exact = mcse_z_scores(x, torch.zeros(1), torch.full((1, 1), s**2))
    assert (z_exact["variance"] > 10).all(), z_exact


def test_chees_finds_the_first_maximum_on_a_standard_normal():
    # With exact dynamics and jitter u ~ U(0, 1), ChEES on N(0, I) is proportional to
    # 1/2 - sin(2T) / (4T), first maximized where tan(2T) = 2T: T* = 2.2467. The leapfrog
    # rotates at omega = (2 / eps) asin(eps / 2) and rounds u T up to whole steps (half a
    # step longer on average), so the adapted T should be T* / omega - eps / 2.
    kernel = HMC(chees=True, init_trajectory_length=0.5, target_accept_prob=0.95)
    idata = run_chains(
        lambda q: 0.5 * q.pow(2).sum(-1), kernel, 512, 10, 1500, init=torch.randn(512, 10),
        seed=5, progress_bar=False,
    )  # fmt: skip
    eps = idata.posterior.attrs["adapted_step_size"]
    omega = 2 / eps * math.asin(eps / 2)
    expected = 2.2467 / omega - eps / 2
    assert idata.posterior.attrs["adapted_trajectory_length"] == pytest.approx(expected, rel=0.1)


BAD_CHAINS = torch.tensor([1, 5, 6])


def poisoned_potential(q, poison):
    """0.5 |q|^2; with poison, NaN or -inf in chains 1, 5 and 6 anywhere but at the origin."""
    u = 0.5 * q.pow(2).sum(-1)
    if poison:
        moved = q[BAD_CHAINS].abs().sum(-1) > 0
        values = torch.where(moved, torch.tensor([math.nan, -math.inf, math.nan]), 0.0)
        u = u.index_put((BAD_CHAINS,), values)
    return u


@pytest.mark.parametrize(
    "make, warmup",
    [
        (lambda: HMC(0.3, 4), 0),
        (lambda: HMC(0.3, 4, per_chain_step_size=True), 20),
        (lambda: MALA(0.5, per_chain_step_size=True), 20),
        (lambda: ULA(0.3), 20),
        (IndependenceMH, 20),
        (lambda: Cycle([HMC(0.3, 2, per_chain_step_size=True), IndependenceMH()]), 20),
    ],
    ids=["hmc-shared-no-warmup", "hmc-per-chain", "mala-per-chain", "ula", "imh", "cycle"],
)
def test_non_finite_potential_in_some_chains_leaves_the_others_untouched(make, warmup):
    init = torch.zeros(8, 2)
    good = [c for c in range(8) if c not in BAD_CHAINS]
    init[good] = 1.0
    runs = [
        run_chains(
            lambda q, p=poison: poisoned_potential(q, p),
            make(),
            8,
            50,
            warmup,
            init=init,
            seed=6,
            progress_bar=False,
        )  # fmt: skip
        for poison in (False, True)
    ]
    clean, poisoned = runs
    x_clean, x_bad = clean.posterior["x"].values, poisoned.posterior["x"].values
    assert (x_clean[good] == x_bad[good]).all()  # bit for bit
    assert (x_bad[BAD_CHAINS.numpy()] == 0).all()  # stuck at the start, never NaN
    stats = poisoned.sample_stats
    assert stats["diverging"].values[BAD_CHAINS.numpy()].all()
    assert not stats["diverging"].values[good].any()
    for name in ("acceptance_rate", "energy", "lp"):
        assert torch.isfinite(torch.as_tensor(stats[name].values)).all(), name


def test_compiled_step_matches_eager():
    potential = lambda q: 0.5 * q.pow(2).sum(-1)  # noqa: E731
    out = []
    for compile in (False, True):
        torch.manual_seed(8)
        kernel = HMC(0.3, 3, compile=compile)
        state = kernel.init(torch.ones(16, 2), potential)
        params = kernel.init_params(state.position)
        for _ in range(3):
            state, _ = kernel.step(state, potential, params)
        out.append(state.position)
    torch.testing.assert_close(out[0], out[1])


def test_value_and_grad_and_argument_errors():
    u, g = value_and_grad(lambda q: (q**3).sum(-1), torch.full((2, 3), 2.0))
    assert u.tolist() == [24.0, 24.0] and (g == 12.0).all()
    with pytest.raises(ValueError, match=r"expected the potential to return shape \(2,\)"):
        value_and_grad(lambda q: q, torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected step_size > 0"):
        HMC(step_size=0.0)
    with pytest.raises(ValueError, match="target_accept_prob"):
        HMC(target_accept_prob=1.0)
    with pytest.raises(ValueError, match=r"expected 0 <= step_size_jitter < 1, got 1.0"):
        HMC(step_size_jitter=1.0)
    with pytest.raises(TypeError, match="MALA takes exactly one leapfrog step"):
        MALA(num_steps=3)
    with pytest.raises(ValueError, match="one repeat count per kernel"):
        Cycle([HMC()], [1, 2])


@pytest.mark.parametrize("kernel", [HMC(0.5, 4), MALA(0.5), HMC(0.5, 4, chees=True)])
def test_float32_chains_stay_float32_on_a_float64_potential(kernel):
    """A Pyro model with float64 data and a float32 prior computes U in float64: the step
    size and the chains must stay in the positions' dtype (the flow is float32)."""

    def potential(q: torch.Tensor) -> torch.Tensor:
        assert q.dtype == torch.float32
        return 0.5 * q.double().pow(2).sum(-1)

    init = torch.zeros(8, 2, dtype=torch.float32)
    idata = run_chains(potential, kernel, 8, 5, warmup_steps=5, init=init, progress_bar=False)
    assert str(idata.posterior["x"].dtype) == "float32"
