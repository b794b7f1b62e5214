"""Throughput on an accelerator: latent HMC chain-steps/s and training steps/s at GPU sizes.

One short, budgeted run meant for a lent GPU (``--device cuda``); ``--quick --device cpu``
is its smoke test on a CPU. Two models, float32, random weights (every parameter perturbed
by Gaussian noise, since the presets start as the identity and E = 0):

- **toy**: ``flows.realnvp(2, 8, 64)`` + ``energy.MLPEnergy(2, 64, 2)`` (the potential of
  ``overhead.py``: perturbation sd 0.1); training data ``datasets.load("eight_gaussians")``;
- **image**: ``flows.glow((3, 32, 32), num_levels=3, steps_per_level=4, hidden=64)`` +
  ``energy.ConvEnergy((3, 32, 32))`` (perturbation sd 0.01; ActNorm initialized from a
  batch of the data); training data uniform noise images in [0, 1]. ``--quick``:
  ``glow((1, 8, 8), num_levels=2, steps_per_level=2, hidden=32)``.

Measured, each size on its own, after a short untimed warm-up at the same size:

1. **sampling**: ``run_chains(ebm, HMC(step_size, num_steps=5), num_chains, num_samples=2,
   warmup_steps=10, thin=10)`` end to end (draws, final push through the flow, conversion to
   ArviZ), timed with ``torch.cuda.synchronize`` on both sides. Counted: **chain-steps/s =
   chains x leapfrog steps per chain / wall seconds**, where the leapfrog steps per chain are
   ``idata.attrs["num_grad_evals"]`` (HMC iterations x 5; one gradient evaluation of the
   latent potential each; the one at the initial point is not counted), and chain-iterations/s
   = chains x HMC iterations / s. Eager kernels at every size; ``HMC(compile=True)`` at
   ``--compile-*-chains`` (its first call, compile included, is reported on its own, and
   so are Dynamo's graph breaks: the parts of the step they cut off run eagerly);
   ``fit_ebm(..., compile=True)`` on the toy model at the toy batch sizes as well (row
   mode ``compiled``, ratio ``compiled / eager`` against the eager row of the same size);
2. **training**: ``fit_backbone(backbone, data, steps, batch_size=B)`` and
   ``fit_ebm(ebm, data, steps, batch_size=B, step_size=...)`` with their defaults otherwise
   (fresh models; the number of steps is set from a 2-step warm-up's pace), in steps/s and
   samples/s (B x steps/s). One ``fit_ebm`` step runs ``independence_moves + mcmc_steps x
   num_steps + 2`` = 37 batched gradient evaluations of the latent potential (10 independence
   moves, 5 HMC iterations of 5 leapfrog steps, one at each kernel's start) plus the energy's
   forward and backward on 2B points; one ``fit_backbone`` step is one log-density forward
   and backward on B points.

Ratios, all against rows of the same run: ``x smallest``, the throughput over that of the
smallest size of the same task, model, mode and device (scaling); ``compiled / eager`` at
the same size; ``x CPU ref``, against the CPU reference (rows of device ``cpu-ref``):
the same eager measurement on the CPU, in the same process, at the smallest sizes, with
``--cpu-threads`` threads (all cores by default) and fewer iterations. On ``--device cuda``
that is the GPU's speed-up over the whole CPU; in ``--quick`` runs on a CPU it only
smoke-tests that path. Each row records its peak GPU memory.

A size that runs out of GPU memory is recorded as ``oom`` and the run goes on; an error is
recorded with its message (the script then exits with status 1 after writing the results).
``--max-seconds`` bounds the run: no measurement starts after it, and one still running
then is stopped (``timeout``), so a lent device is never overrun. The results are written
after every measurement, so a run killed from outside still leaves what it had measured.

    python benchmarks/gpu.py --device cuda           # ~4-5 minutes on an H200 (budget 270 s)
    python benchmarks/gpu.py --quick --device cpu    # under a minute, smoke run (budget 55 s)

benchmarks/README.md says how to run it on a lent device, whose image lacks some of the
package's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from _common import (
    base_parser,
    ebm_modules,
    markdown_table,
    median,
    random_ebm,
    setup,
    write_results,
)
from torch import Tensor

from pyro_flowebm import FlowEBM, datasets, fit_backbone, fit_ebm, flow_backbone, flows
from pyro_flowebm.infer import HMC, run_chains
from pyro_flowebm.nn import ConvEnergy

# Defaults as (full run, --quick); a flag given on the command line wins over both.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "max_seconds": (270.0, 55.0),
    "toy_chains": ([1024, 16384, 131072, 1048576], [256, 1024]),
    "image_chains": ([256, 1024, 4096], [16, 64]),
    "toy_batches": ([256, 4096], [256, 512]),
    "image_batches": ([64, 512], [8, 32]),
    "compile_toy_chains": ([16384], [256]),
    "compile_image_chains": ([1024], [16]),
    "image_shape": ([3, 32, 32], [1, 8, 8]),
    "image_levels": (3, 2),
    "image_steps": (4, 2),
    "image_hidden": (64, 32),
    "warmup": (10, 2),
    "thin": (10, 2),
    "repeats": (3, 2),
    "seconds_per_size": (8.0, 0.5),
    "max_train_steps": (50, 10),
}
PARTS = ("sampling", "training", "compiled", "cpu-reference")
CPU_REF = "cpu-ref"  # the device label of the CPU reference rows
NUM_SAMPLES = 2  # kept draws per chain: few, so that storing them costs nothing
NUM_DATA = {"toy": 65536, "image": 2048}


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    cuda = torch.cuda.is_available()
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda" if cuda else "cpu",
        help="where the models run (cuda when torch sees a GPU)",
    )

    def tuned(flag: str, text: str, **kwargs: Any) -> None:
        """A flag whose default depends on --quick (see DEFAULTS)."""
        full, quick = DEFAULTS[flag.removeprefix("--").replace("-", "_")]
        kwargs.setdefault("type", type(full[0] if isinstance(full, list) else full))
        help = f"{text} (default: {_show(full)}; --quick: {_show(quick)})"
        parser.add_argument(flag, default=argparse.SUPPRESS, help=help, **kwargs)

    tuned("--max-seconds", "budget of the run in wall seconds: nothing starts after it, and a "
          "measurement still running then is stopped")  # fmt: skip
    tuned("--toy-chains", "chains, toy model", nargs="+")
    tuned("--image-chains", "chains, image model", nargs="+")
    tuned("--toy-batches", "training batch sizes, toy model", nargs="+")
    tuned("--image-batches", "training batch sizes, image model", nargs="+")
    tuned("--compile-toy-chains", "chains for HMC(compile=True), toy model", nargs="*")
    tuned("--compile-image-chains", "the same, image model", nargs="*")
    tuned("--image-shape", "image shape", nargs=3, metavar=("C", "H", "W"))
    tuned("--image-levels", "glow levels")
    tuned("--image-steps", "glow steps per level")
    tuned("--image-hidden", "width of glow's conditioners")
    tuned("--warmup", "run_chains warm-up iterations")
    tuned("--thin", f"run_chains thin ({NUM_SAMPLES} kept draws)")
    tuned("--repeats", "timed repeats at most; the median is reported")
    tuned("--seconds-per-size", "no more repeats once a size has been timed this long; it also "
          "sets the training steps")  # fmt: skip
    tuned("--max-train-steps", "training steps per timed call at most")
    parser.add_argument("--num-steps", type=int, default=5, help="leapfrog steps per iteration")
    parser.add_argument(
        "--toy-step-size", type=float, default=0.1, help="HMC's first step size (then adapted)"
    )
    parser.add_argument("--image-step-size", type=float, default=0.02, help="the same, image")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads of the CPU reference (all cores)",
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure"
    )
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="reuse torch.compile's on-disk cache (default: a fresh one, so compile times "
        "are cold, as on a fresh machine)",
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, quick if args.quick else full)
    if args.device == "cuda" and not cuda:
        parser.error("expected a CUDA device for --device cuda, got none: use --device cpu")
    return args


# -- budget and measurement -------------------------------------------------------------------


class OutOfBudget(BaseException):
    """Raised by the alarm when ``--max-seconds`` is spent; a BaseException, so that no
    ``except Exception`` in torch.compile or elsewhere swallows it."""


@dataclass
class Budget:
    seconds: float
    start: float

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`OutOfBudget` in the block after ``seconds`` (no-op without SIGALRM)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum: int, frame: object) -> None:
        raise OutOfBudget

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device's queue drained on both sides, and its value."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def repeat_timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, seconds: float
) -> tuple[list[float], Any]:
    """At least one and at most ``repeats`` timed calls, until ``seconds`` have been spent."""
    times: list[float] = []
    out = None
    while len(times) < repeats and (not times or sum(times) < seconds):
        t, out = synced(fn, device)
        times.append(t)
    return times, out


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # cuDNN and cuBLAS report a failed workspace allocation as a RuntimeError.
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "NOT_ENOUGH_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED")
    )


def attempt(
    row: dict[str, Any], fn: Callable[[], dict[str, Any]], device: torch.device, budget: Budget
) -> dict[str, Any]:
    """Run one measurement into ``row``: ok, oom, error, timeout, or skipped (no budget)."""
    if budget.left() < 1.0:
        row["status"] = "skipped (budget spent)"
        return row
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with deadline(budget.left()):
            row.update(fn())
        row["status"] = "ok"
    except OutOfBudget:
        row["status"] = "timeout"
    except Exception as exc:  # record any failure and go on: one try on a lent device
        row["status"] = "oom" if is_oom(exc) else "error"
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    # Outside the except blocks: the traceback, and the tensors its frames hold, are gone.
    row["wall_seconds"] = time.perf_counter() - start
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a timeout may leave kernels queued
            torch.cuda.synchronize(device)
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
    return row


# -- models and data ---------------------------------------------------------------------------


def toy_ebm(args: argparse.Namespace, device: torch.device) -> FlowEBM:
    """overhead.py's potential (seeded random weights), built on ``device``."""
    transform, energy = ebm_modules(random_ebm(args.seed, torch.float32, 8, 64, scale=0.1))
    transform.to(device)
    energy.to(device)
    # The backbone is built after the move: its base distribution takes the parameters' device.
    return FlowEBM(flow_backbone(transform, event_shape=(2,)), energy)


def image_ebm(args: argparse.Namespace, device: torch.device, data: Tensor) -> FlowEBM:
    """Glow + ConvEnergy with seeded random weights, ActNorm initialized from ``data``."""
    shape = tuple(args.image_shape)
    pyro.set_rng_seed(args.seed)  # the 1x1 convolutions start at random rotations
    transform = flows.glow(shape, args.image_levels, args.image_steps, args.image_hidden)
    energy = ConvEnergy(shape)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in [*transform.parameters(), *energy.parameters()]:
            p.add_(0.01 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    transform.to(device, torch.float32)
    energy.to(device, torch.float32)
    backbone = flow_backbone(transform, event_shape=shape)
    with torch.no_grad():  # ActNorm's data-dependent initialization, from data
        backbone.log_prob(data[:256].to(device))
    return FlowEBM(backbone, energy)


def make_data(model: str, args: argparse.Namespace, device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(args.seed)
    if model == "toy":
        data = datasets.load("eight_gaussians", NUM_DATA[model], generator=generator)
    else:
        data = torch.rand(NUM_DATA[model], *args.image_shape, generator=generator)
    return data.to(device, torch.float32)


def build(model: str, args: argparse.Namespace, device: torch.device, data: Tensor) -> FlowEBM:
    pyro.set_rng_seed(args.seed)
    return toy_ebm(args, device) if model == "toy" else image_ebm(args, device, data)


# -- the measurements ------------------------------------------------------------------------


@dataclass
class Sizes:
    """Iteration settings of one measurement (the CPU reference uses fewer)."""

    warmup: int
    thin: int
    repeats: int
    seconds: float
    max_train_steps: int


def sampling(
    model: str,
    chains: int,
    compiled: bool,
    args: argparse.Namespace,
    device: torch.device,
    data: Tensor,
    sizes: Sizes,
) -> dict[str, Any]:
    ebm = build(model, args, device, data)
    step_size = args.toy_step_size if model == "toy" else args.image_step_size
    kernel = HMC(step_size=step_size, num_steps=args.num_steps, compile=compiled)

    def run(warmup: int, thin: int, num_samples: int) -> Any:
        return run_chains(
            ebm, kernel, chains, num_samples, warmup, thin=thin, seed=args.seed,
            progress_bar=False,
        )  # fmt: skip

    if compiled:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()  # each compiled case pays its own compile
        counters.clear()
    # Untimed warm-up at this size: allocator, cuDNN and cuBLAS plans; the compile if any.
    first, _ = synced(lambda: run(1, 1, 1), device)
    times, idata = repeat_timed(
        lambda: run(sizes.warmup, sizes.thin, NUM_SAMPLES), device, sizes.repeats, sizes.seconds
    )
    seconds = median(times)
    leapfrogs = int(idata.attrs["num_grad_evals"])  # per chain, warm-up included
    iterations = sizes.warmup + NUM_SAMPLES * sizes.thin
    out = {}
    if compiled:
        # A graph break inside torch.func.grad makes Dynamo run the step eagerly: a
        # "compiled" row with breaks measures a partly eager kernel.
        out["graphs"] = int(counters["stats"]["unique_graphs"])
        breaks: dict[str, int] = {}
        for reason, count in counters["graph_break"].items():
            breaks[short_reason(reason)] = breaks.get(short_reason(reason), 0) + count
        out["graph_breaks"] = breaks
    return out | {
        "first_call_seconds": first,
        "first_call_iterations": 2,
        "seconds": seconds,
        "times": times,
        "iterations": iterations,
        "leapfrog_steps_per_chain": leapfrogs,
        "chain_steps_per_s": chains * leapfrogs / seconds,
        "chain_iterations_per_s": chains * iterations / seconds,
        "accept_rate": float(idata.sample_stats["acceptance_rate"].mean()),
        "adapted_step_size": float(idata.attrs["adapted_step_size"]),
        "throughput": chains * leapfrogs / seconds,
    }


def short_reason(text: str) -> str:
    """A graph break's first line and the source line that caused it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    code = next((line.split("code:", 1)[1].strip() for line in lines if "code:" in line), "")
    return f"{lines[0]}: {code}" if code else lines[0] if lines else text


def training(
    task: str,
    model: str,
    batch: int,
    compiled: bool,
    args: argparse.Namespace,
    device: torch.device,
    data: Tensor,
    sizes: Sizes,
) -> dict[str, Any]:
    ebm = build(model, args, device, data)
    step_size = args.toy_step_size if model == "toy" else args.image_step_size

    def run(steps: int) -> Any:
        if task == "fit_backbone":
            return fit_backbone(ebm.backbone, data, steps, batch_size=batch, progress_bar=False)
        return fit_ebm(
            ebm, data, steps, batch_size=batch, step_size=step_size, num_steps=args.num_steps,
            progress_bar=False, compile=compiled,
        )  # fmt: skip

    if compiled:
        torch._dynamo.reset()  # each compiled case pays its own compile
    warm_steps = 2
    first, _ = synced(lambda: run(warm_steps), device)
    # Steps per timed call: about seconds / repeats of work, from the warm-up's pace.
    per_step = first / warm_steps
    steps = int(min(sizes.max_train_steps, max(3, sizes.seconds / sizes.repeats / per_step)))
    times, _ = repeat_timed(lambda: run(steps), device, sizes.repeats, sizes.seconds)
    seconds = median(times)
    return {
        "first_call_seconds": first,
        "first_call_steps": warm_steps,
        "seconds": seconds,
        "times": times,
        "steps": steps,
        "steps_per_s": steps / seconds,
        "samples_per_s": batch * steps / seconds,
        "throughput": batch * steps / seconds,
    }


# -- ratios and report --------------------------------------------------------------------------


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Scaling against the smallest size, compiled against eager, GPU against CPU."""

    def ok(r: dict[str, Any]) -> bool:
        return r.get("status") == "ok"

    for row in rows:
        for name in ("x_smallest", "compiled_over_eager", "over_cpu_ref"):
            row.pop(name, None)
        if not ok(row):
            continue
        same = [
            r
            for r in rows
            if ok(r) and all(r[k] == row[k] for k in ("task", "model", "mode", "device"))
        ]
        smallest = min(same, key=lambda r: r["size"])
        row["x_smallest"] = row["throughput"] / smallest["throughput"]
        key = ("task", "model", "size", "device")
        if row["mode"] == "compiled":
            eager = [
                r
                for r in rows
                if ok(r) and r["mode"] == "eager" and all(r[k] == row[k] for k in key)
            ]
            if eager:
                row["compiled_over_eager"] = row["throughput"] / eager[0]["throughput"]
        if row["device"] != CPU_REF:
            cpu = [
                r
                for r in rows
                if ok(r)
                and r["device"] == CPU_REF
                and all(r[k] == row[k] for k in ("task", "model", "size", "mode"))
            ]
            if cpu:
                row["over_cpu_ref"] = row["throughput"] / cpu[0]["throughput"]


def model_names(args: argparse.Namespace) -> dict[str, str]:
    c, h, w = args.image_shape
    return {
        "toy": "RealNVP(2, 8 x 64) + MLPEnergy(2, 64, 2)",
        "image": f"glow(({c}, {h}, {w}), {args.image_levels} levels x {args.image_steps} steps, "
        f"hidden {args.image_hidden}) + ConvEnergy",
    }


def status_cell(row: dict[str, Any]) -> str:
    breaks = sum(row.get("graph_breaks", {}).values())
    extra = f", {breaks} graph break(s)" if breaks else ""
    return row["status"] + extra + (f": {row['error']}" if "error" in row else "")


SAMPLING_COLUMNS = ["model", "chains", "mode", "device", "status", "chain-steps/s"]
SAMPLING_COLUMNS += ["chain-iters/s", "x smallest", "x CPU ref", "compiled / eager"]
SAMPLING_COLUMNS += ["first call (s)", "timed (s)", "peak GB"]
TRAINING_COLUMNS = ["task", "model", "batch", "mode", "device", "status", "steps/s"]
TRAINING_COLUMNS += ["samples/s", "x smallest", "x CPU ref", "compiled / eager", "first call (s)"]
TRAINING_COLUMNS += ["steps timed", "timed (s)", "peak GB"]


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    names = model_names(args)
    na = ""

    def cell(row: dict[str, Any], key: str) -> Any:
        return row.get(key, na)

    sample_rows, train_rows = [], []
    for r in rows:
        common = [cell(r, "x_smallest"), cell(r, "over_cpu_ref")]
        if r["task"] == "run_chains":
            sample_rows.append(
                [r["model"], r["size"], r["mode"], r["device"], status_cell(r),
                 cell(r, "chain_steps_per_s"), cell(r, "chain_iterations_per_s"), *common,
                 cell(r, "compiled_over_eager"), cell(r, "first_call_seconds"),
                 cell(r, "seconds"), cell(r, "peak_memory_gb")]
            )  # fmt: skip
        else:
            train_rows.append(
                [r["task"], r["model"], r["size"], r["mode"], r["device"], status_cell(r),
                 cell(r, "steps_per_s"), cell(r, "samples_per_s"), *common,
                 cell(r, "compiled_over_eager"), cell(r, "first_call_seconds"), cell(r, "steps"),
                 cell(r, "seconds"), cell(r, "peak_memory_gb")]
            )  # fmt: skip
    device = info.get("device_name", "cpu")
    lines = [
        f"Throughput on {device}: torch {torch.__version__}, {info['torch_threads']} torch "
        f"thread(s) (CPU reference: {args.cpu_threads}), float32, random weights. "
        f"toy = {names['toy']}; image = {names['image']}. Run of "
        f"{info['run_seconds']:.0f} s (budget {args.max_seconds:.0f} s).",
        "",
        f"Sampling: `run_chains(ebm, HMC(step_size, num_steps={args.num_steps}), chains, "
        f"{NUM_SAMPLES}, warmup_steps={args.warmup}, thin={args.thin})` end to end, median of "
        f"up to {args.repeats} repeats after a warm-up. chain-steps/s = chains x leapfrog steps "
        "(gradient evaluations) per chain / s; chain-iters/s = chains x HMC iterations / s. "
        "x smallest: throughput over the smallest size's (same model, mode, device); "
        "compiled / eager and x CPU ref: at the same size. first call: 2 iterations, compile "
        "included.",
        "",
        markdown_table(SAMPLING_COLUMNS, sample_rows),
        *graph_break_notes(rows),
        "",
        "Training: `fit_backbone` and `fit_ebm` (their defaults; one fit_ebm step = 37 batched "
        "latent gradient evaluations plus the energy on 2 x batch points). samples/s = batch x "
        "steps/s; x smallest compares samples/s with the smallest batch's; compiled: "
        "`fit_ebm(compile=True)`, first call: 2 steps, compile included.",
        "",
        markdown_table(TRAINING_COLUMNS, train_rows),
    ]
    return "\n".join(lines)


def graph_break_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why Dynamo broke the compiled graphs, one line a compiled row that had breaks."""
    notes = []
    for r in rows:
        for reason, count in r.get("graph_breaks", {}).items():
            notes.append(f"- {r['model']}, {r['size']} chains: {count} x {reason}")
    return (
        ["", "Graph breaks of the compiled rows (those parts ran eagerly):", *notes]
        if notes
        else []
    )


def device_info(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_reference_threads": args.cpu_threads,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory_gb": props.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    else:
        info["device_name"] = f"CPU ({os.cpu_count()} cores)"
    return info


# -- main ------------------------------------------------------------------------------------


def plan(args: argparse.Namespace, device: torch.device) -> list[tuple[dict[str, Any], Any]]:
    """The measurements in the order they run: the most wanted first, the budget cuts the
    tail (eager sampling, training, compiled toy, CPU reference, compiled image)."""
    full = Sizes(args.warmup, args.thin, args.repeats, args.seconds_per_size, args.max_train_steps)
    cases: list[tuple[dict[str, Any], Any]] = []

    def add(
        task: str, model: str, size: int, mode: str, on: torch.device, sizes: Sizes, label: str
    ) -> None:
        row = {"task": task, "model": model, "size": size, "mode": mode, "device": label}
        cases.append((row, (on, sizes)))

    toy_batches, image_batches = sorted(args.toy_batches), sorted(args.image_batches)
    if "sampling" in args.parts:
        for model, chains in (("toy", args.toy_chains), ("image", args.image_chains)):
            for c in sorted(chains):
                add("run_chains", model, c, "eager", device, full, device.type)
    if "training" in args.parts:
        for model, batches in (("toy", toy_batches), ("image", image_batches)):
            for task in ("fit_backbone", "fit_ebm"):
                for b in batches:
                    add(task, model, b, "eager", device, full, device.type)
    if "compiled" in args.parts:
        for c in args.compile_toy_chains:
            add("run_chains", "toy", c, "compiled", device, full, device.type)
        for b in toy_batches:  # fit_ebm(compile=True): the chains' gradients compiled
            add("fit_ebm", "toy", b, "compiled", device, full, device.type)
    if "cpu-reference" in args.parts and (device.type == "cuda" or args.quick):
        cpu = torch.device("cpu")
        # Few iterations on the CPU: the rates are per step, the minimum work is what counts.
        short = Sizes(1, 1, 1, args.seconds_per_size, 5)
        for model, chains in (("toy", args.toy_chains), ("image", args.image_chains)):
            if "sampling" in args.parts and chains:
                add("run_chains", model, min(chains), "eager", cpu, short, CPU_REF)
        if "training" in args.parts:
            for model, batches in (("toy", toy_batches), ("image", image_batches)):
                for task in ("fit_backbone", "fit_ebm"):
                    if batches:
                        add(task, model, batches[0], "eager", cpu, short, CPU_REF)
    if "compiled" in args.parts:
        for c in args.compile_image_chains:
            add("run_chains", "image", c, "compiled", device, full, device.type)
    return cases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.warm_compile_cache:
        return measure(args)
    # Inductor caches compiled graphs (and Triton kernels) on disk across processes: a fresh
    # folder makes every compile time that of a first run.
    with tempfile.TemporaryDirectory(
        prefix="flowebm_inductor_", ignore_cleanup_errors=True
    ) as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        return measure(args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    setup(args)
    device = torch.device(args.device)
    budget = Budget(args.max_seconds, time.perf_counter())
    info = device_info(device, args)
    print(f"device: {info['device_name']}; budget {args.max_seconds:.0f} s", flush=True)
    data: dict[tuple[str, str], Tensor] = {}
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}

    def save(final: bool) -> None:
        add_ratios(rows)
        info["run_seconds"] = time.perf_counter() - budget.start
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        results.update(settings=settings, device_info=info, complete=final, rows=rows)
        text = markdown(rows, args, info)
        if final:
            write_results("gpu", args, results, text)
        else:  # after every row, quietly: a run killed from outside keeps what it measured
            with contextlib.redirect_stdout(io.StringIO()):
                write_results("gpu", args, results, text)

    for row, (on, sizes) in plan(args, device):
        key = (row["model"], on.type)
        if key not in data:
            data[key] = make_data(row["model"], args, on)
        threads = torch.get_num_threads()
        if row["device"] == CPU_REF:
            torch.set_num_threads(args.cpu_threads)
        if row["task"] == "run_chains":
            compiled = row["mode"] == "compiled"

            def fn(row=row, on=on, sizes=sizes, compiled=compiled, x=data[key]) -> dict[str, Any]:
                return sampling(row["model"], row["size"], compiled, args, on, x, sizes)
        else:

            def fn(row=row, on=on, sizes=sizes, x=data[key]) -> dict[str, Any]:
                compiled = row["mode"] == "compiled"
                return training(
                    row["task"], row["model"], row["size"], compiled, args, on, x, sizes
                )

        attempt(row, fn, on, budget)
        torch.set_num_threads(threads)
        rows.append(row)
        add_ratios(rows)
        print(describe(row), flush=True)
        save(final=False)
    save(final=True)
    print("\n" + markdown(rows, args, info))
    if any(r["status"] == "error" for r in rows):
        raise SystemExit("some measurements failed: see the rows with status 'error' above")
    return results


def describe(row: dict[str, Any]) -> str:
    head = f"{row['task']:12s} {row['model']:5s} {row['size']:8d} {row['mode']:8s} {row['device']}"
    if row["status"] != "ok":
        return f"{head}: {status_cell(row)} ({row.get('wall_seconds', 0):.1f} s)"
    if row["task"] == "run_chains":
        rate = f"{row['chain_steps_per_s']:,.0f} chain-steps/s (accept {row['accept_rate']:.2f})"
    else:
        rate = f"{row['steps_per_s']:.2f} steps/s, {row['samples_per_s']:,.0f} samples/s"
    ratios = [
        f"{label} {row[key]:.2f}"
        for key, label in (("x_smallest", "x smallest"), ("compiled_over_eager", "compiled/eager"))
        if key in row
    ]
    memory = f", peak {row['peak_memory_gb']:.2f} GB" if "peak_memory_gb" in row else ""
    breaks = sum(row.get("graph_breaks", {}).values())
    rate += f" [{breaks} graph break(s)]" if breaks else ""
    return (
        f"{head}: {rate}, {', '.join(ratios)}, first call {row['first_call_seconds']:.2f} s, "
        f"timed {row['seconds']:.2f} s{memory}"
    )


if __name__ == "__main__":
    main()
