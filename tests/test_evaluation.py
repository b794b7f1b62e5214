"""Sampler presets, the evaluation of a run, and the overview plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_flowebm import FlowEBM, datasets, flow_backbone, flows
from pyro_flowebm.app import RunConfig, evaluate_run, plot_overview, train_run
from pyro_flowebm.infer import SAMPLERS, sample_ebm
from pyro_flowebm.nn import MLPEnergy


def small_ebm() -> FlowEBM:
    return FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_preset_returns_chains_of_x_and_z(sampler):
    ebm = small_ebm()
    idata = sample_ebm(ebm, sampler, 3, 6, 6, seed=0, progress_bar=False)
    assert idata.posterior["x"].shape == (3, 6, 2)
    if sampler == "data-hmc":
        assert "z" not in idata.posterior and idata.attrs["space"] == "potential"
    else:
        assert idata.posterior["z"].shape == (3, 6, 2)
    assert bool(torch.isfinite(torch.as_tensor(idata.posterior["x"].values)).all())


def test_an_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="expected sampler in"):
        sample_ebm(small_ebm(), "gibbs", 2, 2, 2, progress_bar=False)


def test_evaluation_against_fresh_toy_draws_and_the_overview_plot(tmp_path):
    config = RunConfig(data="mixture_unequal", num_data=300, num_heldout=150,
                       backbone_steps=20, steps=3, batch_size=32)  # fmt: skip
    train_run(tmp_path, config, progress_bar=False)
    result = evaluate_run(tmp_path, data="mixture_unequal", num_draws=120, plots=True,
                          progress_bar=False)  # fmt: skip
    assert result.reference == {"data": "mixture_unequal", "n": 120, "num_draws": 120}
    assert result.backbone.keys() == result.ebm.keys()
    assert 0.0 <= result.ebm["mode_weight_error"] <= 2.0
    table = result.table().splitlines()
    assert len(table) == 2 + len(result.ebm) + 1 + 3
    assert table[-4].startswith("| held-out NLL (nats per point) |")
    assert table[-1].startswith("log Z = ") and "(is, 16384 particles" in table[-1]
    # The toy's own density is the truth: no model has a lower NLL, beyond the noise
    # (the cross-entropy exceeds the entropy by the KL divergence).
    reference = datasets.load("mixture_unequal", 120, generator=torch.Generator().manual_seed(0))
    truth = -datasets.TOYS["mixture_unequal"].log_prob(reference).double().mean()
    nll = result.likelihood
    assert nll["n"] == 120 and nll["unit"] == "nats per point"
    for model in ("backbone", "ebm"):
        assert nll[model]["value"] > truth - 3 * nll[model]["stderr"]
    gain = nll["improvement"]
    assert gain["value"] == pytest.approx(nll["backbone"]["value"] - nll["ebm"]["value"])
    assert 0 < gain["stderr"] < nll["ebm"]["stderr"]
    assert result.log_z["method"] == "is" and result.log_z["is_khat"] <= 0.7
    assert json.loads((tmp_path / "evaluation.json").read_text())["likelihood"] == nll
    assert (tmp_path / "evaluation.png").is_file()
    np.save(tmp_path / "three.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match="expected --data .*three.npy with 2 columns"):
        evaluate_run(tmp_path, data=str(tmp_path / "three.npy"), plots=False,
                     progress_bar=False)  # fmt: skip


def test_the_overview_has_data_backbone_ebm_and_energy_panels():
    ebm = small_ebm()
    x = torch.randn(50, 2)
    figure = plot_overview(ebm, x, x, x)
    titles = [ax.get_title() for ax in figure.axes[:4]]
    assert titles[0].startswith("data") and titles[1].startswith("backbone")
    assert titles[2].startswith("EBM") and titles[3] == "learned energy E(x)"
    with pytest.raises(ValueError, match="expected 2-D points"):
        plot_overview(ebm, torch.randn(5, 3), x, x)
