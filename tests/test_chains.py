"""run_chains: output structure, thinning, dtypes, FlowEBM targets, errors; corrected sampling."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Z99, GaussianCase

from pyro_flowebm.infer import HMC, Cycle, IndependenceMH, corrected_sample, run_chains


def standard_normal(q):
    return 0.5 * q.pow(2).sum(-1)


def test_output_of_a_flowebm_run(gaussian_case: GaussianCase):
    idata = run_chains(gaussian_case.ebm, HMC(0.3, 4), 16, 30, 20, seed=0, progress_bar=False)
    post, stats = idata.posterior, idata.sample_stats
    assert post["x"].dims == ("chain", "draw", "x_dim_0") and post["x"].shape == (16, 30, 2)
    z = torch.as_tensor(post["z"].values)
    torch.testing.assert_close(torch.as_tensor(post["x"].values), gaussian_case.transform(z))
    for name in ("acceptance_rate", "step_size", "diverging", "energy", "n_steps", "lp"):
        assert stats[name].dims == ("chain", "draw"), name
    assert (stats["n_steps"].values == 4).all()
    assert stats["diverging"].values.dtype == bool
    torch.testing.assert_close(
        torch.as_tensor(stats["lp"].values), -gaussian_case.ebm.latent_potential(z).detach()
    )
    # The energy is the Hamiltonian: at least the potential, since kinetic energy is >= 0.
    assert (stats["energy"].values >= -stats["lp"].values - 1e-12).all()
    assert post.attrs["sampler"] == "HMC" and json.loads(post.attrs["kernel"])["num_steps"] == 4
    assert post.attrs["space"] == "latent" and post.attrs["seed"] == 0
    assert post.attrs["num_grad_evals"] == 4 * (30 + 20)
    assert 0 < post.attrs["sampling_time"] < 600
    # Each step's size is the adapted one, jittered by up to 10% (HMC's step_size_jitter).
    ratio = stats["step_size"].values / post.attrs["adapted_step_size"]
    assert ratio.min() >= 0.9 and ratio.max() <= 1.1 and ratio.std() > 0
    assert post.attrs["adapted_trajectory_length"] == pytest.approx(
        4 * post.attrs["adapted_step_size"]
    )


def test_thinning_keeps_every_kth_draw():
    init = torch.zeros(4, 2)
    full = run_chains(standard_normal, HMC(0.3, 2, adapt_step_size=False), 4, 12, 0,
                      init=init, seed=1, progress_bar=False)  # fmt: skip
    thinned = run_chains(standard_normal, HMC(0.3, 2, adapt_step_size=False), 4, 4, 0,
                         init=init, thin=3, seed=1, progress_bar=False)  # fmt: skip
    assert (thinned.posterior["x"].values == full.posterior["x"].values[:, 2::3]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_positions(dtype):
    idata = run_chains(standard_normal, Cycle([HMC(0.5, 3), IndependenceMH()]), 8, 10, 10,
                       init=torch.zeros(8, 3, dtype=dtype), seed=2, progress_bar=False)  # fmt: skip
    assert idata.posterior["x"].dtype == {torch.float32: "float32", torch.float64: "float64"}[dtype]


def test_batched_flowebm_runs_as_one_chain_per_row(gaussian_case: GaussianCase):
    ebm = gaussian_case.ebm.expand([3])
    idata = run_chains(ebm, HMC(0.3, 3), 5, 10, 5, seed=3, progress_bar=False)
    assert idata.posterior["x"].shape == (5, 10, 3, 2)
    z = torch.as_tensor(idata.posterior["z"].values)
    torch.testing.assert_close(
        torch.as_tensor(idata.sample_stats["lp"].values),
        -gaussian_case.ebm.latent_potential(z).sum(-1).detach(),
    )


def test_seed_reproduces_and_progress_bar_runs(gaussian_case: GaussianCase, capsys):
    a = run_chains(gaussian_case.ebm, HMC(), 4, 15, 15, seed=4, progress_bar=True)
    b = run_chains(gaussian_case.ebm, HMC(), 4, 15, 15, seed=4, progress_bar=False)
    assert (a.posterior["z"].values == b.posterior["z"].values).all()
    assert "sample" in capsys.readouterr().err


def test_bad_arguments_are_refused(gaussian_case: GaussianCase):
    with pytest.raises(ValueError, match="expected init positions"):
        run_chains(standard_normal, HMC(), 4, 10)
    with pytest.raises(ValueError, match=r"expected init with 4 chains .* got shape \(3, 2\)"):
        run_chains(standard_normal, HMC(), 4, 10, init=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"expected init of shape \(4, 2\), got \(4, 3\)"):
        run_chains(gaussian_case.ebm, HMC(), 4, 10, init=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="expected thin >= 1, got 0"):
        run_chains(gaussian_case.ebm, HMC(), 4, 10, thin=0)
    with pytest.raises(TypeError, match="expected a pyro_flowebm.infer kernel"):
        run_chains(gaussian_case.ebm, object(), 4, 10)
    walled = lambda q: torch.where(q[:, 0] > 0, torch.inf, 0.0)  # noqa: E731
    with pytest.raises(ValueError, match=r"finite potential at every initial point.*\[1\]"):
        run_chains(walled, HMC(), 2, 5, init=torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


def test_corrected_sample_follows_the_tilted_gaussian(gaussian_case: GaussianCase):
    # 4000 independent chains, each 60 latent HMC steps from a backbone draw: the final
    # states are independent draws, so the MCSE is sd / sqrt(n).
    x = corrected_sample(gaussian_case.ebm, (4000,), mcmc_steps=60)
    assert x.shape == (4000, 2)
    n = x.shape[0]
    sd = gaussian_case.cov.diagonal().sqrt()
    assert ((x.mean(0) - gaussian_case.mean).abs() / (sd / n**0.5) < Z99).all()
    centred_sq = (x - gaussian_case.mean) ** 2
    z_var = (centred_sq.mean(0) - gaussian_case.cov.diagonal()).abs() / (centred_sq.std(0) / n**0.5)
    assert (z_var < Z99).all(), z_var
    # Without the correction the draws follow the backbone, which is far from the EBM.
    raw = gaussian_case.ebm.backbone.sample((4000,))
    assert ((raw.mean(0) - gaussian_case.mean).abs() / (sd / n**0.5) > 10).any()
    with pytest.raises(ValueError, match="expected mcmc_steps >= 0"):
        corrected_sample(gaussian_case.ebm, (2,), mcmc_steps=-1)
    # The distribution runs no sampler itself, and says where the correction went.
    with pytest.raises(TypeError, match="corrected_sample"):
        gaussian_case.ebm.sample((2,), mcmc_steps=3)
