"""Runs in several processes (torch.distributed, gloo on the CPU): the same training step and
the same chains as one process, exact resume, a lost process, launching, and bad input.

The in-process tests start their processes with ``torch.multiprocessing.spawn``; the command
tests launch ``pyro-flowebm ... --nproc-per-node 2`` (and two torchrun "nodes") as a user
would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_flowebm import FlowEBM, fit_backbone, fit_ebm, flow_backbone, flows
from pyro_flowebm.app import read_metrics
from pyro_flowebm.app.cli import main
from pyro_flowebm.core import Shard, all_chains, chain_draws, local_rows, sharding
from pyro_flowebm.infer import SAMPLERS, sample_ebm
from pyro_flowebm.io import load_tensors, read_netcdf
from pyro_flowebm.nn import MLPEnergy

# -- the shard of one process ------------------------------------------------------------


def test_outside_a_process_group_sharding_changes_nothing():
    with sharding(6) as shard:
        torch.manual_seed(1)
        drawn = chain_draws(torch.randn, (6, 2))
        rows = torch.arange(6)
        assert shard is None
        assert torch.equal(local_rows(rows), rows) and torch.equal(all_chains(rows), rows)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.randn(6, 2))


def test_blocks_of_the_shards_cover_the_chains_once_in_rank_order():
    rows = torch.arange(12)
    blocks = [Shard(12, rank, 3).rows(rows) for rank in range(3)]
    assert torch.equal(torch.cat(blocks), rows)
    with pytest.raises(ValueError, match="expected a batch size divisible by the 3 processes"):
        Shard(10, 0, 3, "a batch size")


# -- two processes in this test, by torch.multiprocessing ---------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(function, *args) -> None:
    """``function(rank, world, port, *args)`` in two gloo processes."""
    mp.spawn(_in_group, args=(function, free_port(), *args), nprocs=2)


def _in_group(rank: int, function, port: int, *args) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        function(rank, *args)
    finally:
        dist.destroy_process_group()


def small_ebm() -> FlowEBM:
    ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
    with torch.no_grad():  # an energy away from zero: the step's gradient is not trivial
        for p in ebm.energy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return ebm


def one_training_step(finetune: bool) -> dict[str, torch.Tensor]:
    """A backbone step and a tilt step of a fresh model on fixed data; its parameters before
    and after."""
    torch.set_default_dtype(torch.float32)
    pyro.set_rng_seed(0)
    ebm, data = small_ebm(), torch.randn(300, 2) * 0.5 + 1.0
    modules = {"energy": ebm.energy, "backbone": ebm.backbone.transforms[0]}

    def parameters() -> torch.Tensor:
        return torch.cat([p.detach().flatten() for m in modules.values() for p in m.parameters()])

    before = parameters()
    fit_backbone(ebm.backbone, data, steps=1, batch_size=64, progress_bar=False)
    fit_ebm(
        ebm, data, steps=1, batch_size=64, mcmc_steps=2, independence_moves=2,
        finetune_lr=1e-2 if finetune else None, progress_bar=False,
    )  # fmt: skip
    return {"before": before, "after": parameters()}


VECTORIZED = [s for s in SAMPLERS if s != "nuts"]


def draws_of(sampler: str) -> torch.Tensor:
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    idata = sample_ebm(small_ebm(), sampler, 8, 15, 15, seed=3, progress_bar=False)
    name = "z" if "z" in idata.posterior else "x"
    return torch.as_tensor(idata.posterior[name].values)


def _in_two_processes(rank: int, out: str) -> None:
    results = {f"step {finetune}": one_training_step(finetune) for finetune in (False, True)}
    results |= {sampler: draws_of(sampler) for sampler in VECTORIZED}
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """Training steps and draws computed in two gloo processes (spawned once)."""
    out = tmp_path_factory.mktemp("spawned") / "two.pt"
    spawn(_in_two_processes, str(out))
    return torch.load(out)


IN_TWO = pytest.mark.xdist_group("two_processes")


@IN_TWO
@pytest.mark.parametrize("finetune", [False, True], ids=["energy", "finetuned"])
def test_one_training_step_in_two_processes_is_the_step_of_one(finetune, two_processes):
    alone, two = one_training_step(finetune), two_processes[f"step {finetune}"]
    assert torch.equal(alone["before"], two["before"])
    update = alone["after"] - alone["before"]
    assert update.abs().max() > 1e-4  # the step moved the parameters
    torch.testing.assert_close(two["after"] - two["before"], update, rtol=0, atol=1e-6)


@IN_TWO
def test_each_chain_draws_the_same_in_two_processes_as_in_one(two_processes):
    two = two_processes
    for sampler in VECTORIZED:
        alone = draws_of(sampler)
        assert two[sampler].shape == alone.shape == (8, 15, 2)
        torch.testing.assert_close(two[sampler], alone, rtol=0, atol=1e-6, msg=sampler)


# -- the command, in several processes ----------------------------------------------------

TRAIN = [
    "train", "--data", "two_moons", "--num-data", "400", "--num-heldout", "200",
    "--backbone-layers", "2", "--backbone-hidden", "8", "--energy-hidden", "16",
    "--backbone-steps", "30", "--batch-size", "32", "--mcmc-steps", "2", "--num-steps", "3",
    "--steps", "80", "--checkpoint-every", "10", "--seed", "3", "--no-progress",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def command(*args: str, program: tuple[str, ...] = (sys.executable, "-m", "pyro_flowebm")):
    return subprocess.Popen(
        [*program, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def finished(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_tensors(run / "checkpoint.pt")
    tensors = {
        f"{part}.{k}": v for part in ("energy", "backbone") for k, v in checkpoint[part].items()
    }
    return tensors | {"chains": checkpoint["trainer"]["chains"]}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# The tests of the run below share one pytest worker, so the run is trained once.
SHARED_RUN = pytest.mark.xdist_group("two_process_run")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """A run trained uninterrupted in two processes, as on two machines: two torchrun
    agents, one process each, rendezvousing over localhost into one group. The tests
    below compare it with two processes on one machine: the same training."""
    out, port = tmp_path_factory.mktemp("whole") / "run", free_port()
    torchrun = (sys.executable, "-m", "torch.distributed.run")
    nodes = [
        command(
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "test",
            "--module",
            "pyro_flowebm",
            *TRAIN,
            "--out",
            str(out),
            program=torchrun,
        )  # fmt: skip
        for _ in range(2)
    ]
    for node in nodes:
        code, stderr = finished(node)
        assert code == 0, stderr
    return out


def kill_a_worker_after(launcher: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and launcher.poll() is None:
        steps = [m["step"] for m in read_metrics(run) if m["phase"] == "ebm"]
        if steps and steps[-1] >= step:
            break
        time.sleep(0.02)
    workers = subprocess.run(
        ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) == 2, "the run ended before a process could be killed"
    os.kill(int(workers[-1]), signal.SIGKILL)


@SHARED_RUN
def test_a_lost_process_stops_the_run_and_it_resumes_exactly_in_two_or_in_one(
    two_process_run, tmp_path
):
    killed = tmp_path / "killed"
    launcher = command(*TRAIN, "--nproc-per-node", "2", "--out", str(killed))
    kill_a_worker_after(launcher, killed, 30)
    code, stderr = finished(launcher)
    assert code == 1
    assert "ended with signal SIGKILL; the others were stopped" in stderr
    assert "continue with --resume" in stderr
    step = load_tensors(killed / "checkpoint.pt")["trainer"]["step"]
    assert 20 <= step < 80
    in_one = tmp_path / "in_one"
    in_one.mkdir()
    for path in killed.iterdir():
        (in_one / path.name).write_bytes(path.read_bytes())

    code, stderr = finished(
        command(*TRAIN, "--nproc-per-node", "2", "--out", str(killed), "--resume")
    )
    assert code == 0, stderr
    assert_same_weights(killed, two_process_run)
    assert read_metrics(killed) == read_metrics(two_process_run)

    # Another number of processes re-shards the chains: the same law, not the same bits.
    assert main([*TRAIN, "--out", str(in_one), "--resume"]) == 0
    ebm_steps = [m["step"] for m in read_metrics(in_one) if m["phase"] == "ebm"]
    assert ebm_steps == list(range(80))
    assert load_tensors(in_one / "checkpoint.pt")["trainer"]["chains"].shape == (32, 2)


@SHARED_RUN
def test_sampling_in_two_processes_writes_the_draws_of_one(two_process_run, tmp_path):
    args = ["sample", "--run", str(two_process_run), "--num-chains", "16", "--num-samples", "30"]
    args += ["--warmup-steps", "30", "--seed", "5", "--no-progress"]
    code, stderr = finished(
        command(*args, "--out", str(tmp_path / "two.nc"), "--nproc-per-node", "2")
    )
    assert code == 0, stderr
    assert main([*args, "--out", str(tmp_path / "one.nc")]) == 0
    one, two = read_netcdf(tmp_path / "one.nc"), read_netcdf(tmp_path / "two.nc")
    np.testing.assert_array_equal(two.posterior["z"].values, one.posterior["z"].values)
    assert two.posterior.attrs["num_processes"] == 2 and one.posterior.attrs["num_processes"] == 1
    assert two.posterior.attrs["seed"] == 5
    assert json.loads(two.posterior.attrs["kernel"]) == json.loads(one.posterior.attrs["kernel"])


@SHARED_RUN
def test_every_process_stops_together_on_a_divergence_and_on_bad_input(two_process_run, tmp_path):
    out = tmp_path / "blow_up"
    blow_up = [*TRAIN, "--data", "eight_gaussians", "--steps", "300", "--lr", "1000"]
    blow_up += ["--energy-reg", "0", "--checkpoint-every", "1", "--out", str(out)]
    code, stderr = finished(command(*blow_up, "--nproc-per-node", "2"))
    assert code == 1
    # The guard read the same numbers in both processes: one report, from the first.
    assert stderr.count("training diverged at step") == 1, stderr
    assert "ended with" not in stderr
    checkpoint = load_tensors(out / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint["energy"].values())

    # The first process finds the run in --out for all; every process stops, one says why.
    before = (two_process_run / "checkpoint.pt").read_bytes()
    code, stderr = finished(command(*TRAIN, "--out", str(two_process_run), "--nproc-per-node", "2"))
    assert code == 2
    assert stderr.count("pyro-flowebm train: error:") == 1, stderr
    assert (two_process_run / "checkpoint.pt").read_bytes() == before


# -- bad input: refused before anything starts ---------------------------------------------

BAD_LAUNCHES = {
    "no process": (["--nproc-per-node", "0"], "expected an integer in [1, 2147483647], got 0"),
    "batch": (["--nproc-per-node", "2", "--batch-size", "33"],
              "expected --batch-size divisible by --nproc-per-node 2, got 33"),
    "backend": (["--nproc-per-node", "2", "--backend", "mpi"], "invalid choice: 'mpi'"),
    "nccl on cpu": (["--nproc-per-node", "2", "--backend", "nccl"],
                    "expected --backend gloo or auto for device cpu"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_LAUNCHES)
def test_a_bad_launch_of_training_is_refused_before_anything_starts(case, tmp_path, capsys):
    flags, message = BAD_LAUNCHES[case]
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@SHARED_RUN
def test_a_bad_launch_of_sampling_is_refused_before_anything_starts(
    two_process_run, tmp_path, capsys
):
    args = ["sample", "--run", str(two_process_run), "--nproc-per-node", "2"]
    for flags, message in (
        (["--num-chains", "5"], "expected --num-chains divisible by --nproc-per-node 2, got 5"),
        (["--sampler", "nuts"], "expected a vectorized sampler in several processes, got nuts"),
    ):
        out = tmp_path / "draws.nc"
        assert main([*args, *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_under_torchrun_the_command_refuses_its_own_launcher_and_other_commands(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--nproc-per-node", "2"]) == 2
    assert "expected --nproc-per-node outside torchrun" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "expected train or sample under torchrun, got evaluate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
