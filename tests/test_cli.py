"""The pyro-flowebm command: exact resume after SIGKILL, divergence, bad input, no overwrite."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_flowebm import load_run
from pyro_flowebm.app import RunConfig, read_metrics
from pyro_flowebm.app.cli import main
from pyro_flowebm.io import load_tensors

# A small, quick run: the numbers are about the machinery, not the model's quality.
SMALL = [
    "--num-data", "400", "--num-heldout", "200", "--backbone-layers", "2",
    "--backbone-hidden", "8", "--energy-hidden", "16", "--backbone-steps", "30",
    "--batch-size", "32", "--mcmc-steps", "2", "--num-steps", "3",
]  # fmt: skip


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed command's module in a fresh process (as a user would)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "pyro_flowebm", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


def weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_tensors(run / "checkpoint.pt")
    return {
        **{f"energy.{k}": v for k, v in checkpoint["energy"].items()},
        **{f"backbone.{k}": v for k, v in checkpoint["backbone"].items()},
    }


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_run_killed_mid_training_and_resumed_ends_with_the_same_weights(tmp_path, device):
    args = ["train", "--data", "two_moons", *SMALL, "--steps", "150", "--checkpoint-every", "10"]
    args += ["--seed", "3", "--no-progress", "--device", device]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cli(*args, "--out", str(whole), check=True)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_flowebm", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        # Kill once the tilt has passed a few checkpoints, well before its end.
        while time.monotonic() < deadline and process.poll() is None:
            steps = [m["step"] for m in read_metrics(killed) if m["phase"] == "ebm"]
            if steps and steps[-1] >= 45:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    checkpoint = load_tensors(killed / "checkpoint.pt")
    assert checkpoint["phase"] == "ebm" and 40 <= checkpoint["trainer"]["step"] < 150

    resumed = cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The metrics log is the uninterrupted one too: no step lost or written twice.
    assert read_metrics(killed) == read_metrics(whole)


def test_a_blow_up_exits_non_zero_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", "--data", "eight_gaussians", "--out", str(out), *SMALL, "--steps", "300",
        "--lr", "1000", "--energy-reg", "0", "--checkpoint-every", "1", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 1
    assert "training diverged at step" in result.stderr
    assert "last good checkpoint" in result.stderr
    checkpoint = load_tensors(out / "checkpoint.pt")
    step = checkpoint["trainer"]["step"] if checkpoint["phase"] == "ebm" else 0
    assert step < 300
    assert all(torch.isfinite(v).all() for v in weights(out).values())
    ebm = load_run(out)
    with torch.no_grad():
        assert torch.isfinite(ebm.log_prob(torch.zeros(3, 2, dtype=torch.float32))).all()


def write_bad(path: Path, kind: str) -> Path:
    if kind == "nan":
        np.save(path / "bad.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
        return path / "bad.npy"
    if kind == "1-d":
        np.save(path / "bad.npy", np.arange(5.0))
        return path / "bad.npy"
    if kind == "empty":
        (path / "bad.csv").write_text("x,y\n")
        return path / "bad.csv"
    (path / "bad.csv").write_text("x,y\n1.0,2.0\n")
    return path / "bad.csv"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "expected finite values"),
        ("1-d", "expected data in .* to be 2-D"),
        ("empty", "n >= 2 rows, got 0 rows"),
        ("one row", "n >= 2 rows, got 1 row"),
    ],
)
def test_bad_data_is_refused_in_one_line_before_anything_is_written(tmp_path, kind, message):
    out = tmp_path / "run"
    code = main(["train", "--data", str(write_bad(tmp_path, kind)), "--out", str(out)])
    assert code == 2
    assert not out.exists()


def test_bad_data_message_is_one_line(tmp_path):
    result = cli("train", "--data", str(write_bad(tmp_path, "nan")), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected finite values" in lines[0], result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "rings"],
        ["train", "--data", "rings", "--out", "x", "--steps", "0"],
        ["train", "--data", "rings", "--out", "x", "--backbone", "glow"],
        ["train", "--data", "rings", "--out", "x", "--resume", "--overwrite"],
        ["train", "--data", "no_such_toy", "--out", "x"],
        ["sample", "--run", "x", "--out", "y.nc", "--sampler", "gibbs"],
        ["evaluate"],
    ],
)
def test_bad_arguments_exit_2_with_a_one_line_reason(capsys, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert not (tmp_path / "x").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], lines


def test_help_is_complete(capsys):
    helps = {}
    for command in ("train", "sample", "evaluate"):
        assert main([command, "--help"]) == 0
        helps[command] = capsys.readouterr().out
        assert "usage: pyro-flowebm " + command in helps[command]
    for field in dataclasses.fields(RunConfig):  # one flag a config field, named after it
        assert "--" + field.name.replace("_", "-") in helps["train"], field.name
    for flag in ("--data", "--out", "--resume", "--overwrite", "--persistent", "--threads"):
        assert flag in helps["train"]
    for flag in ("--run", "--out", "--num-chains", "--num-samples", "--warmup-steps", "--sampler"):
        assert flag in helps["sample"]
    for flag in ("--run", "--data", "--samples", "--num-draws", "--no-plots"):
        assert flag in helps["evaluate"]


def test_an_existing_out_is_never_overwritten_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    base = ["train", "--data", "rings", "--out", str(out), *SMALL, "--steps", "3", "--no-progress"]
    assert main(base) == 2
    assert main([*base, "--overwrite"]) == 2  # not a run directory: refused
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    run = tmp_path / "real"
    base = ["train", "--data", "rings", "--out", str(run), *SMALL, "--steps", "3", "--no-progress"]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(base) == 2
    assert main([*base, "--seed", "7", "--resume"]) == 2  # another config: refused
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert main([*base, "--seed", "7", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 7


def test_sample_and_evaluate_write_their_outputs(tmp_path):
    run = tmp_path / "run"
    args = ["--data", "eight_gaussians", "--out", str(run), *SMALL, "--steps", "5"]
    assert main(["train", *args, "--no-progress"]) == 0
    draws = run / "samples.nc"
    sample = ["sample", "--run", str(run), "--out", str(draws), "--num-chains", "16"]
    sample += ["--num-samples", "10", "--warmup-steps", "10", "--no-progress"]
    assert main(sample) == 0
    assert main(sample) == 2  # exists: refused without --overwrite
    from pyro_flowebm.diagnostics import read_netcdf

    idata = read_netcdf(draws)
    assert idata.posterior["x"].shape == (16, 10, 2)
    assert main(["evaluate", "--run", str(run), "--samples", str(draws), "--no-progress"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert set(report) == {"backbone", "ebm", "reference", "likelihood", "log_z"}
    assert report["reference"]["data"] == "heldout" and report["reference"]["n"] == 200
    assert {"mmd", "mode_weight_error", "grid_kl"} <= set(report["ebm"])
    assert (run / "evaluation.png").stat().st_size > 10_000


def test_a_half_written_last_metrics_line_does_not_stop_a_resume(tmp_path):
    run = tmp_path / "run"
    base = ["train", "--data", "rings", "--out", str(run), *SMALL, "--steps", "6"]
    base += ["--checkpoint-every", "3", "--no-progress"]
    assert main(base) == 0
    whole = read_metrics(run)
    # As if killed while writing the last line.
    checkpoint = load_tensors(run / "checkpoint.pt")
    assert checkpoint["trainer"]["step"] == 6
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    assert len(read_metrics(run)) == len(whole) - 1
    assert main([*base, "--resume"]) == 0  # complete already: nothing to run again
    # The resume rewrote the log without the broken line.
    assert (run / "metrics.jsonl").read_text().endswith("}\n")
    assert read_metrics(run) == whole[:-1]


def test_the_fitted_backbone_does_not_depend_on_the_energy_size(tmp_path):
    runs = []
    for hidden in ("8", "16"):
        run = tmp_path / hidden
        args = ["train", "--data", "rings", "--out", str(run), *SMALL, "--steps", "1"]
        assert main([*args, "--energy-hidden", hidden, "--no-progress"]) == 0
        runs.append(load_tensors(run / "checkpoint.pt")["backbone"])
    assert runs[0].keys() == runs[1].keys()
    # One tilt step with a frozen backbone: the backbones are the fitted ones.
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# A tiny image model: the machinery on digits, not the model's quality.
TINY_IMAGES = [
    "--backbone-levels", "1", "--backbone-layers", "1", "--backbone-hidden", "4",
    "--energy-hidden", "4", "--energy-layers", "2", "--backbone-steps", "5", "--steps", "2",
    "--batch-size", "16", "--mcmc-steps", "1", "--num-steps", "2",
    "--independence-moves", "1",
]  # fmt: skip


def test_digits_train_sample_evaluate_and_report_end_to_end(tmp_path):
    run = tmp_path / "digits"
    assert (
        main(["train", "--data", "digits", "--out", str(run), *TINY_IMAGES, "--no-progress"]) == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "digits" and config["backbone_levels"] == 1
    ebm = load_run(run)
    assert ebm.event_shape == (1, 8, 8)
    draws = run / "samples.nc"
    sample = ["sample", "--run", str(run), "--out", str(draws), "--num-chains", "4"]
    assert main([*sample, "--num-samples", "6", "--warmup-steps", "4", "--no-progress"]) == 0
    from pyro_flowebm.diagnostics import read_netcdf

    assert read_netcdf(draws).posterior["x"].shape == (4, 6, 1, 8, 8)
    evaluate = ["evaluate", "--run", str(run), "--samples", str(draws), "--num-draws", "24"]
    assert main([*evaluate, "--no-progress"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert 0 < result["backbone_bits_per_dim"] < 10
    for method in ("backbone", "ebm"):
        assert set(result[method]) == {"mean_confidence", "frechet_distance", "mmd"}
        assert 0 < result[method]["mean_confidence"] <= 1
    assert sum(result["class_fractions"]["reference"]) == pytest.approx(1)
    assert (run / "evaluation.png").stat().st_size > 10_000
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    text = page.read_text()
    assert "Image chains over time" in text and "four central pixels" in text
    assert "could not draw" not in text


def test_an_image_npy_file_trains_and_odd_sizes_are_refused_in_one_line(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "images.npy"), "--out", str(run), *TINY_IMAGES]
    assert main([*args, "--no-progress"]) == 0
    assert load_run(run).event_shape == (1, 8, 8)
    np.save(tmp_path / "odd.npy", images[:, :6, :6])
    args = ["train", "--data", str(tmp_path / "odd.npy"), "--out", str(tmp_path / "odd")]
    assert main([*args, "--backbone-levels", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "divisible by 2**num_levels = 4" in err
    assert not (tmp_path / "odd").exists()


def test_compile_is_chosen_where_it_pays_and_a_resume_keeps_the_run_s_choice(
    run, tmp_path, monkeypatch
):
    """The choice only (train_run and sample_ebm are stood in for); that the compiled
    chains equal the eager ones is tests/test_train.py's."""
    trained, sampled = [], []

    def stop(record):
        def stand_in(*args, **kwargs):
            record.append(kwargs.get("compile", args[1] if len(args) > 1 else None))
            raise ValueError("stood in")

        return stand_in

    def compile_of(*flags):
        main(["train", "--data", "rings", "--out", str(tmp_path / "new"), *flags])
        config = trained.pop()
        return config.compile

    monkeypatch.setattr("pyro_flowebm.app.cli.train_run", stop(trained))
    monkeypatch.setattr("pyro_flowebm.app.sampling.sample_ebm", stop(sampled))
    assert compile_of() is True  # 1500 steps of 35 evaluations
    assert compile_of("--steps", "100") is False
    assert compile_of("--no-compile") is False
    assert compile_of("--steps", "100", "--compile") is True
    # A run of 0.1 (no compile in its config) is resumed eager, as it was trained.
    config = json.loads((run / "config.json").read_text())
    config.pop("compile")
    (run / "config.json").write_text(json.dumps(config))
    main(["train", "--data", config["data"], "--out", str(run), "--resume"])
    assert trained.pop().compile is False
    sample = ["sample", "--run", str(run), "--out", str(tmp_path / "s.nc"), "--no-progress"]
    for flags, expected in [
        (["--num-samples", "400", "--warmup-steps", "100"], True),  # 500 x 21 evaluations
        (["--num-samples", "300", "--warmup-steps", "100"], False),
        (["--num-samples", "400", "--warmup-steps", "100", "--no-compile"], False),
        (["--num-samples", "10", "--compile"], True),
        (["--sampler", "nuts", "--num-samples", "5000"], False),
    ]:
        assert main([*sample, *flags]) == 2
        assert sampled.pop() is expected, flags
