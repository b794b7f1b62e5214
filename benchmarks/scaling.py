"""Scaling out on torch.distributed: speed at 1 and 2 processes, quality, memory per chain.

1. Speed, in interleaved rounds: each round runs, in a rotating order, one process on the
   plain path and two processes in a gloo group (``torch.multiprocessing``, one torch thread
   each), each timing, after a warm-up call, ``fit_ebm`` steps of the default toy model
   (``RunConfig().build((2,))``, batch 256, eager and compiled) and of the digits image
   model (``RunConfig.for_data("digits")``, batch 64), and ``sample_ebm(..., "hmc")`` (10
   leapfrog steps an iteration) of the toy at 1,024 and 16,384 chains eager and 4,096
   compiled. Times are taken inside the processes, from a barrier to the end, so process
   start-up is not counted. The ratio of each round (1 process's time over the row's) is
   reported as a median and its middle half. A third row runs two plain processes side by
   side, each on half of the batch or chains, with no process group: the machine's own
   ceiling for two processes (shared caches and memory bandwidth), for the gloo row to be
   read against. With ``--device cuda``, a fourth row runs one process in an nccl group
   against the plain single-device path: the overhead of the distributed path.
2. Quality: for each seed, ``pyro-flowebm train`` of eight_gaussians (``--steps``) in one
   process and with ``--nproc-per-node 2``, each evaluated by ``evaluate_run`` (EBM draws
   against fresh draws of the mixture): MMD and mode-weight error, and their spread over
   seeds.
3. Memory a chain: the tensors autograd saves for one latent gradient evaluation (what the
   chains' moves hold at their peak) and for the loss of a step, for the image model of
   ``RunConfig.for_data("digits")`` (glow backbone, conv energy) on 1x8x8, 3x16x16 and
   3x32x32 images; the difference over two batch sizes is the memory of one chain.
4. Projection of a CIFAR-10-sized run (3x32x32, 100 epochs of 50,000 images, one tilt step
   per batch) on 1, 8 and 64 GPUs, from the H200 throughput of one process that
   ``benchmarks/gpu.py`` measured (``results/gpu.json``: fit_ebm of the 3x32x32 image model
   at batch 64 and 512) and a model of the communication of a step: one ring all-reduce of
   the energy's gradients (and the flow's, when fine-tuned) plus ``mcmc_steps + 1`` small
   gathers, at an assumed 300 GB/s within a node of 8 GPUs, 25 GB/s (200 Gb/s) between
   nodes, and 50 microseconds a collective. Arithmetic, no run.

    python benchmarks/scaling.py            # ~15 minutes on 2 cores
    python benchmarks/scaling.py --quick    # ~2 minutes, smoke run
    python benchmarks/scaling.py --device cuda   # on a GPU machine: adds nccl overhead
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import base_parser, markdown_table, median, setup, write_results

from pyro_flowebm import fit_ebm
from pyro_flowebm.app import RunConfig, evaluate_run
from pyro_flowebm.datasets import eight_gaussians, load_images
from pyro_flowebm.infer import sample_ebm

# The rows of the speed section: (label, processes, backend or None for the plain path).
# The ceiling row runs two plain processes side by side, each on half of every batch and
# chain count, with no process group: what the machine gives two processes with no
# communication at all.
PLAIN, GLOO2, CEILING, NCCL1 = (
    ("1 process", 1, None),
    ("2 processes (gloo)", 2, "gloo"),
    ("2 processes, half each, no group", 2, None),
    ("1 process (nccl group)", 1, "nccl"),
)
IMAGE_SHAPES = [(1, 8, 8), (3, 16, 16), (3, 32, 32)]


def parse_args():
    parser = base_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the nccl row too")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds")
    parser.add_argument("--train-steps", type=int, default=20, help="timed fit_ebm steps")
    parser.add_argument("--image-steps", type=int, default=8, help="timed digits steps")
    parser.add_argument("--chain-steps", type=int, default=1_000_000,
                        help="chains x iterations x 10 a sampling row times")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="training runs of each kind")
    parser.add_argument("--quality-steps", type=int, default=500, help="tilt steps a run")
    parser.add_argument("--memory-batches", type=int, nargs=2, default=[4, 12])
    args = parser.parse_args()
    # (chains, compiled): the toy's eager sampling is dispatch-bound at 1,024 chains and
    # compute-bound at 16,384 (docs/scaling.md); compiled, at 4,096.
    args.sample_rows = [(1024, False), (16384, False), (4096, True)]
    if args.quick:
        args.rounds, args.train_steps, args.image_steps, args.chain_steps = 2, 4, 2, 20_000
        args.sample_rows = [(256, False), (1024, False), (512, True)]
        args.seeds, args.quality_steps, args.memory_batches = 1, 20, [2, 4]
    return args


# -- 1. speed --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tasks(args) -> list[tuple[str, str, int, bool, int]]:
    """The timed tasks: (name, kind, batch or chains, compiled, steps or iterations); kind
    is ``train`` (the toy), ``train-images`` (digits) or ``sample`` (the toy)."""
    out = [(f"fit_ebm toy {m}, batch 256", "train", 256, m == "compiled", args.train_steps)
           for m in ("eager", "compiled")]  # fmt: skip
    out.append(("fit_ebm digits eager, batch 64", "train-images", 64, False, args.image_steps))
    for chains, compiled in args.sample_rows:
        iterations = max(12, args.chain_steps // (10 * chains))
        mode = "compiled" if compiled else "eager"
        out.append((f"hmc {mode}, {chains:,} chains", "sample", chains, compiled, iterations))
    return out


def _worker(rank: int, world: int, backend: str | None, port: int, args, out: str) -> None:
    """Time every task in one process of the row; each process writes its seconds."""
    torch.set_num_threads(args.threads)
    if backend is not None:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if args.device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world)
    seconds = {}
    for name, kind, size, compiled, count in tasks(args):
        size //= world if backend is None else 1  # the ceiling row: half the work each
        torch.manual_seed(args.seed)
        images = kind == "train-images"
        config = RunConfig.for_data("digits") if images else RunConfig()
        config = dataclasses.replace(config, device=args.device)
        digits = load_images("digits", "train") if images else None
        data = digits.images.float() if images else eight_gaussians(4096).float()
        ebm, data = config.build(tuple(data.shape[1:])), data.to(args.device)
        if kind != "sample":
            kwargs = config.fit_ebm_kwargs() | {"batch_size": size, "compile": compiled}
            kwargs |= {"progress_bar": False, "steps": count}
            kwargs["dequantize"] = digits.levels if images else None
            fit_ebm(ebm, data, **(kwargs | {"steps": 2}))  # warm-up (and compile)
            seconds[name] = _timed(
                lambda e=ebm, d=data, kw=kwargs: fit_ebm(e, d, **kw), args.device
            )
            continue
        warmup = max(1, count // 3)
        sample = {"compile": compiled, "progress_bar": False, "seed": 1}
        sample_ebm(ebm, "hmc", size, 1, 1, **sample)  # warm-up (and compile)
        seconds[name] = _timed(
            lambda: sample_ebm(ebm, "hmc", size, count - warmup, warmup, **sample),  # noqa: B023
            args.device,
        )
    Path(f"{out}.{rank}").write_text(json.dumps(seconds))
    if backend is not None:
        dist.destroy_process_group()


def _timed(function, device: str) -> float:
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()
    return time.perf_counter() - start


def _run_row(row: tuple[str, int, str | None], args) -> dict[str, float]:
    _, world, backend = row
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "seconds.json")
        mp.spawn(_worker, args=(world, backend, _free_port(), args, out), nprocs=world)
        # The row's time is its slowest process's (a group's processes end together at
        # the barrier; the ceiling row's run unsynchronized).
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
        return {task: max(r[task] for r in ranks) for task in ranks[0]}


def speed(args) -> dict[str, Any]:
    rows = [PLAIN, GLOO2, CEILING] + ([NCCL1] if args.device == "cuda" else [])
    rounds: list[dict[str, dict[str, float]]] = []
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        rounds.append({row[0]: _run_row(row, args) for row in order})
        print(f"  round {r + 1}/{args.rounds}: " + "; ".join(
            f"{k}: " + ", ".join(f"{t} {v:.2f} s" for t, v in times.items())
            for k, times in rounds[-1].items()))  # fmt: skip
    table = []
    for name, kind, size, _, count in tasks(args):
        work = size * count * 10 if kind == "sample" else count  # chain-steps, or steps
        entry = {"task": name, "unit": "chain-steps/s" if kind == "sample" else "steps/s"}
        for label, _, _ in rows:
            times = [rd[label][name] for rd in rounds]
            entry[label] = work / median(times)
        for label, _, _ in rows[1:]:
            per_round = [rd[PLAIN[0]][name] / rd[label][name] for rd in rounds]
            entry[f"{label} / 1 process"] = _spread(per_round)
        table.append(entry)
    return {"rows": [r[0] for r in rows], "tasks": table, "rounds": rounds,
            "load_average": [load_before, os.getloadavg()[0]]}  # fmt: skip


def _fmt_spread(spread: dict[str, float]) -> str:
    return f"{spread['median']:.3g} ({spread['q25']:.3g}-{spread['q75']:.3g})"


def _spread(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [25, 50, 75])
    return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "values": values}


# -- 2. quality --------------------------------------------------------------------------------


def _train(out: Path, seed: int, args, nproc: int) -> None:
    command = [sys.executable, "-m", "pyro_flowebm", "train", "--data", "eight_gaussians"]
    command += ["--out", str(out), "--seed", str(seed), "--steps", str(args.quality_steps)]
    command += ["--no-progress"] + (["--nproc-per-node", str(nproc)] if nproc > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(command, check=True, env=env, capture_output=True)


def quality(args) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"1 process": [], "2 processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for label, nproc in (("1 process", 1), ("2 processes", 2)):
                out = Path(tmp) / f"{label[0]}_{seed}"
                start = time.perf_counter()
                _train(out, seed, args, nproc)
                seconds = time.perf_counter() - start
                ebm = evaluate_run(out, data="eight_gaussians", plots=False, progress_bar=False,
                                   num_draws=1000 if args.quick else 2000).ebm  # fmt: skip
                row = {"seed": seed, "mmd": ebm["mmd"], "mode_weight_error":
                       ebm["mode_weight_error"], "seconds": seconds}  # fmt: skip
                runs[label].append(row)
                print(f"  {label}, seed {seed}: MMD {row['mmd']:.4f}, mode-weight error "
                      f"{row['mode_weight_error']:.3f}, {seconds:.0f} s")  # fmt: skip
    summary = {}
    for label, rows in runs.items():
        for key in ("mmd", "mode_weight_error"):
            values = [r[key] for r in rows]
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            summary[f"{label} {key}"] = {"mean": float(np.mean(values)), "sd": sd}
    return {"runs": runs, "summary": summary}


# -- 3. memory -----------------------------------------------------------------------------------


def _saved_bytes(function) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``function()`` (each
    storage once): what a gradient evaluation holds besides the model."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        function()
    return sum(storages.values())


def memory(args) -> list[dict[str, Any]]:
    """Per chain: the saved activations of one latent gradient evaluation (the chains' HMC
    and independence moves) and of the loss (the energy of a data point and a model draw),
    as the difference over two batch sizes (the weights saved for backward cancel)."""
    rows = []
    small, large = args.memory_batches
    config = RunConfig.for_data("digits")
    for shape in IMAGE_SHAPES:
        torch.manual_seed(args.seed)
        ebm = config.build(shape)

        def latent(b: int, shape=shape, ebm=ebm):
            return lambda: ebm.chain_potential(torch.randn(b, *shape).requires_grad_()).sum()

        def loss(b: int, shape=shape, ebm=ebm):
            return lambda: ebm.energy_of(torch.rand(2 * b, *shape)).mean()

        per = {}
        for name, make in (("latent gradient", latent), ("loss", loss)):
            a, b = _saved_bytes(make(small)), _saved_bytes(make(large))
            per[name] = (b - a) / (large - small)
        params = sum(p.numel() for p in ebm.energy.parameters())
        params += sum(p.numel() for t in ebm.backbone.transforms for p in t.parameters())
        rows.append({"shape": list(shape), "bytes_per_chain": per, "parameters": params})
        print(
            f"  {shape}: " + ", ".join(f"{k} {v / 2**20:.2f} MiB a chain" for k, v in per.items())
        )
    return rows


# -- 4. projection --------------------------------------------------------------------------------

EPOCHS, IMAGES = 100, 50_000
BANDWIDTH = {"in node": 300e9, "between nodes": 25e9}  # bytes/s, assumed
LATENCY = 50e-6  # seconds a collective, assumed


def projection() -> dict[str, Any]:
    gpu = json.loads((Path(__file__).parent / "results" / "gpu.json").read_text())
    measured = {
        r["size"]: r
        for r in gpu["rows"]
        if (r["task"], r["model"], r["device"]) == ("fit_ebm", "image", "cuda")
    }
    config = RunConfig.for_data("digits")
    ebm = config.build((3, 32, 32))
    flow = [p for t in ebm.backbone.transforms for p in t.parameters()]
    params = {
        "energy": sum(p.numel() for p in ebm.energy.parameters()),
        "flow": sum(p.numel() for p in flow),
    }
    collectives = config.mcmc_steps + 2
    rows = []
    for batch, row in sorted(measured.items()):
        compute = 1.0 / row["steps_per_s"]
        for gpus in (1, 8, 64):
            link = BANDWIDTH["in node"] if gpus <= 8 else BANDWIDTH["between nodes"]
            ring = 2 * (gpus - 1) / gpus * 4 * params["energy"] / link if gpus > 1 else 0.0
            step = compute + ring + (collectives * LATENCY if gpus > 1 else 0.0)
            steps = EPOCHS * IMAGES / (batch * gpus)
            rows.append({"batch_per_gpu": batch, "gpus": gpus, "step_seconds": step,
                         "communication_seconds": step - compute, "steps": steps,
                         "hours": steps * step / 3600})  # fmt: skip
    return {"params": params, "measured_on": gpu["device_info"].get("device_name"),
            "rows": rows}  # fmt: skip


# -- report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any], args) -> str:
    sp, q = results["speed"], results["quality"]
    lines = [
        f"Scaling on torch.distributed, {os.cpu_count()} cores, {args.threads} torch thread(s) "
        f"a process, device {args.device}. Speed: {args.rounds} interleaved rounds; toy model "
        f"RunConfig().build((2,)); fit_ebm at batch 256, {args.train_steps} timed steps, "
        f"eager and compiled; sample_ebm 'hmc' (10 leapfrog steps an iteration), about "
        f"{args.chain_steps:,} chain-steps a row. Each process times its own work after a "
        f"warm-up call (compiles included there). Load average before -> after: "
        f"{sp['load_average'][0]:.2f} -> {sp['load_average'][1]:.2f}.",
        "",
        markdown_table(
            ["task", "unit", *sp["rows"]],
            [[t["task"], t["unit"], *(t[r] for r in sp["rows"])] for t in sp["tasks"]],
        ),
        "",
        "Per-round ratios (time of 1 process / time of the row; > 1: faster): median "
        "(middle half).",
        "",
        markdown_table(
            ["task", *(f"{r} / 1 process" for r in sp["rows"][1:])],
            [
                [t["task"], *(_fmt_spread(t[f"{r} / 1 process"]) for r in sp["rows"][1:])]
                for t in sp["tasks"]
            ],
        ),  # fmt: skip
        "",
        f"Quality: eight_gaussians, `pyro-flowebm train --steps {args.quality_steps}` per "
        f"seed, EBM draws evaluated against fresh mixture draws (evaluate_run).",
        "",
        markdown_table(
            ["run", "seed", "MMD", "mode-weight error", "train s"],
            [
                [label, r["seed"], r["mmd"], r["mode_weight_error"], r["seconds"]]
                for label, rs in q["runs"].items()
                for r in rs
            ],
        ),  # fmt: skip
        "",
        markdown_table(
            ["metric", "mean", "sd over seeds"],
            [[k, v["mean"], v["sd"]] for k, v in q["summary"].items()],
        ),
        "",
        f"Memory a chain of a training step of digits' image model (RunConfig.for_data("
        f"'digits').build(shape), float32): tensors autograd saves for one latent gradient "
        f"evaluation and for the loss, the difference between batches "
        f"{args.memory_batches[0]} and {args.memory_batches[1]}; the model's parameters take "
        f"16 bytes each (weights, gradients, Adam's two moments).",
        "",
        markdown_table(
            ["image", "latent gradient MiB a chain", "loss MiB a chain", "parameters"],
            [
                [
                    "x".join(map(str, r["shape"])),
                    r["bytes_per_chain"]["latent gradient"] / 2**20,
                    r["bytes_per_chain"]["loss"] / 2**20,
                    r["parameters"],
                ]
                for r in results["memory"]
            ],
        ),  # fmt: skip
        "",
        f"Projection (arithmetic, section 4 of the script): {EPOCHS} epochs of {IMAGES:,} "
        f"3x32x32 images, from fit_ebm on one {results['projection']['measured_on']}; energy "
        f"{results['projection']['params']['energy']:,} parameters, flow "
        f"{results['projection']['params']['flow']:,}.",
        "",
        markdown_table(
            ["batch a GPU", "GPUs", "step (s)", "of which communication (s)", "steps", "hours"],
            [
                [
                    r["batch_per_gpu"],
                    r["gpus"],
                    r["step_seconds"],
                    r["communication_seconds"],
                    r["steps"],
                    r["hours"],
                ]
                for r in results["projection"]["rows"]
            ],
        ),  # fmt: skip
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    setup(args)
    print("1. speed")
    results = {"speed": speed(args)}
    print("2. quality")
    results["quality"] = quality(args)
    print("3. memory")
    results["memory"] = memory(args)
    results["projection"] = projection()
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    text = markdown(results, args)
    print("\n" + text)
    write_results("scaling", args, results, text)


if __name__ == "__main__":
    main()
