"""Long-run image chains: do latent chains stay realistic and travel between digit classes?

The seed paper's image claim, measured on digits: a FlowEBM trained on 8 x 8 digits (a run
directory of ``pyro-flowebm train --data digits``; trained here with
``RunConfig.for_data("digits")`` when ``--run`` does not hold one) is sampled from the same
``--num-chains`` starting images (held-out digits, dequantized, as evenly over the classes
as the split allows) by four samplers with the same budget of gradient evaluations per chain
(``--steps`` x 5 leapfrog steps):

- ``latent HMC``: HMC in the flow's latent space (5 leapfrog steps), from z = g^-1(x0);
- ``latent HMC + IMH``: the same with one independence Metropolis move (the backbone as
  proposal, one flow pass and no gradient) after every HMC iteration;
- ``data HMC``: HMC in data space on E(x) - log q(x) from x0 (5 leapfrog steps);
- ``data MALA``: Metropolis-adjusted Langevin in data space from x0, ``5 * --steps`` steps.

Every sampler adapts its step size for ``--warmup`` iterations first (not recorded), then
runs ``--steps`` recorded iterations (``5 * --steps`` for MALA), keeping ``--draws``
evenly spaced draws per chain. Along the run the digits probe (``pyro_flowebm.metrics.probe``; a
probe for digits, not FID) gives each draw a class and a confidence; per window of
``--window`` iterations the study reports the mean confidence and the Fréchet distance of
the probe's features of all chains' draws in the window against the held-out digits, and
per chain the class changes. Class mixing: ``diagnostics.mixing_summary(labels=...)``
(class-indicator R-hat, classes visited per chain). Targets (issue: images): latent chains
keep confidence and Fréchet distance within 10% of their values in the window starting at
step 200 up to the last window, and most chains change class at least once; the data-space
chains from the same starts are reported alongside, whatever they do.

Writes ``results/long_run.{json,md}``, ``long_run_chains.png`` (one grid of chains over time
per sampler) and ``long_run_curves.png`` (confidence and Fréchet distance along the run).

    python benchmarks/long_run.py --run runs/digits     # ~25 minutes on one CPU thread
    python benchmarks/long_run.py --quick               # ~1 minute, smoke run
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, base_parser, markdown_table, setup, write_results

from pyro_flowebm import datasets
from pyro_flowebm.app import RunConfig, load_run, train_run
from pyro_flowebm.app.rundir import CHECKPOINT
from pyro_flowebm.diagnostics import mixing_summary, plot_image_chains, to_inference_data
from pyro_flowebm.infer import HMC, MALA, Cycle, IndependenceMH, run_chains
from pyro_flowebm.metrics import frechet_distance, load_or_fit_probe

LEAPFROG = 5
# Where a model trained for the study is kept (ignored by git, reused by the next run).
MODELS = Path(__file__).resolve().parents[1] / "runs"
SAMPLERS = ("latent HMC", "latent HMC + IMH", "data HMC", "data MALA")


def parse_args(argv: list[str] | None = None):
    parser = base_parser(__doc__)
    parser.add_argument(
        "--run", type=Path, default=None,
        help="a digits run directory (default: runs/long_run_model, trained if missing)",
    )  # fmt: skip
    parser.add_argument("--num-chains", type=int, default=128, help="chains per sampler")
    parser.add_argument("--steps", type=int, default=2000, help="recorded HMC iterations")
    parser.add_argument("--warmup", type=int, default=100, help="step-size adaptation")
    parser.add_argument("--draws", type=int, default=200, help="kept draws per chain")
    parser.add_argument("--window", type=int, default=200, help="iterations per window")
    parser.add_argument("--reference-step", type=int, default=200, help="the 10% baseline")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_chains, args.steps, args.warmup = 8, 100, 10
        args.draws, args.window, args.reference_step = 20, 20, 20
    if (
        args.steps % args.draws
        or args.steps % args.window
        or args.window % (args.steps // args.draws)
    ):
        parser.error(
            "expected --steps divisible by --draws and --window, and windows of whole draws"
        )
    return args


def model_run(args) -> Path:
    """The run directory to study: ``--run``, or a digits run trained (once) for it."""
    run = args.run
    if run is None:
        run = MODELS / ("long_run_model_quick" if args.quick else "long_run_model")
    if not (run / CHECKPOINT).is_file():
        config = RunConfig.for_data("digits", seed=args.seed)
        if args.quick:
            config = RunConfig.for_data(
                "digits", seed=args.seed, backbone_levels=1, backbone_layers=1,
                backbone_hidden=8, energy_hidden=8, backbone_steps=50, steps=5,
            )  # fmt: skip
        print(f"training the digits model into {run} ...", flush=True)
        train_run(run, config, overwrite=run.exists(), progress_bar=args.progress)
    return run


def starting_images(held: datasets.ImageSet, n: int, seed: int) -> torch.Tensor:
    """``n`` held-out digits, as evenly over the classes as the split allows, dequantized."""
    order = torch.randperm(len(held.labels), generator=torch.Generator().manual_seed(seed))
    picked: list[int] = []
    per_class = {c: [int(i) for i in order if held.labels[i] == c] for c in range(10)}
    while len(picked) < n:
        for c in range(10):
            if per_class[c] and len(picked) < n:
                picked.append(per_class[c].pop(0))
    noise = torch.Generator().manual_seed(seed + 1)
    return datasets.dequantize(held.images[picked], held.levels, generator=noise)


def run_sampler(name: str, ebm: Any, x0: torch.Tensor, args) -> tuple[np.ndarray, float, Any]:
    """Draws ``(chain, draw, C, H, W)`` of one sampler from ``x0``, its wall seconds and
    its InferenceData."""
    n = x0.shape[0]
    thin = args.steps // args.draws
    common = {"seed": args.seed, "progress_bar": args.progress}
    start = time.perf_counter()
    if name.startswith("latent"):
        with torch.no_grad():
            z0 = ebm.transform.inv(x0)
        kernel = HMC(step_size=0.1, num_steps=LEAPFROG)
        if name == "latent HMC + IMH":
            kernel = Cycle([kernel, IndependenceMH()], [1, 1])
        idata = run_chains(ebm, kernel, n, args.draws, args.warmup, init=z0, thin=thin, **common)
    elif name == "data HMC":
        idata = run_chains(
            ebm.data_potential, HMC(step_size=0.01, num_steps=LEAPFROG), n, args.draws,
            args.warmup, init=x0, thin=thin, **common,
        )  # fmt: skip
    else:  # data MALA: one gradient a step, so LEAPFROG times as many steps
        idata = run_chains(
            ebm.data_potential, MALA(step_size=0.01), n, args.draws,
            LEAPFROG * args.warmup, init=x0, thin=LEAPFROG * thin, **common,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    return np.asarray(idata.posterior["x"].values), seconds, idata


def study(name: str, draws: np.ndarray, probe: Any, reference: torch.Tensor, args) -> dict:
    """Probe metrics along the run, per-chain class changes and class mixing of one sampler."""
    n_chains, n_draws = draws.shape[:2]
    images = torch.as_tensor(draws.reshape(-1, *draws.shape[2:]), dtype=torch.float32)
    with torch.no_grad():
        classes, confidence = probe.classify(images)
        features = probe.features(images).reshape(n_chains, n_draws, -1)
        ref_features = probe.features(reference)
    classes = classes.reshape(n_chains, n_draws).numpy()
    confidence = confidence.reshape(n_chains, n_draws).double()
    thin = args.steps // args.draws
    per_window = args.window // thin
    windows = []
    for w in range(n_draws // per_window):
        part = slice(w * per_window, (w + 1) * per_window)
        windows.append(
            {
                "start_step": w * args.window,
                "mean_confidence": float(confidence[:, part].mean()),
                "frechet_distance": frechet_distance(
                    features[:, part].reshape(-1, features.shape[-1]), ref_features
                ),
            }
        )
    ref_w = next(w for w in windows if w["start_step"] == args.reference_step)
    later = [w for w in windows if w["start_step"] >= args.reference_step]
    # The same comparison with far less noise: the first and the second half of the draws
    # from the reference step on, pooled over all chains.
    first = args.reference_step // thin
    middle = first + (n_draws - first) // 2
    halves = [
        frechet_distance(features[:, part].reshape(-1, features.shape[-1]), ref_features)
        for part in (slice(first, middle), slice(middle, n_draws))
    ]

    def worst(key: str) -> float:
        return max(abs(w[key] / ref_w[key] - 1) for w in later)

    changes = (np.diff(classes, axis=1) != 0).sum(axis=1)
    summary = mixing_summary(
        to_inference_data({"confidence": confidence.numpy()}), labels=classes, num_modes=10
    )
    return {
        "sampler": name,
        "windows": windows,
        "confidence_max_rel_change": worst("mean_confidence"),
        "frechet_max_rel_change": worst("frechet_distance"),
        "frechet_window_sd": float(np.std([w["frechet_distance"] for w in later], ddof=1)),
        "frechet_halves": halves,
        "frechet_halves_rel_change": halves[1] / halves[0] - 1,
        "class_changes_per_chain": changes.tolist(),
        "fraction_chains_changing_class": float((changes > 0).mean()),
        "classes_visited_per_chain": summary.modes_visited.tolist(),
        "class_rhat": float(summary.mode_rhat),
        "start_classes": classes[:, 0].tolist(),
    }


def plots(results: list[dict], idatas: dict[str, Any], stem: str, out: Path) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(11, 2.2 * len(idatas) + 0.5))
    axes = figure.subplots(len(idatas), 1, squeeze=False)[:, 0]
    for ax, (name, idata) in zip(axes, idatas.items(), strict=True):
        plot_image_chains(idata, num_chains=8, num_draws=16, ax=ax, title=name)
    figure.tight_layout()
    chains_png = f"{stem}_chains.png"
    figure.savefig(out / chains_png, dpi=90)

    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    for r in results:
        steps = [w["start_step"] for w in r["windows"]]
        left.plot(
            steps, [w["mean_confidence"] for w in r["windows"]], marker="o", label=r["sampler"]
        )
        right.plot(
            steps, [w["frechet_distance"] for w in r["windows"]], marker="o", label=r["sampler"]
        )
    left.set(xlabel="window start (iterations)", ylabel="mean probe confidence")
    right.set(
        xlabel="window start (iterations)", ylabel="Fréchet distance to held-out", yscale="log"
    )
    left.legend(fontsize="small")
    figure.tight_layout()
    curves_png = f"{stem}_curves.png"
    figure.savefig(out / curves_png, dpi=90)
    return [chains_png, curves_png]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup(args)
    started = time.perf_counter()
    run = model_run(args)
    ebm = load_run(run, device="cpu")
    probe = load_or_fit_probe(run / "probe.pt")
    held = datasets.load_images("digits", "validation")
    noise = torch.Generator().manual_seed(0)
    reference = datasets.dequantize(held.images, held.levels, generator=noise)
    x0 = starting_images(held, args.num_chains, args.seed)

    results, idatas = [], {}
    for name in SAMPLERS:
        draws, seconds, idata = run_sampler(name, ebm, x0, args)
        r = study(name, draws, probe, reference, args)
        r["seconds"] = seconds
        r["acceptance"] = float(idata.sample_stats["acceptance_rate"].mean())
        r["adapted_step_size"] = idata.posterior.attrs.get("adapted_step_size")
        results.append(r)
        idatas[name] = idata
        print(
            f"{name:18s} {seconds:7.1f} s  confidence drift {r['confidence_max_rel_change']:.3f}  "
            f"Fréchet drift {r['frechet_max_rel_change']:.3f}  chains changing class "
            f"{r['fraction_chains_changing_class']:.2f}  class R-hat {r['class_rhat']:.3g}",
            flush=True,
        )

    out = args.out if args.out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(
        results, idatas, "long_run_quick" if args.quick and args.out is None else "long_run", out
    )

    def at_reference(r: dict, key: str) -> float:
        return next(w[key] for w in r["windows"] if w["start_step"] == args.reference_step)

    rows = [
        [
            r["sampler"], r["seconds"], r["acceptance"],
            r["windows"][0]["mean_confidence"], at_reference(r, "mean_confidence"),
            r["windows"][-1]["mean_confidence"], r["confidence_max_rel_change"],
            at_reference(r, "frechet_distance"),
            r["windows"][-1]["frechet_distance"], r["frechet_max_rel_change"],
            r["frechet_window_sd"], r["frechet_halves"][0], r["frechet_halves"][1],
            r["fraction_chains_changing_class"], float(np.mean(r["class_changes_per_chain"])),
            float(np.mean(r["classes_visited_per_chain"])), r["class_rhat"],
        ]
        for r in results
    ]  # fmt: skip
    headers = [
        "sampler", "wall s", "acceptance", "confidence (first window)",
        f"confidence (step {args.reference_step})", "confidence (last)", "max drift",
        f"Fréchet (step {args.reference_step})", "Fréchet (last)", "max drift",
        "window sd", "Fréchet, 1st half", "Fréchet, 2nd half",
        "chains changing class", "class changes / chain", "classes / chain", "class R-hat",
    ]  # fmt: skip
    latent = [r for r in results if r["sampler"].startswith("latent")]
    verdicts = [
        f"- {r['sampler']}: confidence within 10% of step {args.reference_step}: "
        f"{r['confidence_max_rel_change'] <= 0.10}; Fréchet within 10% window by window: "
        f"{r['frechet_max_rel_change'] <= 0.10}, second half of the run against the first: "
        f"{abs(r['frechet_halves_rel_change']) <= 0.10} "
        f"({r['frechet_halves_rel_change']:+.3f}); most chains change class: "
        f"{r['fraction_chains_changing_class'] > 0.5}"
        for r in latent
    ]
    markdown = "\n".join(
        [
            f"Long-run chains on digits: {args.num_chains} chains per sampler from the same "
            f"held-out images, {args.warmup} adaptation iterations, then {args.steps} "
            f"recorded iterations of {LEAPFROG} gradient evaluations (MALA: "
            f"{LEAPFROG * args.steps} steps of one), {args.draws} draws kept per chain; "
            f"windows of {args.window} iterations; the digits probe's confidence and the "
            "Fréchet distance of its features (all chains' draws of a window against the "
            f"{reference.shape[0]} held-out digits; a probe for digits, not FID). Drift: the "
            f"largest relative change from the window at step {args.reference_step} to any "
            f"later one; window sd: the standard deviation of the window values from that "
            "step on, the noise of a window's Fréchet estimate when the chains are stationary; "
            "halves: all draws from that step on, split into the first and the second half "
            f"of the run. Model: {run}. {time.perf_counter() - started:.0f} s in all.",
            "",
            markdown_table(headers, rows),
            "",
            "Targets for the latent chains:",
            "",
            *verdicts,
            "",
            *(f"![{p}]({p})" for p in pngs),
        ]
    )
    payload = {
        "run": str(run),
        "settings": {k: v for k, v in vars(args).items()},
        "samplers": results,
    }
    write_results("long_run", args, payload, markdown)
    return payload


if __name__ == "__main__":
    main()
