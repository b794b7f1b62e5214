"""The ``pyro-flowebm`` command: train, sample, evaluate and report runs."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import matplotlib
import torch

from .. import datasets
from ..diagnostics import MIXING
from ..infer import SAMPLERS
from ..io import DirectoryLockedError
from ..train import TrainingDiverged
from .checks import MAX_COUNT, SEED_LIMIT, check_device
from .config import (
    BACKBONES,
    COMPILE_MIN_GRADIENTS,
    IMAGE_BACKBONES,
    IMAGE_DEFAULTS,
    RunConfig,
    default_of,
)
from .evaluation import evaluate_run
from .launch import (
    BACKENDS,
    STOPPED,
    ProcessStopped,
    check_processes,
    launch,
    launched,
    process_group,
    without_launch_flag,
)
from .reporting import report_run
from .rundir import CHECKPOINT, EVALUATION, read_config
from .sampling import check_shared_chains, sample_run
from .training import train_run

__all__ = ["main"]

EXIT_USAGE = 2
# `report --strict`: the verdict is not `mixing`.
EXIT_NOT_MIXING = 3
# Ctrl-C, as shells report SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Deprecated(argparse.Action):
    """A flag's old name: stores into the new one's destination and says so on stderr."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(f"{parser.prog}: {option_string} is deprecated: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _int_in(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text}")
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, 1, MAX_COUNT)


def _nonnegative_int(text: str) -> int:
    return _int_in(text, 0, MAX_COUNT)


def _at_least(low: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        return _int_in(text, low, MAX_COUNT)

    return count


def _seed(text: str) -> int:
    return _int_in(text, 0, SEED_LIMIT - 1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def _device(text: str) -> str:
    """A torch device this machine has (see :func:`~pyro_flowebm.app.checks.check_device`)."""
    try:
        check_device("a device", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


# The RunConfig fields `train` sets: (field, type, help); the flag is the field's name with
# dashes, one word for one setting in code, command and config.json.
_TRAIN_FLAGS: tuple[tuple[str, Any, str], ...] = (
    ("steps", _positive_int, "training steps of the tilt"),
    ("seed", _seed, "seed of the data split, the initialization and training"),
    ("device", _device, "torch device, e.g. cpu or cuda"),
    ("num_data", _positive_int, "training draws of a toy data set"),
    ("num_heldout", _positive_int, "held-out draws of a toy data set"),
    ("heldout_fraction", _fraction, "share of a data file held out"),
    ("backbone", str,
     "flow preset: auto (realnvp for vectors, glow for images), realnvp, neural_spline, glow"),
    ("backbone_levels", _positive_int, "scales of an image flow"),
    ("backbone_layers", _positive_int,
     "flow layers (image flows: steps per scale)"),
    ("backbone_hidden", _positive_int,
     "width of the flow's networks (image flows: channels)"),
    ("energy_layers", _positive_int,
     "hidden layers of the energy MLP (images: convolutions)"),
    ("energy_hidden", _positive_int,
     "width of the energy MLP (images: channels of the first convolution)"),
    ("backbone_steps", _positive_int, "maximum-likelihood steps of the flow"),
    ("backbone_lr", _positive_float, "learning rate of the flow's fit"),
    ("lr", _positive_float, "learning rate of the energy"),
    ("batch_size", _positive_int, "data points and chains per step"),
    ("mcmc_steps", _positive_int, "latent HMC iterations per step"),
    ("num_steps", _positive_int, "leapfrog steps per HMC iteration"),
    ("independence_moves", _nonnegative_int,
     "independence Metropolis moves per step (backbone proposals)"),
    ("energy_reg", _finite_float, "weight of the squared-energy penalty"),
    ("finetune_lr", _positive_float,
     "fine-tune the backbone jointly with this learning rate"),
    ("validate_every", _positive_int, "steps between validations"),
    ("checkpoint_every", _nonnegative_int,
     "steps between checkpoints (0: only at the end)"),
)  # fmt: skip
# Old flag names, kept working: old -> (new, destination).
_DEPRECATED_FLAGS = {
    "train": {"--leapfrog-steps": ("--num-steps", "num_steps")},
    "sample": {"--warmup": ("--warmup-steps", "warmup_steps")},
    "evaluate": {"--num-samples": ("--num-draws", "num_draws")},
}


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch intra-op threads (default: 1; the default models are small, and extra "
        "threads on a busy machine slow training down, see docs/command.md)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _process_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--nproc-per-node", dest="nproc_per_node", type=_positive_int, default=None,
        metavar="N",
        help=f"run in N processes on this machine, launched through torchrun, each with its "
        f"share of {what} (gloo on CPU, nccl on CUDA: one GPU a process); for several "
        "machines, start `torchrun ... -m pyro_flowebm` on each (docs/scaling.md)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="torch.distributed backend of a run in several processes (default: auto, nccl "
        "for CUDA devices, gloo otherwise)",
    )  # fmt: skip


def _deprecated_flags(parser: argparse.ArgumentParser, command: str, **kwargs: Any) -> None:
    for old, (new, dest) in _DEPRECATED_FLAGS[command].items():
        parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS,
                            **kwargs)  # fmt: skip


def _train_parser(commands: Any) -> None:
    toys = ", ".join(sorted(datasets.TOYS))
    images = ", ".join(datasets.IMAGE_SETS)
    defaults = RunConfig()
    train = commands.add_parser(
        "train",
        help="fit the backbone, then learn the tilt, into a run directory",
        description="Fit a flow backbone by maximum likelihood, then learn the energy tilt "
        "with latent MCMC. Writes config.json, data.pt, metrics.jsonl and checkpoint.pt "
        "into --out. Exit code 1 if training diverges (the last good checkpoint is kept).",
    )
    train.add_argument(
        "--data", required=True, metavar="NAME_OR_FILE",
        help=f"a toy data set ({toys}), a .npy, .pt or .csv file of shape (n, d), or images: "
        f"{images}, or a .npy file of shape (N, C, H, W) or (N, H, W)",
    )  # fmt: skip
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="run directory")
    for field, kind, text in _TRAIN_FLAGS:
        flag, default = "--" + field.replace("_", "-"), getattr(defaults, field)
        # SUPPRESS: only flags actually given reach the config, so --resume can tell
        # a conflicting flag from a default.
        train.add_argument(
            flag, dest=field, type=kind, default=argparse.SUPPRESS,
            choices=["auto", *BACKBONES, *IMAGE_BACKBONES] if field == "backbone" else None,
            help=f"{text} (default: {default}"
            + (f"; images: {IMAGE_DEFAULTS[field]})" if field in IMAGE_DEFAULTS else ")"),
        )  # fmt: skip
    train.add_argument(
        "--persistent", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
        help=f"keep the chains between steps (default: {defaults.persistent}; images: "
        f"{IMAGE_DEFAULTS['persistent']}, restarted from N(0, I) each step)",
    )  # fmt: skip
    train.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
        help="move the chains with gradients compiled by torch.compile (default: on for "
        f"vector data when the tilt runs at least {COMPILE_MIN_GRADIENTS:,} gradient "
        "evaluations a chain, off otherwise; --resume keeps the run's)",
    )  # fmt: skip
    _deprecated_flags(train, "train", type=_positive_int, default=argparse.SUPPRESS)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _process_flags(train, "every data batch and of the chains")
    _common_flags(train)


def _sample_parser(commands: Any) -> None:
    sample = commands.add_parser(
        "sample",
        help="draw MCMC samples of a trained run into a NetCDF file",
        description="Sample a run's FlowEBM by MCMC in the flow's latent space and write "
        "ArviZ InferenceData (posterior x and z, sample_stats) as NetCDF.",
    )
    sample.add_argument("--run", required=True, type=Path, metavar="DIR", help="run directory")
    sample.add_argument("--out", required=True, type=Path, metavar="FILE.nc", help="output file")
    counts = {
        "--num-chains": ("num_chains", _positive_int, "chains"),
        "--num-samples": ("num_samples", _positive_int, "draws per chain"),
        "--warmup-steps": ("warmup_steps", _nonnegative_int, "warm-up iterations"),
        "--thin": ("thin", _positive_int, "keep every n-th draw"),
        "--seed": ("seed", _seed, "seed of the draws"),
    }
    for flag, (dest, kind, text) in counts.items():
        default = default_of(sample_run, dest)
        sample.add_argument(flag, dest=dest, type=kind, default=default,
                            help=f"{text} (default: {default})")  # fmt: skip
    _deprecated_flags(sample, "sample", type=_nonnegative_int)
    sampler = default_of(sample_run, "sampler")
    sample.add_argument(
        "--sampler", choices=SAMPLERS, default=sampler,
        help="hmc-imh: four HMC iterations then one independence move a cycle; hmc: HMC with 10 "
        "leapfrog steps; chees: HMC with ChEES trajectory length; nuts: Pyro NUTS, one "
        "chain at a time (slow); data-hmc: HMC in data space from the same start points, "
        f"the baseline (default: {sampler})",
    )  # fmt: skip
    sample.add_argument(
        "--device", type=_device, default=None, help="torch device (default: the run's)"
    )
    sample.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="compute the chains' gradients through torch.compile (default: on for vector "
        f"runs when sampling takes at least {COMPILE_MIN_GRADIENTS:,} gradient "
        "evaluations a chain; never with nuts)",
    )  # fmt: skip
    sample.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _process_flags(sample, "the chains")
    _common_flags(sample)


def _evaluate_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="compare backbone and EBM samples with held-out data",
        description="Compare draws of the backbone and of the EBM with held-out data: MMD, "
        "energy distance and, for the toy mixtures, mode coverage, mode-weight error and "
        "grid KL; the held-out negative log-likelihood of both, with the EBM's log Z. Prints "
        "a table and writes evaluation.json and evaluation.png (data, backbone samples, EBM "
        "samples, learned energy) into the run directory.",
    )
    evaluate.add_argument("--run", required=True, type=Path, metavar="DIR", help="run directory")
    evaluate.add_argument(
        "--data", default=None, metavar="NAME_OR_FILE",
        help="reference data: a toy name (fresh exact draws) or a file (default: the "
        "run's held-out data)",
    )  # fmt: skip
    evaluate.add_argument(
        "--samples", type=Path, default=None, metavar="FILE.nc",
        help="EBM draws from `pyro-flowebm sample` (default: draw them with hmc-imh)",
    )  # fmt: skip
    num_draws, seed = default_of(evaluate_run, "num_draws"), default_of(evaluate_run, "seed")
    evaluate.add_argument(
        "--num-draws", dest="num_draws", type=_at_least(2), default=num_draws,
        help=f"draws of each model compared, one a chain (default: {num_draws})",
    )  # fmt: skip
    _deprecated_flags(evaluate, "evaluate", type=_at_least(2))
    evaluate.add_argument("--seed", type=_seed, default=seed, help=f"(default: {seed})")
    log_z_particles = default_of(evaluate_run, "log_z_particles")
    evaluate.add_argument(
        "--log-z-particles", type=_at_least(256), default=log_z_particles,
        help="importance-sampling particles of log Z, for the EBM's held-out likelihood "
        f"(annealed SMC with an eighth as many where k-hat > 0.7; default: {log_z_particles})",
    )  # fmt: skip
    evaluate.add_argument("--no-plots", action="store_true", help="skip evaluation.png")
    _common_flags(evaluate)


def _report_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write an HTML mixing report of a run's chains, with a verdict",
        description="Write one self-contained HTML page (ArviZ summary with flagged cells, "
        "trace, rank, autocorrelation and energy plots, mode coverage, chains over the data, "
        "settings and versions) and a Markdown summary beside it whose first line is "
        "`verdict: mixing`, `verdict: not mixing` or `verdict: false convergence`. Exit code "
        f"2 on bad input; with --strict, {EXIT_NOT_MIXING} when the verdict is not mixing.",
    )
    report.add_argument(
        "source", type=Path, metavar="RUN_DIR_OR_NETCDF",
        help="a run directory with samples.nc, or any ArviZ NetCDF file with a posterior",
    )  # fmt: skip
    report.add_argument(
        "--compare", type=Path, default=None, metavar="OTHER",
        help="a second run or NetCDF file, reported side by side with a comparison verdict",
    )  # fmt: skip
    report.add_argument("--out", required=True, type=Path, metavar="FILE.html", help="the page")
    report.add_argument(
        "--modes", type=Path, default=None, metavar="FILE",
        help="known mode centres, a .npy, .csv or .pt file of shape (K, d) (default: the "
        "modes of a run's built-in mixture)",
    )  # fmt: skip
    report.add_argument(
        "--var-names", nargs="+", default=None, metavar="NAME",
        help="posterior variables in the summary table and the trace, rank and "
        "autocorrelation plots, as ArviZ's var_names (exact names; default: every posterior "
        "variable)",
    )  # fmt: skip
    report.add_argument(
        "--strict", action="store_true",
        help=f"exit with code {EXIT_NOT_MIXING} unless the verdict is `mixing`",
    )  # fmt: skip
    report.add_argument(
        "--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-flowebm",
        description="Train, sample and evaluate energy-based models tilted from normalizing "
        "flows, sampled by MCMC in the flow's latent space.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_train_parser, _sample_parser, _evaluate_parser, _report_parser):
        add(commands)
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The run's config from the flags given (a resume keeps the run's compile choice)."""
    fields = {field for field, _, _ in _TRAIN_FLAGS} | {"persistent", "compile"}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if args.resume and "compile" not in given and (args.out / "config.json").is_file():
        # The run's own choice (a run of 0.1 was eager), not today's default for it; a
        # damaged config is reported by train_run.
        with contextlib.suppress(ValueError, OSError):
            given["compile"] = read_config(args.out).compile
    try:
        config = RunConfig.for_data(args.data, **given)
    except (TypeError, ValueError) as e:
        # The config names its field; the user typed the flag of the same name.
        named = [field for field in given if re.search(rf"\b{field}\b", str(e))]
        flag = f"argument --{named[0].replace('_', '-')}: " if named else ""
        raise ValueError(flag + str(e)) from e
    return config


def _first_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    try:
        train_run(
            args.out, config, resume=args.resume, overwrite=args.overwrite,
            progress_bar=not args.no_progress,
        )  # fmt: skip
    except TrainingDiverged as e:
        if _first_process():  # every process stopped at the same step
            print(
                f"pyro-flowebm train: {e}. The last good checkpoint is kept in "
                f"{args.out / CHECKPOINT}.",
                file=sys.stderr,
            )
        return 1
    if _first_process():
        print(f"trained: {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    sample_run(
        args.run, args.out, sampler=args.sampler, num_chains=args.num_chains,
        num_samples=args.num_samples, warmup_steps=args.warmup_steps, thin=args.thin,
        seed=args.seed, device=args.device, overwrite=args.overwrite,
        progress_bar=not args.no_progress, compile=args.compile,
    )  # fmt: skip
    if _first_process():
        print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    report = evaluate_run(
        args.run, data=args.data, samples=args.samples, num_draws=args.num_draws,
        seed=args.seed, plots=not args.no_plots, progress_bar=not args.no_progress,
        log_z_particles=args.log_z_particles,
    )  # fmt: skip
    print(report.table())
    print(f"wrote {args.run / EVALUATION}")
    return 0


def _report(args: argparse.Namespace) -> int:
    matplotlib.use("Agg")  # a file is written; no window is ever opened
    if args.out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"expected an .html file for --out, got {args.out}")
    result = report_run(
        args.source, args.out, compare=args.compare, modes=args.modes,
        var_names=args.var_names,
    )  # fmt: skip
    print(result.verdict)
    if result.comparison:
        print(f"comparison: {result.comparison}")
    print(f"wrote {result.html} and {result.markdown} in {result.seconds:.1f} s")
    return EXIT_NOT_MIXING if args.strict and result.verdict.label != MIXING else 0


def _expected_failure(error: BaseException) -> str | None:
    """The message of a failure the user can fix (bad input, a missing or damaged file, no
    space, no permission, no memory, another process), or ``None`` for a bug."""
    if isinstance(error, ValueError | OSError | DirectoryLockedError):
        return str(error)
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return f"out of memory: {error}; use smaller sizes"
    if isinstance(error, RuntimeError) and "can't allocate memory" in str(error):
        return f"out of memory: {str(error).splitlines()[0]}; use smaller sizes"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-flowebm`` with ``argv`` (default: the command line); returns the exit code.

    Example:
        >>> main(["train", "--data", "rings", "--out", "run", "--steps", "0"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument already reported in one line
        return int(e.code or 0)
    commands = {"train": _train, "sample": _sample, "evaluate": _evaluate, "report": _report}
    command = commands[args.command]
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(args.threads)
    try:
        if getattr(args, "nproc_per_node", None) is not None:
            return _launch(args, argv)
        if launched():
            return _in_process_group(command, args)
        return command(args)
    except (ProcessStopped, torch.distributed.DistError) as e:
        # Stopped by the launcher, or a collective found a peer gone: another process of
        # the run failed first (the launcher reports which).
        if isinstance(e, torch.distributed.DistError):
            e = f"lost another process of the run ({str(e).splitlines()[0]})"
        print(f"pyro-flowebm {args.command}: {e}{_resume_hint(args)}", file=sys.stderr)
        return STOPPED
    except KeyboardInterrupt:
        print(f"pyro-flowebm {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = _expected_failure(e)
        if message is None:
            raise  # a bug: the traceback is for us
        # Bad input is found alike (or by the first process for all) in every process of a
        # run: the first reports it; what befalls one process, that process reports.
        if _first_process() or not isinstance(e, ValueError | OSError | DirectoryLockedError):
            print(f"pyro-flowebm {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _resume_hint(args: argparse.Namespace) -> str:
    if args.command != "train":
        return ""
    return f" (the last checkpoint is kept in {args.out / CHECKPOINT}: continue with --resume)"


def _device_and_counts(args: argparse.Namespace) -> tuple[str, dict[str, int]]:
    """The device of a train or sample command, and its counts that processes share."""
    if args.command == "train":
        config = _train_config(args)
        return config.device, {"--batch-size": config.batch_size}
    device = args.device if args.device is not None else read_config(args.run).device
    return device, {"--num-chains": args.num_chains}


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """``--nproc-per-node N``: check, then run the command in N processes through torchrun."""
    if launched():
        raise ValueError(
            "expected --nproc-per-node outside torchrun (under torchrun, give torchrun the "
            "number of processes), got both"
        )
    device, counts = _device_and_counts(args)
    check_processes(args.nproc_per_node, device, args.backend, counts)
    if args.command == "sample":
        check_shared_chains(args.sampler, args.num_chains, args.nproc_per_node)
    # torchrun would set it (and say so); --threads sets torch's threads in each process.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    code, failures = launch(without_launch_flag(argv), args.nproc_per_node)
    if not failures:
        return code
    print(
        f"pyro-flowebm {args.command}: error: {'; '.join(failures)}; the others were stopped"
        + _resume_hint(args),
        file=sys.stderr,
    )
    return code


def _in_process_group(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace
) -> int:
    """A process started by torchrun: run ``command`` as its share of the run."""
    if args.command not in ("train", "sample"):
        raise ValueError(f"expected train or sample under torchrun, got {args.command}")
    device, _ = _device_and_counts(args)
    with process_group(device, args.backend):
        return command(args)


if __name__ == "__main__":
    sys.exit(main())
