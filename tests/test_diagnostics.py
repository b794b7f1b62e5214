"""Tests for pyro_flowebm.diagnostics: conversion, mode coverage, mode R-hat and plots."""

import matplotlib

matplotlib.use("Agg")

import json

import numpy as np
import pytest
import torch

from pyro_flowebm.diagnostics import (
    MixingSummary,
    assign_modes,
    mixing_summary,
    plot_chains,
    to_inference_data,
)
from pyro_flowebm.io import arviz

# Four well-separated modes (sd 0.3, distance 8): a draw lands nearest its own centre
# except with probability far below 1e-12.
MODES = np.array([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
SD = 0.3


def _az():
    return arviz()


@pytest.fixture
def plt():
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _mixture(rng, labels):
    """Draws at MODES[labels] plus N(0, SD^2) noise; labels has shape (chain, draw)."""
    return MODES[labels] + SD * rng.normal(size=(*labels.shape, 2))


def _sticky_labels(rng, n_chains, n_draws, stay):
    """Markov chain on the 4 modes that stays with probability ``stay``, else jumps."""
    labels = np.empty((n_chains, n_draws), dtype=np.int64)
    labels[:, 0] = rng.integers(4, size=n_chains)
    for t in range(1, n_draws):
        jump = rng.random(n_chains) > stay
        labels[:, t] = np.where(jump, rng.integers(4, size=n_chains), labels[:, t - 1])
    return labels


# --------------------------------------------------------------------------- conversion


def test_to_inference_data_dims_and_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 20, 2))
    z = rng.normal(size=(3, 20, 4, 5))
    lp = rng.normal(size=(3, 20))
    idata = to_inference_data({"x": x, "z": z}, {"lp": lp, "diverging": lp > 1.5})
    assert idata.posterior["x"].dims == ("chain", "draw", "x_dim_0")
    assert idata.posterior["z"].dims == ("chain", "draw", "z_dim_0", "z_dim_1")
    assert idata.sample_stats["lp"].dims == ("chain", "draw")
    assert idata.posterior["z"].shape == (3, 20, 4, 5)
    np.testing.assert_array_equal(idata.posterior["x"].to_numpy(), x)
    np.testing.assert_array_equal(idata.sample_stats["diverging"].to_numpy(), lp > 1.5)
    np.testing.assert_array_equal(idata.posterior["chain"].to_numpy(), np.arange(3))
    np.testing.assert_array_equal(idata.posterior["draw"].to_numpy(), np.arange(20))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_inference_data_accepts_tensors(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 10, 3, dtype=dtype, requires_grad=True)
    lp = -(x**2).sum(-1)  # part of a graph: must be detached
    idata = to_inference_data({"x": x}, {"lp": lp})
    expected_dtype = np.float32 if dtype == torch.float32 else np.float64
    assert idata.posterior["x"].dtype == expected_dtype
    np.testing.assert_array_equal(idata.posterior["x"].to_numpy(), x.detach().numpy())
    np.testing.assert_array_equal(idata.sample_stats["lp"].to_numpy(), lp.detach().numpy())


def test_to_inference_data_netcdf_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 30, 2))
    lp = rng.normal(size=(2, 30))
    attrs = {
        "sampler": "latent_nuts",
        "seed": 3,
        "step_size": 0.25,
        "adapt": True,
        "mass": None,
        "shape": (1, 2),
        "config": {"a": 1, "b": [1.5, 2]},
    }
    idata = to_inference_data({"x": x}, {"lp": lp}, attrs=attrs)
    path = tmp_path / "chains.nc"
    idata.to_netcdf(str(path))
    back = _az().from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["x"].to_numpy(), x)
    np.testing.assert_array_equal(back.sample_stats["lp"].to_numpy(), lp)
    expected = {
        "sampler": "latent_nuts",
        "seed": 3,
        "step_size": 0.25,
        "adapt": 1,
        "mass": "none",
        "shape": "[1, 2]",
        "config": '{"a": 1, "b": [1.5, 2]}',
    }
    for group in (back.posterior, back.sample_stats):
        assert {k: group.attrs[k] for k in expected} == expected
    assert json.loads(back.posterior.attrs["config"]) == attrs["config"]
    assert attrs["adapt"] is True and attrs["mass"] is None  # the caller's dict is untouched


def test_to_inference_data_errors():
    with pytest.raises(ValueError, match=r"expected posterior 'x' with leading \(chain, draw\)"):
        to_inference_data({"x": np.zeros(5)})
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        to_inference_data({"x": np.zeros(5)})
    with pytest.raises(ValueError, match="empty"):
        to_inference_data({})
    with pytest.raises(ValueError, match=r"posterior 'y' with \(chain, draw\) = \(2, 10\)"):
        to_inference_data({"x": np.zeros((2, 10, 2)), "y": np.zeros((2, 9))})
    with pytest.raises(ValueError, match=r"sample_stats 'lp' .* got shape \(3, 10\)"):
        to_inference_data({"x": np.zeros((2, 10, 2))}, {"lp": np.zeros((3, 10))})
    with pytest.raises(ValueError, match="sample_stats 'lp' with leading"):
        to_inference_data({"x": np.zeros((2, 10, 2))}, {"lp": np.zeros(10)})


# ------------------------------------------------------------------------- assign_modes


def test_assign_modes_hand_made_points():
    points = np.array([[-3.0, -5.0], [-3.9, 3.0], [0.5, -0.1], [5.0, 5.0], [0.1, 0.2]])
    np.testing.assert_array_equal(assign_modes(points, MODES), [0, 1, 2, 3, 3])
    # leading axes are kept; tensors are accepted
    batch = torch.tensor(points).reshape(1, 5, 2).expand(2, 5, 2)
    labels = assign_modes(batch, torch.tensor(MODES))
    assert labels.shape == (2, 5)
    np.testing.assert_array_equal(labels[1], [0, 1, 2, 3, 3])


def test_assign_modes_errors():
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 2\)"):
        assign_modes(np.zeros((4, 3)), MODES)
    with pytest.raises(ValueError, match=r"modes of shape \(K, d\)"):
        assign_modes(np.zeros((4, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        assign_modes(np.array([[np.nan, 0.0]]), MODES)


# ---------------------------------------------------------------------- mixing_summary


def test_mixing_summary_iid_mixture_mixes():
    rng = np.random.default_rng(2)
    n_chains, n_draws = 4, 1000
    labels = rng.integers(4, size=(n_chains, n_draws))
    s = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), MODES)
    assert isinstance(s, MixingSummary)
    assert s.modes_visited.tolist() == [4, 4, 4, 4]
    assert s.unvisited == []
    assert s.mode_rhat < 1.05
    # occupancy of each (chain, mode) is Binomial(n_draws, 1/4) / n_draws
    se = np.sqrt(0.25 * 0.75 / n_draws)
    assert s.occupancy.shape == (4, 4)
    assert np.all(np.abs(s.occupancy.to_numpy() - 0.25) < 4 * se)
    np.testing.assert_allclose(s.occupancy.to_numpy().sum(axis=1), 1.0)
    # the nearest-mode labels are the generating components, so transitions are known
    np.testing.assert_array_equal(s.transitions, (np.diff(labels, axis=1) != 0).sum(axis=1))
    assert s.total_transitions == int(s.transitions.sum())
    text = str(s)
    assert "every mode was visited" in text and "never visited" not in text


def test_mixing_summary_each_chain_stuck_in_its_own_mode():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4)[:, None], 300, axis=1)
    s = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), MODES)
    assert s.mode_rhat > 1.5
    assert s.modes_visited.tolist() == [1, 1, 1, 1]
    assert s.transitions.tolist() == [0, 0, 0, 0]
    assert s.unvisited == []
    np.testing.assert_array_equal(s.occupancy.to_numpy(), np.eye(4))
    assert "chains disagree" in str(s)


def test_mixing_summary_all_chains_in_one_mode():
    # The failure R-hat cannot see: the coordinates' R-hat is fine, 3 of 4 modes are missed.
    rng = np.random.default_rng(4)
    labels = np.zeros((4, 500), dtype=np.int64)
    s = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), MODES)
    assert s.unvisited == [1, 2, 3]
    assert np.all(s.table["r_hat"] < 1.05)
    assert s.modes_visited.tolist() == [1, 1, 1, 1]
    assert np.isnan(s.mode_rhat)  # no indicator varies
    assert "modes never visited by any chain: [1, 2, 3]" in str(s)


def test_mode_rhat_plumbing_on_sticky_chains():
    # Chains that switch modes rarely: compare with ArviZ on the generating labels, which
    # checks the (chain, draw) order and the nearest-mode assignment.
    rng = np.random.default_rng(5)
    labels = _sticky_labels(rng, n_chains=4, n_draws=400, stay=0.99)
    s = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), MODES)
    az = _az()
    expected = max(
        float(az.rhat((labels == k).astype(float)))
        for k in range(4)
        if (labels == k).any() and not (labels == k).all()
    )
    assert s.mode_rhat == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(s.transitions, (np.diff(labels, axis=1) != 0).sum(axis=1))
    np.testing.assert_array_equal(s.modes_visited, [len(np.unique(row)) for row in labels])
    # a label R-hat would depend on the arbitrary numbering; the indicator R-hat does not
    perm = np.array([2, 0, 3, 1])
    relabelled = MODES[np.argsort(perm)]
    s_perm = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), relabelled)
    assert s_perm.mode_rhat == pytest.approx(s.mode_rhat, rel=1e-12)


def test_labels_given_directly_equal_labels_from_mode_centres():
    """Image chains have classes, not centres: labels passed in give the same mode section
    as the nearest-centre labels of the same draws."""
    rng = np.random.default_rng(7)
    labels = _sticky_labels(rng, n_chains=4, n_draws=300, stay=0.98)
    idata = to_inference_data({"x": _mixture(rng, labels)})
    by_centres = mixing_summary(idata, MODES)
    by_labels = mixing_summary(idata, labels=labels, num_modes=4)
    assert by_labels.mode_rhat == pytest.approx(by_centres.mode_rhat, rel=1e-12)
    np.testing.assert_array_equal(by_labels.transitions, by_centres.transitions)
    np.testing.assert_array_equal(by_labels.occupancy.to_numpy(), by_centres.occupancy.to_numpy())
    # a class no draw has is reported as never visited
    assert mixing_summary(idata, labels=labels, num_modes=6).unvisited[-2:] == [4, 5]


def test_bad_labels_are_refused():
    idata = to_inference_data({"x": np.random.default_rng(8).normal(size=(2, 10, 2))})
    with pytest.raises(
        ValueError, match=r"shape \(chain, draw\) = \(2, 10\), got int64 of shape \(2, 9\)"
    ):
        mixing_summary(idata, labels=np.zeros((2, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels in 0..2, got 0..3"):
        mixing_summary(idata, labels=np.arange(20).reshape(2, 10) % 4, num_modes=3)
    with pytest.raises(ValueError, match="modes or labels, got both"):
        mixing_summary(idata, MODES, labels=np.zeros((2, 10), dtype=np.int64))


def test_summary_table_rhat():
    rng = np.random.default_rng(6)
    same = rng.normal(size=(4, 500, 2))
    shifted = same + np.array([0.0, 2.0, 4.0, 6.0])[:, None, None]
    s_same = mixing_summary(to_inference_data({"x": same}))
    s_shift = mixing_summary(to_inference_data({"x": shifted}))
    assert s_same.occupancy is None and s_same.mode_rhat is None
    assert list(s_same.table.index) == ["x[0]", "x[1]"]
    for column in ("mean", "sd", "hdi_3%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail"):
        assert column in s_same.table.columns
    assert np.all(s_same.table["r_hat"] < 1.02)
    assert np.all(s_shift.table["r_hat"] > 1.5)
    # iid draws: bulk ESS is of the order of the 2000 draws
    assert np.all(s_same.table["ess_bulk"] > 1000)
    # MCSE of the mean of iid N(0, 1) is about 1 / sqrt(2000)
    np.testing.assert_allclose(s_same.table["mcse_mean"], 1 / np.sqrt(2000), rtol=0.3)
    assert "r_hat" in str(s_same) and "Mode coverage" not in str(s_same)


def test_mixing_summary_var_names_and_errors():
    rng = np.random.default_rng(7)
    idata = to_inference_data({"x": rng.normal(size=(2, 50, 2)), "y": rng.normal(size=(2, 50))})
    assert list(mixing_summary(idata, var_names=["y"]).table.index) == ["y"]
    with pytest.raises(ValueError, match=r"'z'.*\['x', 'y'\]"):
        mixing_summary(idata, MODES, var_name="z")
    with pytest.raises(ValueError, match=r"\(2, 50, 2\) and \(2, 3\)"):
        mixing_summary(idata, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape \\(chain, draw, d\\)"):
        mixing_summary(idata, np.zeros((2, 1)), var_name="y")


def test_to_dict_is_json_serializable():
    rng = np.random.default_rng(8)
    labels = np.zeros((2, 100), dtype=np.int64)
    s = mixing_summary(to_inference_data({"x": _mixture(rng, labels)}), MODES)
    d = s.to_dict()
    back = json.loads(json.dumps(d))
    assert back["unvisited"] == [1, 2, 3]
    assert back["modes_visited"] == [1, 1]
    assert back["occupancy"] == [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert back["total_transitions"] == 0
    assert set(back["table"]) == {"x[0]", "x[1]"}
    assert back["table"]["x[0]"]["mean"] == pytest.approx(float(s.table.loc["x[0]", "mean"]))
    assert np.isnan(d["mode_rhat"])
    no_modes = mixing_summary(to_inference_data({"x": rng.normal(size=(2, 50))}))
    assert set(json.loads(json.dumps(no_modes.to_dict()))) == {"table"}


# ------------------------------------------------------------------------- plot_chains


def test_plot_chains_one_line_per_chain(plt):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 40, 2)).cumsum(axis=1)
    ax = plot_chains(to_inference_data({"x": x}), title="walk")
    assert len(ax.lines) == 3
    np.testing.assert_array_equal(ax.lines[1].get_xydata(), x[1])
    assert ax.get_title() == "walk"
    # default extent: bounding box of the draws with a 10% margin
    lo, hi = x.reshape(-1, 2).min(0), x.reshape(-1, 2).max(0)
    np.testing.assert_allclose(
        ax.get_xlim(), [lo[0] - 0.1 * (hi - lo)[0], hi[0] + 0.1 * (hi - lo)[0]]
    )


def test_plot_chains_with_data_and_torch_log_density(plt):
    rng = np.random.default_rng(10)
    labels = _sticky_labels(rng, n_chains=2, n_draws=100, stay=0.9)
    idata = to_inference_data({"x": _mixture(rng, labels)})
    data = torch.as_tensor(_mixture(rng, rng.integers(4, size=(1, 300)))[0])
    centres = torch.as_tensor(MODES, dtype=torch.float32)
    calls = []

    def log_density(points: torch.Tensor) -> torch.Tensor:
        calls.append(type(points))
        sq = ((points[:, None, :] - centres.to(points.dtype)) ** 2).sum(-1)
        return torch.logsumexp(-sq / (2 * SD**2), dim=-1)

    fig, ax = plt.subplots()
    out = plot_chains(idata, data=data, log_density=log_density, ax=ax, extent=(-6, 6, -6, 6))
    assert out is ax
    assert len(ax.lines) == 2
    assert calls[-1] is torch.Tensor
    assert ax.get_xlim() == (-6.0, 6.0) and ax.get_ylim() == (-6.0, 6.0)
    assert len(ax.collections) >= 3  # contours, data, start markers


def test_plot_chains_errors(plt):
    rng = np.random.default_rng(11)
    idata = to_inference_data({"x": rng.normal(size=(2, 30, 2)), "v": rng.normal(size=(2, 30, 3))})
    ax = plot_chains(idata, log_density=lambda p: -0.5 * p.pow(2).sum(1))
    assert len(ax.lines) == 2
    with pytest.raises(ValueError, match=r"'v' of shape \(chain, draw, 2\).*\(2, 30, 3\)"):
        plot_chains(idata, var_name="v")
    with pytest.raises(ValueError, match=r"data of shape \(n, 2\)"):
        plot_chains(idata, data=np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"return shape \(\d+,\)"):
        plot_chains(idata, log_density=lambda p: torch.zeros(3))
