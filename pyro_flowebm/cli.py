"""The ``pyro-flowebm`` command: train, sample, evaluate and report on runs of FlowEBMs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from . import datasets
from .report import SAMPLERS
from .runs import BACKBONES, IMAGE_BACKBONES, IMAGE_DEFAULTS, RunConfig, RunExistsError, train_run
from .train import TrainingDiverged

__all__ = ["main"]

EXIT_USAGE = 2
# `report --strict`: the verdict is not `mixing`.
EXIT_NOT_MIXING = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _UsageError(Exception):
    """A bad argument found after parsing (bad data, an occupied --out, ...): exit 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


# Flags of `train` that set a RunConfig field: (flag, field, type, help).
_TRAIN_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--steps", "steps", _positive_int, "training steps of the tilt"),
    ("--seed", "seed", int, "seed of the data split, the initialization and training"),
    ("--device", "device", str, "torch device, e.g. cpu or cuda"),
    ("--num-data", "num_data", _positive_int, "training draws of a toy data set"),
    ("--num-heldout", "num_heldout", _positive_int, "held-out draws of a toy data set"),
    ("--heldout-fraction", "heldout_fraction", float, "share of a data file held out"),
    ("--backbone", "backbone", str,
     "flow preset: auto (realnvp for vectors, glow for images), realnvp, neural_spline, glow"),
    ("--backbone-levels", "backbone_levels", _positive_int, "scales of an image flow"),
    ("--backbone-layers", "backbone_layers", _positive_int,
     "flow layers (image flows: steps per scale)"),
    ("--backbone-hidden", "backbone_hidden", _positive_int,
     "width of the flow's networks (image flows: channels)"),
    ("--energy-layers", "energy_layers", _positive_int,
     "hidden layers of the energy MLP (images: convolutions)"),
    ("--energy-hidden", "energy_hidden", _positive_int,
     "width of the energy MLP (images: channels of the first convolution)"),
    ("--backbone-steps", "backbone_steps", _positive_int, "maximum-likelihood steps of the flow"),
    ("--backbone-lr", "backbone_lr", _positive_float, "learning rate of the flow's fit"),
    ("--lr", "lr", _positive_float, "learning rate of the energy"),
    ("--batch-size", "batch_size", _positive_int, "data points and chains per step"),
    ("--mcmc-steps", "mcmc_steps", _positive_int, "latent HMC iterations per step"),
    ("--leapfrog-steps", "num_steps", _positive_int, "leapfrog steps per HMC iteration"),
    ("--independence-moves", "independence_moves", _nonnegative_int,
     "independence Metropolis moves per step (backbone proposals)"),
    ("--energy-reg", "energy_reg", float, "weight of the squared-energy penalty"),
    ("--finetune-lr", "finetune_lr", _positive_float,
     "fine-tune the backbone jointly with this learning rate"),
    ("--validate-every", "validate_every", _positive_int, "steps between validations"),
    ("--checkpoint-every", "checkpoint_every", _nonnegative_int,
     "steps between checkpoints (0: only at the end)"),
)  # fmt: skip


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch intra-op threads (default: 1; the default models are small, and two "
        "threads on a busy 2-core machine ran a training step 60x slower than one)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-flowebm",
        description="Train, sample and evaluate energy-based models tilted from normalizing "
        "flows, sampled by MCMC in the flow's latent space.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    for flag, field, kind, text in _TRAIN_FLAGS:
        default = getattr(defaults, field)
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
        help="keep the chains between steps (default; images: restart them from N(0, I) "
        "each step)",
    )  # fmt: skip
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _common_flags(train)

    sample = commands.add_parser(
        "sample",
        help="draw MCMC samples of a trained run into a NetCDF file",
        description="Sample a run's FlowEBM by MCMC in the flow's latent space and write "
        "ArviZ InferenceData (posterior x and z, sample_stats) as NetCDF.",
    )
    sample.add_argument("--run", required=True, type=Path, metavar="DIR", help="run directory")
    sample.add_argument("--out", required=True, type=Path, metavar="FILE.nc", help="output file")
    sample.add_argument("--num-chains", type=_positive_int, default=256, help="(default: 256)")
    sample.add_argument(
        "--num-samples", type=_positive_int, default=200, help="draws per chain (default: 200)"
    )
    sample.add_argument(
        "--warmup", type=_nonnegative_int, default=200, help="warm-up iterations (default: 200)"
    )
    sample.add_argument(
        "--thin", type=_positive_int, default=1, help="keep every n-th draw (default: 1)"
    )
    sample.add_argument(
        "--sampler", choices=SAMPLERS, default="hmc-imh",
        help="hmc-imh: four HMC iterations then one independence move a cycle; hmc: HMC with 10 "
        "leapfrog steps; chees: HMC with ChEES trajectory length; nuts: Pyro NUTS, one "
        "chain at a time (slow); data-hmc: HMC in data space from the same start points, "
        "the baseline (default: hmc-imh)",
    )  # fmt: skip
    sample.add_argument("--seed", type=int, default=0, help="(default: 0)")
    sample.add_argument("--device", default=None, help="torch device (default: the run's)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common_flags(sample)

    evaluate = commands.add_parser(
        "evaluate",
        help="compare backbone and EBM samples with held-out data",
        description="Compare draws of the backbone and of the EBM with held-out data: MMD, "
        "energy distance and, for the toy mixtures, mode coverage, mode-weight error and "
        "grid KL. Prints a table and writes evaluation.json and evaluation.png (data, "
        "backbone samples, EBM samples, learned energy) into the run directory.",
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
    evaluate.add_argument(
        "--num-samples", type=_positive_int, default=2000, help="draws compared (default: 2000)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="(default: 0)")
    evaluate.add_argument("--no-plots", action="store_true", help="skip evaluation.png")
    _common_flags(evaluate)

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
        "--strict", action="store_true",
        help=f"exit with code {EXIT_NOT_MIXING} unless the verdict is `mixing`",
    )  # fmt: skip
    report.add_argument(
        "--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)"
    )
    return parser


def _train(args: argparse.Namespace) -> int:
    fields = {field for _, field, _, _ in _TRAIN_FLAGS} | {"persistent"}
    given = {k: v for k, v in vars(args).items() if k in fields}
    try:
        config = RunConfig.for_data(args.data, **given)
    except ValueError as e:
        raise _UsageError(str(e)) from e
    try:
        train_run(
            args.out, config, resume=args.resume, overwrite=args.overwrite,
            progress_bar=not args.no_progress,
        )  # fmt: skip
    except TrainingDiverged as e:
        print(
            f"pyro-flowebm train: {e}. The last good checkpoint is kept in "
            f"{args.out / 'checkpoint.pt'}.",
            file=sys.stderr,
        )
        return 1
    except (ValueError, FileNotFoundError, RunExistsError) as e:
        raise _UsageError(str(e)) from e
    print(f"trained: {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .diagnostics import write_netcdf
    from .report import sample_ebm
    from .runs import load_run

    if args.out.exists() and not args.overwrite:
        raise _UsageError(f"expected a new --out file, got existing {args.out}; pass --overwrite")
    if args.out.suffix != ".nc":
        raise _UsageError(f"expected a .nc file for --out, got {args.out}")
    try:
        ebm = load_run(args.run, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        raise _UsageError(str(e)) from e
    idata = sample_ebm(
        ebm, args.sampler, args.num_chains, args.num_samples, args.warmup,
        thin=args.thin, seed=args.seed, progress_bar=not args.no_progress,
    )  # fmt: skip
    write_netcdf(idata, args.out)
    print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .report import evaluate_run

    try:
        report = evaluate_run(
            args.run, data=args.data, samples=args.samples, num_samples=args.num_samples,
            seed=args.seed, plots=not args.no_plots, progress_bar=not args.no_progress,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        raise _UsageError(str(e)) from e
    print(report.table())
    print(f"wrote {args.run / 'evaluation.json'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # a file is written; no window is ever opened
    from .diagnostics import MIXING, report

    if args.out.suffix.lower() not in (".html", ".htm"):
        raise _UsageError(f"expected an .html file for --out, got {args.out}")
    try:
        result = report(args.source, args.out, compare=args.compare, modes=args.modes)
    except (FileNotFoundError, ValueError) as e:
        raise _UsageError(str(e)) from e
    print(result.verdict)
    if result.comparison:
        print(f"comparison: {result.comparison}")
    print(f"wrote {result.html} and {result.markdown} in {result.seconds:.1f} s")
    return EXIT_NOT_MIXING if args.strict and result.verdict.label != MIXING else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-flowebm`` with ``argv`` (default: the command line); returns the exit code.

    Example:
        >>> main(["train", "--data", "rings", "--out", "run", "--steps", "0"])
        2
    """
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
        return command(args)
    except _UsageError as e:
        print(f"pyro-flowebm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
