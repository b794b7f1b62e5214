"""Every bad input to the command: exit code 2, a message naming the file or flag, and every
file written before byte-identical afterwards."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, TRAIN_FLAGS, check_refused

from pyro_flowebm.app import RunConfig
from pyro_flowebm.io import save_tensors

# ---------------------------------------------------------------------------------------
# Data files given to `train --data`, against a finished run and --overwrite: the old run
# must survive a refused new one.


class Hostile:
    """Unpickling this creates a marker file: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def _npy_header_claiming(path: Path, rows: int) -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": (rows, 2)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(4).tobytes())


def _write(name: str, tmp: Path) -> Path:
    """A bad data file of kind ``name``."""
    path = tmp / name
    writers: dict[str, Callable[[], object]] = {
        "empty.npy": lambda: path.write_bytes(b""),
        "text.npy": lambda: path.write_text("1,2\n3,4\n"),
        "object.npy": lambda: np.save(path, np.array([{"a": 1}, None]), allow_pickle=True),
        "hostile.npy": lambda: np.save(
            path, np.array([Hostile(tmp / "marker")]), allow_pickle=True
        ),
        "huge_header.npy": lambda: _npy_header_claiming(path, 10**12),
        "truncated.npy": lambda: _npy_header_claiming(path, 100),
        "strings.npy": lambda: np.save(path, np.array([["a", "b"], ["c", "d"]])),
        "complex.npy": lambda: np.save(path, np.ones((4, 2), dtype=complex)),
        "one_d.npy": lambda: np.save(path, np.arange(5.0)),
        "nan.npy": lambda: np.save(path, np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]])),
        "inf32.csv": lambda: path.write_text("x,y\n0,1\n1e39,2\n3,4\n5,6\n"),
        "huge.csv": lambda: path.write_text("x,y\n0,1\n1e30,2\n3,4\n5,6\n"),
        "latin1.csv": lambda: path.write_bytes("x,y\n1,2\n3,4\ncaf\xe9,5\n".encode("latin-1")),
        "words.csv": lambda: path.write_text("x,y\n1,2\n3,four\n"),
        "ragged.csv": lambda: path.write_text("1,2\n3\n4,5\n"),
        "header_only.csv": lambda: path.write_text("x,y\n"),
        "one_row.csv": lambda: path.write_text("x,y\n1,2\n"),
        "dict.pt": lambda: torch.save({"x": torch.zeros(4, 2)}, path),
        "damaged.pt": lambda: path.write_bytes(b"PK\x03\x04" + bytes(200)),
        "hostile.pt": lambda: path.write_bytes(pickle.dumps(Hostile(tmp / "marker"))),
        "int_matrix.pt": lambda: torch.save(torch.ones(4, 2, dtype=torch.bool), path),
        "data.txt": lambda: path.write_text("1,2\n3,4\n"),
        "images_empty.npy": lambda: np.save(path, np.zeros((0, 1, 8, 8))),
        "images_nan.npy": lambda: np.save(path, np.full((6, 1, 8, 8), np.nan)),
        "directory.npy": lambda: path.mkdir(),
    }
    writers[name]()
    return path


@pytest.mark.parametrize(
    "name",
    [
        "empty.npy", "text.npy", "object.npy", "hostile.npy", "huge_header.npy",
        "truncated.npy", "strings.npy", "complex.npy", "one_d.npy", "nan.npy", "inf32.csv",
        "huge.csv", "latin1.csv", "words.csv", "ragged.csv", "header_only.csv",
        "one_row.csv", "dict.pt", "damaged.pt", "hostile.pt", "int_matrix.pt", "data.txt",
        "images_empty.npy", "images_nan.npy", "directory.npy",
    ],
)  # fmt: skip
def test_a_bad_data_file_is_refused_and_the_run_it_would_overwrite_is_kept(
    name, run, tmp_path, capsys
):
    data = _write(name, tmp_path)
    args = ["train", "--data", str(data), "--out", str(run), "--overwrite", *TRAIN_FLAGS]
    check_refused(args, str(data), run, capsys)
    assert not (tmp_path / "marker").exists()  # no pickle was ever run


def test_a_missing_data_file_is_named(run, tmp_path, capsys):
    missing = tmp_path / "nowhere.npy"
    args = ["train", "--data", str(missing), "--out", str(run), "--overwrite", *TRAIN_FLAGS]
    check_refused(args, str(missing), run, capsys)


# ---------------------------------------------------------------------------------------
# Flags of `train`: out-of-range sizes, seeds, devices and numbers, refused before the run
# directory is touched.


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--steps", str(10**23)], "--steps"),
        (["--steps", "0"], "--steps"),
        (["--steps", "1.5"], "--steps"),
        (["--seed", str(2**70)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--backbone-hidden", str(10**8)], "memory"),
        (["--energy-hidden", str(10**9)], "memory"),
        (["--num-data", str(2**31)], "--num-data"),
        (["--device", "foo"], "--device"),
        (["--device", "meta"], "--device"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--energy-reg", "nan"], "--energy-reg"),
        (["--heldout-fraction", "1.5"], "--heldout-fraction"),
        (["--energy-reg", "-1"], "--energy-reg"),
        (["--finetune-lr", "0"], "--finetune-lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--backbone", "glowx"], "--backbone"),
        (["--backbone", "glow"], "backbone"),
        (["--resume", "--overwrite"], "--overwrite"),
    ],
)  # fmt: skip
def test_a_bad_train_flag_is_refused_before_the_run_directory_is_touched(flags, names, run, capsys):
    args = ["train", "--data", "two_moons", "--out", str(run), "--overwrite", *TRAIN_FLAGS]
    if "--resume" in flags:
        args.remove("--overwrite")
    check_refused([*args, *flags], names, run.parent, capsys)


def test_cuda_without_a_cuda_device_is_refused(run, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["train", "--data", "two_moons", "--out", str(run), "--overwrite", *TRAIN_FLAGS]
    check_refused([*args, "--device", "cuda"], "--device", run, capsys)


@pytest.mark.parametrize(
    ("where", "flags"),
    [
        ("run", []),  # a run is there: --resume or --overwrite is needed
        ("run", ["--resume", "--seed", "7"]),  # another config than the run's
        ("foreign", ["--overwrite"]),  # files no run wrote
        ("empty", ["--resume"]),  # nothing to resume
        ("file", []),  # --out is a file
        ("inside_file", []),  # --out below a file
    ],
)
def test_an_output_directory_that_does_not_fit_the_flags_is_left_alone(
    where, flags, run, tmp_path, capsys
):
    targets = {"run": run, "foreign": tmp_path / "foreign", "empty": tmp_path / "empty"}
    targets |= {"file": tmp_path / "file", "inside_file": tmp_path / "file" / "run"}
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("a file")
    out = targets[where]
    args = ["train", "--data", "two_moons", "--out", str(out), *TRAIN_FLAGS, *flags]
    check_refused(args, str(out), tmp_path, capsys)


# ---------------------------------------------------------------------------------------
# A damaged run directory: config.json, metrics.jsonl, data.pt, checkpoint.pt.


def _config_edit(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        values = json.loads((run / "config.json").read_text())
        result = edit(values)
        (run / "config.json").write_text(json.dumps(values if result is None else result))

    return damage


def _bytes_edit(name: str, edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_bytes(edit((run / name).read_bytes()))

    return damage


def _checkpoint(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return _bytes_edit("checkpoint.pt", edit)


def _pickled(run: Path) -> None:
    (run / "checkpoint.pt").write_bytes(pickle.dumps(Hostile(run.parent / "marker")))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


def _other_model(run: Path) -> None:
    """A well-formed checkpoint of a wider model."""
    other = RunConfig(**{**SMALL_RUN.to_dict(), "energy_hidden": 32}).build((2,))
    from pyro_flowebm.core import rng_state
    from pyro_flowebm.train import backbone_modules

    state = {"phase": "backbone", "event_shape": [2], "rng": rng_state()}
    state |= {"backbone": backbone_modules(other).state_dict(), "energy": other.energy.state_dict()}
    save_tensors(state, run / "checkpoint.pt")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "config not json": (lambda r: (r / "config.json").write_text("{steps: 4"), "config.json"),
    "config a list": (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json"),
    "config string": (_config_edit(lambda v: v.update(steps="4")), "config.json"),
    "config null": (_config_edit(lambda v: v.update(batch_size=None)), "config.json"),
    "config 8.5": (_config_edit(lambda v: v.update(steps=8.5)), "config.json"),
    "config bool": (_config_edit(lambda v: v.update(seed=True)), "config.json"),
    "config missing key": (_config_edit(lambda v: v.pop("lr")), "config.json"),
    "config unknown key": (_config_edit(lambda v: v.update(stepz=3)), "config.json"),
    "config bad device": (_config_edit(lambda v: v.update(device="foo")), "config.json"),
    "config not utf-8": (lambda r: (r / "config.json").write_bytes(b"\xff\xfe{"), "config.json"),
    "checkpoint truncated": (_checkpoint(lambda b: b[: len(b) // 2]), "checkpoint.pt"),
    "checkpoint flipped byte": (_checkpoint(lambda b: _flip(b, len(b) - 300)), "checkpoint.pt"),
    "checkpoint flipped header": (_checkpoint(lambda b: _flip(b, 3)), "checkpoint.pt"),
    "checkpoint flipped digest": (_checkpoint(lambda b: _flip(b, 40)), "checkpoint.pt"),
    "checkpoint empty": (_checkpoint(lambda b: b""), "checkpoint.pt"),
    "checkpoint random": (_checkpoint(lambda b: bytes(range(256)) * 8), "checkpoint.pt"),
    "checkpoint foreign": (lambda r: torch.save({"a": 1}, r / "checkpoint.pt"), "checkpoint.pt"),
    "checkpoint pickle": (_pickled, "checkpoint.pt"),
    "checkpoint other model": (_other_model, "checkpoint.pt"),
    "checkpoint missing": (lambda r: (r / "checkpoint.pt").unlink(), "checkpoint"),
    "config missing": (lambda r: (r / "config.json").unlink(), "config.json"),
}  # fmt: skip


# A run without a checkpoint resumes from the start, as it should: not a bad input there.
DAMAGED = [
    (d, c)
    for d in DAMAGE
    for c in ("sample", "resume")
    if (d, c) != ("checkpoint missing", "resume")
]


@pytest.mark.parametrize(("damage", "command"), DAMAGED)
def test_a_damaged_run_directory_is_named_and_left_as_it_is(damage, command, run, capsys):
    damage_run, names = DAMAGE[damage]
    damage_run(run)
    (run / "samples.nc").unlink()
    if command == "sample":
        args = ["sample", "--run", str(run), "--out", str(run / "samples.nc"), "--no-progress"]
    else:
        args = ["train", "--data", "two_moons", "--out", str(run), "--resume", *TRAIN_FLAGS]
    check_refused(args, names, run.parent, capsys)
    assert not (run.parent / "marker").exists()


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("data.pt", _bytes_edit("data.pt", lambda b: b[:100])),
        ("data.pt", lambda r: save_tensors({"train": torch.zeros(3, 5)}, r / "data.pt")),
        ("metrics.jsonl", lambda r: (r / "metrics.jsonl").write_text('{"phase": "ebm"\n{}\n')),
        ("metrics.jsonl", lambda r: (r / "metrics.jsonl").write_text('[1]\n{"phase": "x"}\n')),
    ],
)
def test_damaged_data_and_metrics_stop_a_resume_before_any_write(name, damage, run, capsys):
    damage(run)
    args = ["train", "--data", "two_moons", "--out", str(run), "--resume", *TRAIN_FLAGS]
    check_refused(args, name, run.parent, capsys)


# ---------------------------------------------------------------------------------------
# `sample`, `evaluate` and `report`.


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--out", "{run}/draws.txt"], "draws.txt"),
        (["--out", "{run}/samples.nc"], "samples.nc"),  # exists, no --overwrite
        (["--out", "{run}/no/such/dir/s.nc"], "no/such/dir"),
        (["--out", "{run}/dir.nc"], "dir.nc"),  # a directory
        (["--out", "{run}/s.nc", "--num-chains", "200000", "--num-samples", "200000"], "memory"),
        (["--out", "{run}/s.nc", "--num-samples", str(10**12)], "--num-samples"),
        (["--out", "{run}/s.nc", "--num-chains", "0"], "--num-chains"),
        (["--out", "{run}/s.nc", "--thin", "0"], "--thin"),
        (["--out", "{run}/s.nc", "--seed", str(2**70)], "--seed"),
        (["--out", "{run}/s.nc", "--device", "foo"], "--device"),
        (["--out", "{run}/s.nc", "--sampler", "gibbs"], "--sampler"),
        (["--out", "{run}/s.nc", "--run", "{run}/nowhere"], "nowhere"),
    ],
)  # fmt: skip
def test_bad_sample_flags_are_refused_before_sampling(flags, names, run, capsys):
    (run / "dir.nc").mkdir()
    flags = [f.format(run=run) for f in flags]
    args = ["sample", "--run", str(run), *flags, "--no-progress"]
    check_refused(args, names.format(run=run), run, capsys)


def _samples(kind: str, run: Path) -> Path:
    path = run / f"{kind}.nc"
    from pyro_flowebm.io import to_inference_data, write_netcdf

    if kind == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))
    elif kind == "text":
        path.write_text("not a netcdf file")
    elif kind == "no_x":
        write_netcdf(to_inference_data({"y": np.zeros((2, 5, 2))}), path)
    elif kind == "wrong_shape":
        write_netcdf(to_inference_data({"x": np.zeros((2, 5, 3))}), path)
    elif kind == "nan":
        write_netcdf(to_inference_data({"x": np.full((2, 5, 2), np.nan)}), path)
    return path


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--samples", "garbage"], "garbage.nc"),
        (["--samples", "text"], "text.nc"),
        (["--samples", "no_x"], "no_x.nc"),
        (["--samples", "wrong_shape"], "wrong_shape.nc"),
        (["--samples", "nan"], "nan.nc"),
        (["--samples", "missing"], "missing.nc"),
        (["--data", "{tmp}/three.csv"], "three.csv"),
        (["--data", "{tmp}/nowhere.csv"], "nowhere.csv"),
        (["--num-draws", "1"], "--num-draws"),
        (["--log-z-particles", "10"], "--log-z-particles"),
        (["--seed", "-3"], "--seed"),
        (["--run", "{tmp}/nowhere"], "nowhere"),
    ],
)
def test_bad_evaluate_inputs_are_refused_before_anything_is_written(
    flags, names, run, tmp_path, capsys
):
    (tmp_path / "three.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    if flags[0] == "--samples":
        flags = ["--samples", str(_samples(flags[1], run))]
    flags = [f.format(tmp=tmp_path) for f in flags]
    args = ["evaluate", "--run", str(run), "--no-progress", *flags]
    check_refused(args, names.format(tmp=tmp_path), tmp_path, capsys)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["{tmp}/nowhere.nc", "--out", "{tmp}/r.html"], "nowhere.nc"),
        (["{tmp}/garbage.nc", "--out", "{tmp}/r.html"], "garbage.nc"),
        (["{run}", "--out", "{tmp}/r.txt"], "r.txt"),
        (["{run}", "--out", "{tmp}/README.html"], "README.md"),  # not a summary of ours
        (["{run}", "--out", "{tmp}/r.html", "--modes", "{tmp}/modes.csv"], "modes.csv"),
        (["{run}", "--out", "{tmp}/r.html", "--modes", "{tmp}/modes3.csv"], "modes"),
        (["{run}", "--out", "{tmp}/r.html", "--var-names", "nope"], "--var-names"),
        (["{run}", "--out", "{tmp}/r.html", "--compare", "{tmp}/nowhere"], "nowhere"),
        (["{run}/samples.nc", "--out", "{tmp}/r.html", "--threads", "0"], "--threads"),
    ],
)
def test_bad_report_inputs_are_refused_and_nothing_beside_out_is_replaced(
    args, names, run, tmp_path, capsys
):
    (tmp_path / "garbage.nc").write_bytes(b"CDF\x01" + bytes(100))
    (tmp_path / "README.md").write_text("# my project\n")
    (tmp_path / "modes.csv").write_text("a,b\n1,x\n")
    (tmp_path / "modes3.csv").write_text("1,2,3\n4,5,6\n")
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    check_refused(["report", *args], names.format(tmp=tmp_path), tmp_path, capsys)
