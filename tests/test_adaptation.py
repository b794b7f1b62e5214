"""Warm-up adaptation as a separate object: changing potentials, state, cycles, training."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_moments

from pyro_flowebm import FlowEBM, fit_ebm, flow_backbone, flows
from pyro_flowebm.infer import (
    HMC,
    MALA,
    Cycle,
    CycleAdaptation,
    HMCAdaptation,
    IndependenceMH,
    Params,
)
from pyro_flowebm.nn import MLPEnergy


def standard_normal(q):
    return 0.5 * q.pow(2).sum(-1)


def test_one_kernel_state_follows_a_potential_that_changes_every_step(gaussian_case):
    """Annealing U_beta(z) = |z|^2 / 2 + beta E(g(z)) from beta = 0 to 1, with one kernel and
    one adaptation that never ends (as training uses them); with beta fixed at 1 the draws
    follow the analytic tilt."""
    ebm, chains, anneal, keep = gaussian_case.ebm, 512, 100, 200

    def tempered(beta):
        def potential(z):
            half = 0.5 * z.pow(2).sum(-1)
            return half + beta * (ebm.chain_potential(z) - half)

        return potential

    kernel = HMC(step_size=0.3, num_steps=5)
    state = kernel.init(ebm.base_dist.sample((chains,)), tempered(0.0))
    adaptation = kernel.adaptation(state.position, None)
    for t in range(anneal):
        potential = tempered(min(1.0, (t + 1) / anneal))
        # The state holds U and its gradient for the potential it was made with: remade.
        state = kernel.init(state.position, potential)
        state, info = adaptation.step(state, potential)
    assert 0.6 < float(info.accept_prob.mean()) < 0.95  # steered towards 0.8
    draws = []
    for _ in range(keep):
        state, _ = kernel.step(state, ebm.chain_potential, adaptation.params)
        draws.append(ebm.transform(state.position).detach())
    x = torch.stack(draws, 1)  # (chain, draw, 2)
    assert_moments(x, gaussian_case.mean, gaussian_case.cov)


def test_fit_ebm_moves_its_chains_on_each_step_s_potential_with_one_adaptation(monkeypatch):
    """Training steps its HMC kernel through one HMCAdaptation, on the potential of the
    energy as it is at that step."""
    seen = []
    step = HMCAdaptation.step

    def spy(self, state, potential, generator=None):
        seen.append(id(self))
        return step(self, state, potential, generator)

    monkeypatch.setattr(HMCAdaptation, "step", spy)
    ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
    data = torch.randn(200, 2) + 1.0
    history = fit_ebm(ebm, data, 4, batch_size=16, mcmc_steps=3, independence_moves=1,
                      progress_bar=False)  # fmt: skip
    assert len(seen) == 4 * 3 and len(set(seen)) == 1
    # The step sizes of successive training steps come from one adaptation that goes on.
    assert len({round(m["step_size"], 12) for m in history}) > 1


def test_the_adaptation_state_round_trips_and_continues_identically():
    kernel = HMC(step_size=0.5, num_steps=3, per_chain_step_size=True)
    q = torch.randn(64, 2)
    first = kernel.adaptation(q, 40)
    state = kernel.init(q, standard_normal)
    torch.manual_seed(0)
    for _ in range(15):
        state, _ = first.step(state, standard_normal)
    saved = {k: v for k, v in first.state_dict().items()}
    second = kernel.adaptation(q, 40)
    second.load_state_dict(saved)
    rng = torch.get_rng_state()
    a, _ = first.step(state, standard_normal)
    torch.set_rng_state(rng)
    b, _ = second.step(state, standard_normal)
    assert torch.equal(a.position, b.position)
    assert torch.equal(first.params.step_size, second.params.step_size)


def test_warm_up_ends_with_the_averaged_step_size_and_then_stands_still():
    kernel = HMC(step_size=2.0, num_steps=3)
    q = torch.randn(128, 3)
    adaptation = kernel.adaptation(q, 50)
    state = kernel.init(q, standard_normal)
    for _ in range(50):
        state, _ = adaptation.step(state, standard_normal)
    settled = adaptation.params.step_size.clone()
    assert torch.equal(adaptation.log_step, adaptation.dual.get_state()[1])  # the average
    for _ in range(5):
        state, _ = adaptation.step(state, standard_normal)
    assert torch.equal(adaptation.params.step_size, settled)
    assert adaptation.adapted()["step_size"] == pytest.approx(float(settled))


def test_a_cycle_adapts_each_kernel_on_its_own_sub_steps():
    kernel = Cycle([HMC(step_size=2.0, num_steps=2), MALA(step_size=2.0), IndependenceMH()],
                   [2, 1, 1])  # fmt: skip
    q = torch.randn(32, 2)
    adaptation = kernel.adaptation(q, 10)
    assert isinstance(adaptation, CycleAdaptation)
    hmc, mala, imh = adaptation.members
    assert (hmc.num_warmup, mala.num_warmup) == (20, 10)
    state = kernel.init(q, standard_normal)
    for _ in range(10):
        state, info = adaptation.step(state, standard_normal)
    assert info.num_grad_evals == 2 * 2 + 1 + 1
    assert hmc.t == 20 and mala.t == 10 and imh.adapted() == {}
    hmc_params, mala_params, imh_params = adaptation.params
    assert float(hmc_params.step_size) < 2.0 and float(mala_params.step_size) < 2.0
    assert imh_params is None
    assert [k.get("step_size") is not None for k in adaptation.adapted()["kernels"]] == [
        True, True, False,
    ]  # fmt: skip


def test_kernels_take_their_parameters_and_generator_as_arguments():
    kernel = HMC(step_size=0.4, num_steps=4)
    q = torch.randn(16, 2)
    state = kernel.init(q, standard_normal)
    params = Params(torch.full((16,), 0.4), torch.ones(2), 4)
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(3)
        runs.append(kernel.step(state, standard_normal, params, generator)[0].position)
    assert torch.equal(runs[0], runs[1])  # the generator, not the global stream, decides
    longer = kernel.step(state, standard_normal, params._replace(num_steps=7))[1]
    assert longer.num_grad_evals == 7


def test_an_adaptation_without_end_refuses_what_needs_a_warm_up_length():
    q = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="expected a warm-up length for mass matrix"):
        HMC(adapt_mass_matrix=True).adaptation(q, None)
    with pytest.raises(ValueError, match="ChEES"):
        HMC(chees=True).adaptation(q, None)
