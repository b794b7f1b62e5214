"""Faults of the machine, not of the input: a full disk, a refused permission, a second
process, a damaged byte, a killed writer's leftovers. Each is met with exit code 2 and a
message naming the file, and what was written before stays byte-identical."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_FLAGS, check_refused

from pyro_flowebm.app.cli import main
from pyro_flowebm.io import (
    DirectoryLockedError,
    load_tensors,
    lock_directory,
    read_netcdf,
    save_tensors,
    to_inference_data,
    write_bytes,
    write_netcdf,
)
from pyro_flowebm.io import files as files_module

SAMPLE = ["--num-chains", "4", "--num-samples", "20", "--warmup-steps", "5", "--no-progress"]
EVALUATE = ["--num-draws", "32", "--log-z-particles", "256", "--no-progress"]


def commands(run: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that writes, each over something a finished run already holds."""
    return {
        "train new": ["train", "--data", "two_moons", "--out", str(tmp / "new"), *TRAIN_FLAGS],
        "train overwrite": [
            "train", "--data", "two_moons", "--out", str(run), "--overwrite", *TRAIN_FLAGS,
            "--seed", "5",
        ],
        "train resume": [
            "train", "--data", "two_moons", "--out", str(run), "--resume", *TRAIN_FLAGS,
        ],
        "sample": ["sample", "--run", str(run), "--out", str(run / "samples.nc"), "--overwrite",
                   *SAMPLE],
        "evaluate": ["evaluate", "--run", str(run), "--samples", str(run / "samples.nc"),
                     *EVALUATE],
        "report": ["report", str(run), "--out", str(run / "report.html")],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["train new", "train overwrite", "train resume", "sample", "evaluate", "report"]
)
@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_a_failing_write_keeps_every_file_and_names_the_one_it_could_not_write(
    command, fault, run, tmp_path, capsys, monkeypatch
):
    def refuse(fd: int, data: bytes) -> None:
        raise OSError(fault, os.strerror(fault))

    monkeypatch.setattr(files_module, "_write_all", refuse)
    err = check_refused(commands(run, tmp_path)[command], "could not write", tmp_path, capsys)
    assert os.strerror(fault) in err and str(tmp_path) in err


def test_a_failing_write_in_the_middle_of_training_keeps_the_last_checkpoint(
    run, tmp_path, capsys, monkeypatch
):
    """The disk fills up at the third write of a fresh run (a checkpoint of the tilt): the
    run stops with exit 2, and resuming after space is freed ends where a whole run does."""
    out, whole = tmp_path / "new", tmp_path / "whole"
    args = ["train", "--data", "two_moons", *TRAIN_FLAGS]
    assert main([*args, "--out", str(whole)]) == 0
    real, calls = files_module._write_all, []

    def fill_up(fd: int, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) >= 5:  # data, config, backbone metrics and checkpoint; then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(files_module, "_write_all", fill_up)
    assert main([*args, "--out", str(out)]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert load_tensors(out / "checkpoint.pt")["phase"] == "backbone"
    monkeypatch.setattr(files_module, "_write_all", real)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a, b = load_tensors(out / "checkpoint.pt"), load_tensors(whole / "checkpoint.pt")
    for key in ("backbone", "energy"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), name


@contextmanager
def small_file_system(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path``, where the machine lets the tests mount one."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("no size-limited file system here (mount refused); fault injection covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_real_full_disk_keeps_the_old_draws(finished_run, tmp_path, capsys):
    with small_file_system(tmp_path / "disk", "400k") as disk:
        run = disk / "run"
        run.mkdir()
        for name in ("config.json", "data.pt", "checkpoint.pt", "metrics.jsonl", "samples.nc"):
            shutil.copy(finished_run / name, run / name)
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(bytes(max(free - 20_000, 0)))
        args = ["sample", "--run", str(run), "--out", str(run / "samples.nc"), "--overwrite"]
        err = check_refused([*args, *SAMPLE], "samples.nc", disk, capsys)
        assert "No space left on device" in err


def test_a_real_read_only_directory_is_refused_before_any_work(finished_run, tmp_path, capsys):
    with small_file_system(tmp_path / "disk", "2m") as disk:
        run = disk / "run"
        shutil.copytree(finished_run, run)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for args in (
            ["train", "--data", "two_moons", "--out", str(run), "--overwrite", *TRAIN_FLAGS],
            ["sample", "--run", str(run), "--out", str(run / "s.nc"), *SAMPLE],
            ["report", str(run), "--out", str(run / "report.html")],
        ):
            check_refused(args, str(run), disk, capsys)


def test_a_run_directory_is_written_by_one_process_at_a_time(run, tmp_path, capsys):
    with lock_directory(run):
        for args in commands(run, tmp_path).values():
            if str(run) in args[args.index("--out") + 1 if "--out" in args else 2]:
                if args[0] in ("train", "evaluate"):
                    err = check_refused(args, str(run), run, capsys)
                    assert f"pid {os.getpid()}" in err
        with pytest.raises(DirectoryLockedError, match="holding its lock"):
            with lock_directory(run):
                pass
    with lock_directory(run):  # released at the end of the block
        pass


def test_two_runs_started_at_once_on_one_directory_never_mix(tmp_path):
    """Two processes, two seeds, one --out: one run wins whole, the other is refused."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyro_flowebm",
                "train",
                "--data",
                "two_moons",
                "--out",
                str(out),
                *TRAIN_FLAGS,
                "--seed",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    results = [(p.returncode, err) for p, err in zip(processes, errors, strict=True)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert str(out) in refused and ("lock" in refused or "--resume" in refused), refused
    seed = json.loads((out / "config.json").read_text())["seed"]
    winner = [1, 2][[code for code, _ in results].index(0)]
    assert seed == winner
    from pyro_flowebm.datasets import TOYS

    expected = TOYS["two_moons"].sample(300, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(load_tensors(out / "data.pt")["train"], expected.float())
    assert load_tensors(out / "checkpoint.pt")["trainer"]["step"] == 4


def test_a_killed_writers_temporary_files_block_nothing(run, tmp_path, capsys):
    for name in (".checkpoint.pt.abc123.tmp", ".samples.nc.x1y2.tmp", ".data.pt.q.tmp"):
        (run / name).write_bytes(b"half a file")
    resume = ["train", "--data", "two_moons", "--out", str(run), "--resume", *TRAIN_FLAGS]
    assert main(resume) == 0
    assert main([*resume[:5], "--overwrite", *TRAIN_FLAGS, "--seed", "3"]) == 0
    assert not [p for p in run.iterdir() if p.suffix == ".tmp"]
    # The run's files, and the report, which --overwrite leaves alone: no run file.
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "config.json", "data.pt", "metrics.jsonl", "report.html", "report.md",
    ]  # fmt: skip


def test_every_changed_byte_of_a_checkpoint_is_refused(finished_run):
    """300 single-byte changes at random places (seeded): none loads."""
    data = (finished_run / "checkpoint.pt").read_bytes()
    rng = np.random.default_rng(0)
    for at, flip in zip(rng.integers(0, len(data), 300), rng.integers(1, 256, 300), strict=True):
        damaged = data[:at] + bytes([data[at] ^ flip]) + data[at + 1 :]
        path = finished_run.parent / "damaged.pt"
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged.pt"):
            load_tensors(path)


def test_write_bytes_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    write_bytes(b"old", path)
    os.chmod(path, 0o640)
    with pytest.raises(FileExistsError, match="a.bin"):
        write_bytes(b"new", path, overwrite=False)
    monkeypatch.setattr(
        files_module, "_write_all", lambda fd, data: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        write_bytes(b"new", path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    write_bytes(b"new", path)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_tensor_files_round_trip_and_netcdf_is_what_arviz_reads(tmp_path):
    value = {"w": torch.randn(3, generator=torch.Generator().manual_seed(0)), "step": 4}
    save_tensors(value, tmp_path / "t.pt")
    loaded = load_tensors(tmp_path / "t.pt")
    assert torch.equal(loaded["w"], value["w"]) and loaded["step"] == 4
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    idata = to_inference_data({"x": x}, sample_stats={"lp": x[..., 0]}, attrs={"seed": 3})
    write_netcdf(idata, tmp_path / "d.nc")
    back = read_netcdf(tmp_path / "d.nc")
    assert np.array_equal(back.posterior["x"].values, x)
    assert np.array_equal(back.sample_stats["lp"].values, x[..., 0])
    assert back.posterior.attrs["seed"] == 3
