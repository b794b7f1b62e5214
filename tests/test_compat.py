"""What 0.1 wrote and how it was called: run directories of c26c780, and the renamed names."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import pyro_flowebm
from pyro_flowebm.app import RunConfig, evaluate_run, load_run, read_metrics, report_run, train_run
from pyro_flowebm.app.cli import main
from pyro_flowebm.infer import HMC, sample_ebm
from pyro_flowebm.io import load_tensors, read_netcdf

FIXTURE = Path(__file__).parent / "fixtures" / "run_c26c780"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the run c26c780 wrote: stopped after step 3 of 6, with its samples.nc."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def test_a_run_of_c26c780_loads_and_samples(old_run):
    ebm = load_run(old_run)
    assert ebm.event_shape == (2,)
    idata = sample_ebm(ebm, "hmc-imh", 8, 5, 5, seed=0, progress_bar=False)
    assert idata.posterior["x"].shape == (8, 5, 2)
    assert torch.isfinite(torch.as_tensor(idata.posterior["x"].values)).all()


def test_a_run_of_c26c780_resumes_to_its_last_step(old_run):
    before = read_metrics(old_run)
    assert max(m["step"] for m in before if m["phase"] == "ebm") == 5  # written past step 3
    config = RunConfig.from_dict(json.loads((old_run / "config.json").read_text()))
    train_run(old_run, config, resume=True, progress_bar=False)
    steps = [m["step"] for m in read_metrics(old_run) if m["phase"] == "ebm"]
    assert steps == list(range(6))  # 0-2 kept from c26c780, 3-5 run again
    checkpoint = load_tensors(old_run / "checkpoint.pt")
    assert checkpoint["trainer"]["step"] == 6 and "adaptation" in checkpoint["trainer"]
    assert load_run(old_run).event_shape == (2,)


def test_the_command_samples_evaluates_and_reports_a_run_of_c26c780(old_run, tmp_path):
    assert main(["sample", "--run", str(old_run), "--out", str(tmp_path / "s.nc"),
                 "--num-chains", "4", "--num-samples", "5", "--warmup-steps", "5",
                 "--no-progress"]) == 0  # fmt: skip
    result = evaluate_run(old_run, num_draws=32, plots=False, progress_bar=False)
    assert result.reference["data"] == "heldout"
    report = report_run(old_run, tmp_path / "r.html")  # its own samples.nc, from c26c780
    assert report.verdict.label in ("mixing", "not mixing", "false convergence")
    assert read_netcdf(old_run / "samples.nc").posterior.attrs["sampler"] == "Cycle"


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("energy", "nn", ["MLPEnergy", "ConvEnergy"]),
        ("evaluate", "metrics", ["mmd", "energy_distance", "evaluate_samples", "bits_per_dim"]),
        ("probe", "metrics.probe", ["fit_probe", "probe_summary", "frechet_distance"]),
        ("runs", "app", ["RunConfig", "train_run", "load_run"]),
        ("report", "app", ["evaluate_run", "plot_overview"]),
    ],
)
def test_modules_of_0_1_are_deprecated_aliases(old, new, names):
    sys.modules.pop(f"pyro_flowebm.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"pyro_flowebm.{old} is deprecated"):
        module = importlib.import_module(f"pyro_flowebm.{old}")
    home = importlib.import_module(f"pyro_flowebm.{new}")
    for name in names:
        assert getattr(module, name) is getattr(home, name)
    assert getattr(pyro_flowebm, old) is module


def test_renamed_arguments_are_deprecated_aliases():
    with pytest.warns(DeprecationWarning, match="use steps_per_level"):
        old = pyro_flowebm.flows.glow((1, 4, 4), num_levels=1, num_steps=2, hidden=4)
    new = pyro_flowebm.flows.glow((1, 4, 4), num_levels=1, steps_per_level=2, hidden=4)
    assert len(list(old.parameters())) == len(list(new.parameters()))
    ebm = pyro_flowebm.FlowEBM(
        pyro_flowebm.flow_backbone(pyro_flowebm.flows.realnvp(2, 2, 8), (2,)),
        pyro_flowebm.MLPEnergy(2, 8),
    )
    before = [p.clone() for p in ebm.backbone.transforms[0].parameters()]
    with pytest.warns(DeprecationWarning, match="use finetune_lr"):
        pyro_flowebm.fit_ebm(ebm, torch.randn(50, 2), 2, batch_size=8, backbone_lr=1e-2,
                             progress_bar=False)  # fmt: skip
    after = list(ebm.backbone.transforms[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_the_kernel_protocol_of_0_1_still_works_with_a_warning():
    kernel = HMC(step_size=0.3, num_steps=3)

    def potential(q):
        return 0.5 * q.pow(2).sum(-1)

    with pytest.warns(DeprecationWarning, match=r"kernel.init\(position, potential\)"):
        state = kernel.init(potential, torch.zeros(8, 2), 5)
    for _ in range(6):
        state, info = kernel.step(state)
    assert info.num_grad_evals == 3
    with pytest.warns(DeprecationWarning, match="current_step_size is deprecated"):
        assert kernel.current_step_size.shape == (1,)
    with pytest.raises(TypeError, match="got no potential"):
        HMC().step(state)


def test_renamed_flags_still_work_and_say_so(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "rings", "--out", str(out), "--num-data", "200",
            "--num-heldout", "100", "--backbone-layers", "2", "--backbone-hidden", "8",
            "--energy-hidden", "8", "--backbone-steps", "5", "--batch-size", "16",
            "--mcmc-steps", "1", "--steps", "2", "--leapfrog-steps", "2",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "--leapfrog-steps is deprecated: use --num-steps" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["num_steps"] == 2
    sample = ["sample", "--run", str(out), "--out", str(out / "samples.nc"), "--num-chains",
              "4", "--num-samples", "3", "--warmup", "2", "--no-progress"]  # fmt: skip
    assert main(sample) == 0
    assert "--warmup is deprecated: use --warmup-steps" in capsys.readouterr().err
    assert read_netcdf(out / "samples.nc").posterior.attrs["warmup_steps"] == 2
    evaluate = ["evaluate", "--run", str(out), "--num-samples", "16", "--no-plots", "--no-progress"]
    assert main(evaluate) == 0
    assert "--num-samples is deprecated: use --num-draws" in capsys.readouterr().err
    assert json.loads((out / "evaluation.json").read_text())["reference"]["num_draws"] == 16
