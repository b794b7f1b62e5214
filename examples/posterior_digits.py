"""Inpainting and denoising 8 x 8 digits: posteriors under a learned EBM prior and its backbone.

A digits FlowEBM (a trained run given by ``--run``, or a small one trained here into
``--out``) is the prior p(x) of a Pyro model whose likelihood observes part of a held-out
digit with Gaussian noise; :func:`~pyro_flowebm.infer.sample_posterior` samples the whole
image by likelihood-tempered SMC in the flow's latent space. The same flow with zero
energy (a FlowEBM whose energy is 0, so it goes through the same latent-space route) is
the comparison prior. Two tasks, each under both priors:

- inpainting: the top ``--observed-rows`` rows observed with noise ``--inpaint-noise``;
  the completions (posterior draws) are classified by the digits probe;
- denoising: every pixel observed with noise ``--denoise-noise``; the posterior mean is
  compared with the clean image and classified.

Images are in the model's own data space, where a pixel of level k of L is the
dequantization cell [k/L, (k + 1)/L): the clean image is the cell centres (k + 1/2)/L.
Per prior and task ``summary.json`` holds (over the digits):

- ``accuracy``: probe accuracy of the posterior-predictive class, the argmax of the
  probe's class probabilities averaged over the draws;
- ``draw_accuracy``: the probe's accuracy on single draws, averaged over draws;
- ``mean_accuracy``: the probe's accuracy on the posterior-mean image;
- ``class_entropy``: entropy (nats) of the posterior-predictive class probabilities, the
  mean over digits (0: every draw is the same digit; log 10 = 2.30: no idea);
- ``rmse``: root mean square error of the posterior-mean image to the clean image, over
  the pixels not observed (inpainting) or all pixels (denoising);
- ``log_evidence``: log p(y) of all the digits' observations, summed over the
  ``sample_posterior`` calls, with its standard error: the prior's own normalization
  cancels in SMC from prior draws, so EBM and backbone compare as a Bayes factor;
- ``seconds``, ``num_nonfinite`` and the per-digit ``predicted`` classes.

Pictures: ``inpainting.png`` (per digit: observed top, truth, completions under each
prior) and ``denoising.png`` (per digit: observation, truth, posterior mean and a draw
under each prior).

    python examples/posterior_digits.py --run runs/digits --out posterior_digits_output
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from torch import Tensor

from pyro_flowebm import FlowEBM, load_run, sample_posterior
from pyro_flowebm.app import RunConfig, read_config, train_run
from pyro_flowebm.app.rundir import PROBE
from pyro_flowebm.datasets import load_images
from pyro_flowebm.metrics import DigitsProbe, load_or_fit_probe

# RunConfig fields the command line may set for a run trained here; the rest are the
# image defaults of RunConfig.for_data (what `pyro-flowebm train --data digits` uses).
TRAIN_FIELDS = (
    "backbone_layers",
    "backbone_hidden",
    "energy_layers",
    "energy_hidden",
    "backbone_steps",
    "steps",
    "batch_size",
    "mcmc_steps",
)
PRIORS = ("ebm", "backbone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("posterior_digits_output"), help="output folder"
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a trained digits run (default: train one in OUT/run)",
    )
    train = parser.add_argument_group("training a run here, without --run")
    defaults = RunConfig.for_data("digits")
    for name in TRAIN_FIELDS:
        train.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"RunConfig.{name} (default: {getattr(defaults, name)})",
        )
    parser.add_argument(
        "--num-digits", type=int, default=10, help="held-out digits, classes in turn"
    )
    parser.add_argument(
        "--digits-per-call",
        type=int,
        default=1,
        help="digits in one sample_posterior call, plated",
    )
    parser.add_argument("--num-chains", type=int, default=2, help="SMC particle systems")
    parser.add_argument("--num-samples", type=int, default=16, help="particles per system")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="HMC moves after SMC's last resampling (default: sample_posterior's)",
    )
    parser.add_argument("--observed-rows", type=int, default=4, help="rows observed in inpainting")
    parser.add_argument("--inpaint-noise", type=float, default=0.05, help="inpainting noise sd")
    parser.add_argument("--denoise-noise", type=float, default=0.2, help="denoising noise sd")
    parser.add_argument("--num-shown", type=int, default=6, help="completions per prior shown")
    parser.add_argument("--seed", type=int, default=0, help="seed of training, noise and SMC")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    positive = ["num_digits", "digits_per_call", "num_chains", "num_shown"]
    positive += [name for name in TRAIN_FIELDS if getattr(args, name) is not None]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_digits > 290:
        parser.error(
            f"--num-digits must be <= 290 (29 held-out digits a class), got {args.num_digits}"
        )
    if args.num_samples < 2:
        parser.error(f"--num-samples must be >= 2, got {args.num_samples}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not 1 <= args.observed_rows <= 7:
        parser.error(f"--observed-rows must be in 1..7, got {args.observed_rows}")
    for name in ("inpaint_noise", "denoise_noise"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    return args


def zero_energy(x: Tensor) -> Tensor:
    """E(x) = 0: a FlowEBM with this energy is its backbone."""
    return x.new_zeros(x.shape[0])


def inpainting_model(prior: FlowEBM, y: Tensor, sigma: float) -> None:
    """Digits ``x ~ prior`` whose top rows are observed, ``y = x[:, :rows] + sigma * noise``;
    ``y`` is ``(D, C, rows, W)``, one row of the plate a digit."""
    with pyro.plate("digits", y.shape[0]):
        x = pyro.sample("x", prior)
        top = x[..., : y.shape[-2], :]
        # A particle where the flow overflows has NaN pixels: unvalidated, its likelihood is
        # NaN, which sample_posterior rejects in the same run; validated, Pyro raises and the
        # batch is rerun in halves to find it.
        likelihood = dist.Normal(top, sigma, validate_args=False).to_event(3)
        pyro.sample("y", likelihood, obs=y)


def denoising_model(prior: FlowEBM, y: Tensor, sigma: float) -> None:
    """Digits ``x ~ prior`` observed whole, ``y = x + sigma * noise``, ``y`` of ``(D, C, H, W)``."""
    with pyro.plate("digits", y.shape[0]):
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x, sigma, validate_args=False).to_event(3), obs=y)


def held_out_digits(num_digits: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """The first ``num_digits`` held-out digits taking the classes in turn (0, 1, ..., 9,
    0, ...): indices into the validation split, images, labels and levels."""
    validation = load_images("digits", "validation")
    by_class = [torch.nonzero(validation.labels == k).flatten() for k in range(10)]
    index = torch.stack([by_class[i % 10][i // 10] for i in range(num_digits)])
    return index, validation.images[index], validation.labels[index], validation.levels


def load_or_train(args: argparse.Namespace, progress: bool) -> tuple[FlowEBM, Path, float | None]:
    """The run of ``--run``, or one trained into ``OUT/run`` with the flags given."""
    if args.run is not None:
        return load_run(args.run), args.run, None
    fields = {name: getattr(args, name) for name in TRAIN_FIELDS if getattr(args, name) is not None}
    config = RunConfig.for_data("digits", seed=args.seed, **fields)
    run_dir = args.out / "run"
    overwrite = run_dir.is_dir() and any(run_dir.iterdir())
    start = time.perf_counter()
    train_run(run_dir, config, overwrite=overwrite, progress_bar=progress)
    return load_run(run_dir), run_dir, time.perf_counter() - start


def posterior_draws(
    model: Callable[..., None],
    prior: FlowEBM,
    y: Tensor,
    sigma: float,
    args: argparse.Namespace,
) -> tuple[Tensor, dict[str, Any]]:
    """Posterior draws of every digit, ``(D, draws, C, H, W)``, from ``sample_posterior``
    calls of ``--digits-per-call`` digits each, and what the calls report."""
    draws, log_z, variance, nonfinite = [], 0.0, 0.0, 0
    start = time.perf_counter()
    for call, part in enumerate(y.split(args.digits_per_call)):
        idata = sample_posterior(
            model,
            (prior, part, sigma),
            num_chains=args.num_chains,
            num_samples=args.num_samples,
            warmup_steps=args.warmup_steps,
            seed=args.seed + call,  # the same for both priors: common random numbers
            progress_bar=not args.no_progress,
        )
        x = torch.as_tensor(idata.posterior["x"].values)  # (chain, draw, D, C, H, W)
        draws.append(x.flatten(0, 1).transpose(0, 1))
        log_z += idata.attrs["log_evidence"]
        variance += idata.attrs["log_evidence_stderr"] ** 2
        nonfinite += idata.attrs["num_nonfinite"]
    report = {
        "log_evidence": log_z,
        "log_evidence_stderr": math.sqrt(variance),
        "num_nonfinite": nonfinite,
        "seconds": time.perf_counter() - start,
    }
    return torch.cat(draws), report


def probe_scores(
    probe: DigitsProbe, draws: Tensor, truth: Tensor, labels: Tensor, scored: Tensor
) -> dict[str, Any]:
    """What the probe and the clean images say of posterior draws ``(D, S, C, H, W)``;
    ``scored`` marks the pixels the RMSE is taken over."""
    d, s = draws.shape[:2]
    with torch.no_grad():
        probs = probe(draws.flatten(0, 1)).softmax(-1).reshape(d, s, -1).double()
        mean_image = draws.mean(1)
        mean_classes = probe(mean_image).argmax(-1)
    predictive = probs.mean(1)
    predicted = predictive.argmax(-1)
    entropy = torch.special.entr(predictive).sum(-1)
    error = (mean_image - truth).double()[:, scored]
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "draw_accuracy": float((probs.argmax(-1) == labels[:, None]).double().mean()),
        "mean_accuracy": float((mean_classes == labels).double().mean()),
        "class_entropy": float(entropy.mean()),
        "rmse": float(error.pow(2).mean().sqrt()),
        "predicted": predicted.tolist(),
    }


def plot_rows(columns: list[tuple[str, Tensor]], labels: Tensor, title: str, path: Path) -> None:
    """One row a digit, one column an image kind: ``columns`` of ``(title, (D, C, H, W))``;
    NaN pixels (not observed) are shown in red."""
    d = labels.shape[0]
    figure = Figure(figsize=(0.8 * len(columns) + 0.4, 0.8 * d + 0.9), layout="constrained")
    axes = figure.subplots(d, len(columns), squeeze=False)
    for i in range(d):
        for j, (name, images) in enumerate(columns):
            ax = axes[i, j]
            image = images[i, 0].detach().cpu().numpy()
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_facecolor("tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
            if j == 0:
                ax.set_ylabel(str(int(labels[i])), rotation=0, labelpad=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def observations(truth: Tensor, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each task's model, noise, observation ``y`` and the pixels its RMSE is scored on."""
    generator = torch.Generator().manual_seed(args.seed)
    top = truth[..., : args.observed_rows, :]
    unobserved = torch.zeros(truth.shape[1:], dtype=torch.bool)
    unobserved[..., args.observed_rows :, :] = True
    return {
        "inpainting": {
            "model": inpainting_model,
            "sigma": args.inpaint_noise,
            "y": top + args.inpaint_noise * torch.randn(top.shape, generator=generator),
            "scored": unobserved,
        },
        "denoising": {
            "model": denoising_model,
            "sigma": args.denoise_noise,
            "y": truth + args.denoise_noise * torch.randn(truth.shape, generator=generator),
            "scored": torch.ones(truth.shape[1:], dtype=torch.bool),
        },
    }


def plot_tasks(
    tasks: dict[str, dict[str, Any]],
    draws: dict[str, dict[str, Tensor]],
    truth: Tensor,
    labels: Tensor,
    args: argparse.Namespace,
) -> None:
    """``inpainting.png`` and ``denoising.png`` in ``--out``."""
    rows = args.observed_rows
    observed = torch.full_like(truth, math.nan)
    observed[..., :rows, :] = tasks["inpainting"]["y"]
    columns = [("observed", observed), ("truth", truth)]
    k = min(args.num_shown, args.num_chains * args.num_samples)
    for name in PRIORS:
        # Draws of different particle systems: the first particle of each, then the second.
        x = draws["inpainting"][name]
        order = torch.arange(x.shape[1]).reshape(args.num_chains, -1).T.flatten()
        columns += [(f"{name}\ndraw {i + 1}", x[:, j]) for i, j in enumerate(order[:k].tolist())]
    title = f"inpainting: top {rows} rows observed, noise sd {args.inpaint_noise:g}"
    plot_rows(columns, labels, title, args.out / "inpainting.png")
    columns = [("observed", tasks["denoising"]["y"].clamp(0, 1)), ("truth", truth)]
    for name in PRIORS:
        x = draws["denoising"][name]
        columns += [(f"{name}\nmean", x.mean(1)), (f"{name}\ndraw", x[:, 0])]
    title = f"denoising: noise sd {args.denoise_noise:g}"
    plot_rows(columns, labels, title, args.out / "denoising.png")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load or train the prior, run both tasks under both priors, report; returns the summary."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ebm, run_dir, train_seconds = load_or_train(args, not args.no_progress)
    data = read_config(run_dir).data
    if data != "digits":
        raise ValueError(f"expected a run trained on digits, got {run_dir} trained on {data!r}")
    priors = {"ebm": ebm, "backbone": FlowEBM(ebm.backbone, zero_energy)}
    probe = load_or_fit_probe(run_dir / PROBE, progress_bar=not args.no_progress)
    index, images, labels, levels = held_out_digits(args.num_digits)
    truth = images + 0.5 / levels  # the centres of the dequantization cells
    tasks = observations(truth, args)
    with torch.no_grad():
        truth_classes = probe(truth).argmax(-1)
        noisy_classes = probe(tasks["denoising"]["y"]).argmax(-1)
    summary: dict[str, Any] = {
        "run": str(run_dir),
        "train_seconds": train_seconds,
        "digits": {"validation_index": index.tolist(), "labels": labels.tolist()},
        "truth_accuracy": float((truth_classes == labels).double().mean()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    draws: dict[str, dict[str, Tensor]] = {}
    for task, spec in tasks.items():
        summary[task], draws[task] = {"noise": spec["sigma"]}, {}
        for name, prior in priors.items():
            x, report = posterior_draws(spec["model"], prior, spec["y"], spec["sigma"], args)
            draws[task][name] = x
            scores = probe_scores(probe, x, truth, labels, spec["scored"])
            summary[task][name] = scores | report
            print(
                f"{task:10s} {name:8s}: accuracy {scores['accuracy']:.3f} (draws "
                f"{scores['draw_accuracy']:.3f}, mean image {scores['mean_accuracy']:.3f}), "
                f"class entropy {scores['class_entropy']:.3f}, RMSE {scores['rmse']:.4f}, "
                f"log p(y) {report['log_evidence']:.1f} ± {report['log_evidence_stderr']:.1f}, "
                f"{report['seconds']:.1f} s"
            )
    noise = (tasks["denoising"]["y"] - truth).double()
    summary["inpainting"]["observed_rows"] = args.observed_rows
    summary["denoising"]["observed_rmse"] = float(noise.pow(2).mean().sqrt())
    summary["denoising"]["observed_accuracy"] = float((noisy_classes == labels).double().mean())
    print(
        f"probe on the clean digits: {summary['truth_accuracy']:.3f}; on the noisy ones: "
        f"{summary['denoising']['observed_accuracy']:.3f} (RMSE "
        f"{summary['denoising']['observed_rmse']:.4f})"
    )
    plot_tasks(tasks, draws, truth, labels, args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'summary.json'}, inpainting.png and denoising.png")
    return summary


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
