"""Sample quality on the 2-D toys: a FlowEBM against its backbone and a short-run data-space EBM.

For each built-in toy of ``pyro_flowebm.datasets.TOYS`` (or those given by ``--toys``),
with the same seed for every method, in float32:

- data: 5000 exact training draws (seed ``--seed``) and 5000 held-out draws from an
  independent seed (``seed + 1_000_003``), as ``app.train_run`` splits a toy;
- ``backbone``: the deliberately small backbone of ``RunConfig()`` (RealNVP, 4 layers x 32
  hidden) fitted by ``fit_backbone`` (1000 steps, lr 5e-3, batch 256); 5000 draws;
- ``flowebm``: that fitted backbone tilted by ``fit_ebm`` with ``RunConfig().fit_ebm_kwargs()``
  (1500 steps, lr 3e-3, 10 independence moves + 5 HMC iterations of 5 leapfrog steps per
  training step) and an MLPEnergy of ``--energy-layers`` x ``--energy-hidden`` (3 x 128 here,
  wider than RunConfig's 2 x 64: 2 x 64 cannot carve the rings' radial profile, measured
  below); 5000 independent long-run draws of the trained model: the last state of each of
  5000 chains of ``infer.sample_ebm(ebm, "hmc-imh", 5000 chains, 1 draw, 400 warm-up
  cycles)``. Several draws a chain would be correlated, and the MMD estimator, which
  assumes independent draws, counts close pairs from one chain as excess similarity
  (pinwheel: 6.6e-4 with 1250 chains x 4 draws 10 cycles apart, 8.8e-5 with 5000 x 1, the
  same trained model). 400 warm-up cycles rather than 100 for margin: between the two, the
  metrics moved by no more than the draws' noise on rings, two spirals and pinwheel (on two
  spirals the arm shares of 5000 draws alone, binomial sd 0.007, move the energy distance
  between 0.0009 and 0.004).
  The time of backbone fit + tilt is the time budget W of the toy;
- ``data_ebm``: a data-space EBM p(x) ∝ exp(-E(x)) with an MLPEnergy (``--sr-layers`` x
  ``--sr-hidden``), trained by contrastive divergence with short-run unadjusted Langevin from
  noise (Nijkamp et al., 2019): each step starts ``batch`` chains uniformly in the training
  data's bounding box (10% margin a side), runs ``--sr-k`` ULA steps of size ``--sr-step``,
  and takes an Adam step (betas (0.5, 0.999), gradient clipping 1, a cosine decay of the learning
  rate over the budget) on ``mean E(data) - mean E(model)`` plus the squared-energy penalty of
  ``fit_ebm`` with the weight 0.1 its sweep was run with (``--sr-reg``); it trains for the same time
  W and is sampled the way it was trained (5000 short runs from noise); it keeps the 2 x 64 energy
  that won its own sweep (``--tune``);
- ``exact``: 5000 fresh exact draws, the noise floor of every metric; and the noise sd of
  both MMDs over 10 more such sets (``mmd_noise``), against which the summary measures each
  MMD difference.

Every method's draws are compared with the held-out draws by
``metrics.evaluate_samples``: MMD (median-heuristic bandwidth), energy distance and, where
the toy knows them, the fraction within 3 sd of a mode centre, the mode-weight error and the
grid KL; and by ``metrics.mmd`` at a tenth of the median bandwidth (``mmd_fine``, "MMD
h/10"), which resolves the rings, arms and squares that the median bandwidth (about 5 on
toys of diameter about 8) blurs. The issue's targets, per toy: the FlowEBM beats its
backbone on MMD and, for the mixtures, on mode-weight error, and beats the data-space EBM
on MMD.

``--tune`` instead runs the short-run baseline with each setting of ``SWEEP`` on
``--tune-toys`` (default eight Gaussians) for the same budget W, and writes
``results/quality_tune.*``: that is how the baseline's defaults were chosen.

Timings use ``torch.set_num_threads(1)`` unless ``--threads`` says otherwise. The budget W
is counted in CPU seconds of this process (``time.process_time``; ``--clock wall`` for wall
seconds): with one thread on an idle machine the two agree, and on a shared machine CPU
seconds give both methods the same amount of computation whatever the neighbours' load
(measured here: under a load of 4.3-5 on 2 cores, the same W in wall seconds bought the
baseline 970 training steps in one run and 698 in the next). Wall seconds are recorded too.

    python benchmarks/quality.py            # ~65 minutes (7 toys)
    python benchmarks/quality.py --quick    # ~30 seconds, smoke run
    python benchmarks/quality.py --tune     # ~4 minutes, the baseline's sweep

References:
    Nijkamp, Hill, Zhu, Wu. Learning non-convergent non-persistent short-run MCMC toward
    energy-based model. NeurIPS 2019. arXiv:1904.09770.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from _common import base_parser, markdown_table, setup, write_results
from torch import Tensor

from pyro_flowebm import datasets, fit_backbone, fit_ebm
from pyro_flowebm.app import RunConfig
from pyro_flowebm.infer import ULA, sample_ebm
from pyro_flowebm.metrics import evaluate_samples, mmd
from pyro_flowebm.nn import MLPEnergy

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
METHODS = ("exact", "backbone", "flowebm", "data_ebm")
LABELS = {
    "exact": "exact draws (floor)",
    "backbone": "backbone alone",
    "flowebm": "FlowEBM (hmc-imh)",
    "data_ebm": "data-space EBM (short-run ULA)",
}
METRICS = (
    "mmd",
    "mmd_fine",
    "energy_distance",
    "fraction_near_modes",
    "mode_weight_error",
    "grid_kl",
)
# Sets of fresh exact draws whose MMDs against the held-out draws give the noise of an MMD.
NOISE_REPLICATES = 10
# Held-out draws come from this offset of the seed, as runs.train_run splits a toy.
HELDOUT_SEED_OFFSET = 1_000_003
# The settings of the short-run baseline tried by --tune: (Langevin step, K steps, Adam lr).
SWEEP = (
    {"step": 0.1, "k": 50, "lr": 1e-3},
    {"step": 0.1, "k": 100, "lr": 3e-3},
    {"step": 0.05, "k": 100, "lr": 1e-3},
    {"step": 0.2, "k": 50, "lr": 1e-3},
    {"step": 0.1, "k": 20, "lr": 3e-3},
    {"step": 0.1, "k": 100, "lr": 1e-3, "hidden": 128, "layers": 3},
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--toys", nargs="+", choices=sorted(datasets.TOYS), default=list(datasets.TOYS)
    )
    parser.add_argument("--num-data", type=int, default=5000, help="training draws")
    parser.add_argument("--num-heldout", type=int, default=5000, help="held-out draws")
    parser.add_argument("--num-samples", type=int, default=5000, help="draws of each method")
    parser.add_argument("--backbone-steps", type=int, default=None, help="default: RunConfig")
    parser.add_argument("--ebm-steps", type=int, default=None, help="default: RunConfig")
    parser.add_argument("--batch-size", type=int, default=None, help="default: RunConfig")
    parser.add_argument("--energy-layers", type=int, default=3, help="FlowEBM: MLP hidden layers")
    parser.add_argument("--energy-hidden", type=int, default=128, help="FlowEBM: MLP width")
    parser.add_argument("--warmup", type=int, default=400, help="hmc-imh warm-up cycles")
    parser.add_argument("--thin", type=int, default=10, help="hmc-imh cycles between draws")
    parser.add_argument(
        "--draws", type=int, default=1, help="hmc-imh draws per chain (1: independent draws)"
    )
    parser.add_argument("--sr-step", type=float, default=0.1, help="baseline: Langevin step")
    parser.add_argument("--sr-k", type=int, default=100, help="baseline: Langevin steps a run")
    parser.add_argument("--sr-lr", type=float, default=3e-3, help="baseline: Adam's lr")
    parser.add_argument("--sr-hidden", type=int, default=64, help="baseline: MLP width")
    parser.add_argument("--sr-layers", type=int, default=2, help="baseline: MLP hidden layers")
    parser.add_argument(
        "--sr-reg", type=float, default=0.1, help="baseline: energy penalty (its sweep's)"
    )
    parser.add_argument(
        "--tune", action="store_true", help="run the baseline's SWEEP instead (quality_tune.*)"
    )
    parser.add_argument("--tune-toys", nargs="+", default=["eight_gaussians"])
    parser.add_argument(
        "--alt",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="RunConfig fields of an extra, clearly labelled FlowEBM row (e.g. persistent=true)",
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="how the budget W is counted"
    )
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    args.alt = parse_alt(parser, args.alt)
    if args.quick:
        args.num_data, args.num_heldout, args.num_samples = 1000, 500, 400
        args.backbone_steps, args.ebm_steps, args.batch_size = 100, 20, 128
        args.warmup, args.draws, args.thin = 10, 1, 2
        args.sr_k = min(args.sr_k, 30)
    return args


def parse_alt(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``["persistent=true", "steps=900"]`` as RunConfig overrides of the field types."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields or name in ("data", "seed"):
            parser.error(f"expected --alt FIELD=VALUE with a RunConfig field, got {item!r}")
        default = fields[name].default
        if isinstance(default, bool):
            out[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[name] = int(text)
        else:
            out[name] = float(text)
    return out


def alt_label(alt: dict[str, Any]) -> str:
    return "FlowEBM alt. (" + ", ".join(f"{k}={v}" for k, v in alt.items()) + ")"


def config_of(toy: str, args: argparse.Namespace) -> RunConfig:
    """The run config of a toy: RunConfig's defaults unless a flag overrides them."""
    overrides = {
        "backbone_steps": args.backbone_steps,
        "steps": args.ebm_steps,
        "batch_size": args.batch_size,
        "energy_layers": args.energy_layers,
        "energy_hidden": args.energy_hidden,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return RunConfig(
        data=toy, seed=args.seed, num_data=args.num_data, num_heldout=args.num_heldout, **overrides
    )


def split(config: RunConfig) -> tuple[Tensor, Tensor]:
    """Training and held-out exact draws, from independent seeds, as train_run draws them."""
    train = datasets.load(
        config.data, config.num_data, generator=torch.Generator().manual_seed(config.seed)
    )
    heldout = datasets.load(
        config.data,
        config.num_heldout,
        generator=torch.Generator().manual_seed(config.seed + HELDOUT_SEED_OFFSET),
    )
    return train.float(), heldout.float()


def known_of(toy: datasets.Toy) -> dict[str, Any]:
    """What evaluate_samples can use of a toy: modes, weights, sd, log_prob where known."""
    known = {"modes": toy.modes, "weights": toy.weights, "sd": toy.sd, "log_prob": toy.log_prob}
    return {k: v for k, v in known.items() if v is not None}


def load_average() -> float:
    return os.getloadavg()[0]


# -- FlowEBM ------------------------------------------------------------------------------------


def train_flowebm(
    config: RunConfig, train: Tensor, args: argparse.Namespace
) -> tuple[Any, Tensor, dict[str, Any]]:
    """Fit the backbone, draw from it, then learn the tilt; the budget W is both fits' time.

    Returns:
        ``(ebm, backbone draws, timings)``.
    """
    pyro.set_rng_seed(config.seed)
    ebm = config.build(train.shape[1])
    clock = CLOCKS[args.clock]
    start, start_wall = clock(), time.perf_counter()
    fit_backbone(
        ebm.backbone, train, config.backbone_steps, lr=config.backbone_lr,
        batch_size=config.batch_size, progress_bar=args.progress,
    )  # fmt: skip
    backbone_seconds, backbone_wall = clock() - start, time.perf_counter() - start_wall
    # Backbone draws outside the budget, and without touching the generator the tilt uses.
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(config.seed)
        backbone_x = ebm.backbone.sample((args.num_samples,))
    start, start_wall = clock(), time.perf_counter()
    history = fit_ebm(ebm, train, progress_bar=args.progress, **config.fit_ebm_kwargs())
    tilt_seconds, tilt_wall = clock() - start, time.perf_counter() - start_wall
    timings = {
        "clock": args.clock,
        "backbone_fit_s": backbone_seconds,
        "tilt_s": tilt_seconds,
        "budget_s": backbone_seconds + tilt_seconds,
        "wall_s": backbone_wall + tilt_wall,
        "tilt_steps": len(history),
        "final_acceptance": history[-1]["acceptance"],
        "final_energy_gap": history[-1]["energy_gap"],
    }
    return ebm, backbone_x, timings


def sample_flowebm(ebm: Any, args: argparse.Namespace) -> tuple[Tensor, float]:
    """``num_samples`` long-run latent MCMC draws of the trained EBM, and their seconds."""
    chains = max(1, math.ceil(args.num_samples / args.draws))
    start = time.perf_counter()
    idata = sample_ebm(
        ebm, "hmc-imh", chains, args.draws, args.warmup,
        thin=args.thin, seed=args.seed, progress_bar=args.progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    x = torch.as_tensor(np.asarray(idata.posterior["x"].values), dtype=torch.float32)
    return x.reshape(-1, x.shape[-1])[: args.num_samples], seconds


# -- the data-space short-run baseline -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShortRun:
    """Settings of the data-space EBM trained and sampled by short-run Langevin from noise.

    Attributes:
        step: ULA step size ε (drift ε²/2 ∇E, noise ε ξ).
        k: Langevin steps of every short run.
        lr: Adam's initial learning rate (cosine decay to zero over the time budget).
        hidden: width of the MLPEnergy.
        layers: hidden layers of the MLPEnergy.
        energy_reg: weight of the squared-energy penalty (the loss of ``fit_ebm``).
        batch_size: data points and chains per step.
        margin: the noise box is the data's bounding box widened by this fraction a side.
    """

    step: float
    k: int
    lr: float
    hidden: int
    layers: int
    energy_reg: float
    batch_size: int
    margin: float = 0.1


def noise_box(data: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    lo, hi = data.min(0).values, data.max(0).values
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def short_run(energy: MLPEnergy, n: int, box: tuple[Tensor, Tensor], settings: ShortRun) -> Tensor:
    """``n`` points: uniform noise in ``box`` moved by ``settings.k`` ULA steps on E."""
    lo, hi = box
    x = lo + (hi - lo) * torch.rand(n, lo.shape[0], dtype=lo.dtype)
    kernel = ULA(step_size=settings.step)
    state, params = kernel.init(x, energy), kernel.init_params(x)
    for _ in range(settings.k):
        state, _ = kernel.step(state, energy, params)
    return state.position


def train_short_run(
    data: Tensor, seconds: float, settings: ShortRun, seed: int, clock: str = "cpu"
) -> tuple[MLPEnergy, tuple[Tensor, Tensor], dict[str, Any]]:
    """Train a data-space MLPEnergy by short-run contrastive divergence for ``seconds``
    (of ``CLOCKS[clock]``).

    Returns:
        ``(energy, noise box, training record)``.
    """
    pyro.set_rng_seed(seed)
    energy = MLPEnergy(data.shape[1], settings.hidden, settings.layers)
    box = noise_box(data, settings.margin)
    optimizer = torch.optim.Adam(energy.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    batch_size = min(settings.batch_size, data.shape[0])
    steps, diverged = 0, None
    now = CLOCKS[clock]
    start, start_wall = now(), time.perf_counter()
    while (elapsed := now() - start) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        x_model = short_run(energy, batch_size, box, settings)
        x_data = data[torch.randint(data.shape[0], (batch_size,))]
        e_data, e_model = energy(x_data), energy(x_model)
        loss = e_data.mean() - e_model.mean()
        loss = loss + settings.energy_reg * (e_data.pow(2).mean() + e_model.pow(2).mean())
        if not torch.isfinite(loss):
            diverged = f"loss {loss.item()} at step {steps}"
            break
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(energy.parameters(), 1.0)
        optimizer.step()
        steps += 1
    record = {
        "clock": clock,
        "train_s": now() - start,
        "wall_s": time.perf_counter() - start_wall,
        "train_steps": steps,
        "diverged": diverged,
        "final_energy_gap": float((e_data.mean() - e_model.mean()).detach()) if steps else None,
    }
    return energy, box, record


def sample_short_run(
    energy: MLPEnergy, box: tuple[Tensor, Tensor], settings: ShortRun, n: int, seed: int
) -> tuple[Tensor, float]:
    """``n`` short runs from noise, as in training; and their seconds."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        start = time.perf_counter()
        x = short_run(energy, n, box, settings)
        return x, time.perf_counter() - start


def short_run_settings(args: argparse.Namespace, config: RunConfig, **override: Any) -> ShortRun:
    values = {
        "step": args.sr_step,
        "k": args.sr_k,
        "lr": args.sr_lr,
        "hidden": args.sr_hidden,
        "layers": args.sr_layers,
        "energy_reg": args.sr_reg,
        "batch_size": config.batch_size,
    }
    return ShortRun(**(values | override))


# -- one toy ---------------------------------------------------------------------------------------


def evaluate(
    x: Tensor, heldout: Tensor, known: dict[str, Any], fine_bandwidth: float
) -> dict[str, float]:
    """evaluate_samples of the finite draws, plus ``mmd_fine``: MMD at ``fine_bandwidth``."""
    finite = torch.isfinite(x).all(-1)
    out = evaluate_samples(x[finite], heldout, **known)
    out["mmd_fine"] = float(mmd(x[finite], heldout, bandwidth=fine_bandwidth))
    out["non_finite"] = int((~finite).sum())
    return out


def fine_bandwidth(toy: datasets.Toy, heldout: Tensor, seed: int) -> float:
    """A tenth of the median-heuristic bandwidth of exact draws against ``heldout``.

    The median heuristic gives h of about 5 on these toys (their diameter is about 8), a
    kernel that hardly sees structure below that scale: a Gaussian blob with the data's
    mean and covariance scores near the noise floor on ``rings``. A tenth of it resolves
    the rings, arms and squares.
    """
    exact = toy.sample(heldout.shape[0], generator=torch.Generator().manual_seed(seed))
    return 0.1 * evaluate_samples(exact.float(), heldout)["mmd_bandwidth"]


def mmd_noise(
    toy: datasets.Toy, heldout: Tensor, h_fine: float, n: int, seed: int
) -> dict[str, float]:
    """The standard deviation of both MMDs of ``n`` exact draws against ``heldout``.

    Over ``NOISE_REPLICATES`` independent sets of exact draws: how far an MMD moves with the
    draws alone, the yardstick of a difference between two methods' MMDs (about 1e-4 at
    the median bandwidth with 5000 draws, as large as the backbones' own MMDs).
    """
    values = []
    for r in range(NOISE_REPLICATES):
        x = toy.sample(n, generator=torch.Generator().manual_seed(seed + r)).float()
        values.append([float(mmd(x, heldout)), float(mmd(x, heldout, bandwidth=h_fine))])
    sd = torch.tensor(values, dtype=torch.float64).std(dim=0)
    return {"mmd": float(sd[0]), "mmd_fine": float(sd[1])}


def run_toy(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Tensor]]:
    toy = datasets.TOYS[name]
    known = known_of(toy)
    config = config_of(name, args)
    train, heldout = split(config)
    load_before = load_average()
    print(f"\n== {name}: {toy.description}", flush=True)

    ebm, backbone_x, flow_timings = train_flowebm(config, train, args)
    budget = flow_timings["budget_s"]
    print(
        f"  FlowEBM: backbone fit {flow_timings['backbone_fit_s']:.1f} s + tilt "
        f"{flow_timings['tilt_s']:.1f} s = budget W {budget:.1f} {args.clock} s "
        f"({flow_timings['wall_s']:.1f} wall s)",
        flush=True,
    )
    flow_x, flow_sample_s = sample_flowebm(ebm, args)
    print(f"  FlowEBM: {flow_x.shape[0]} hmc-imh draws in {flow_sample_s:.1f} s", flush=True)

    settings = short_run_settings(args, config)
    energy, box, sr_record = train_short_run(train, budget, settings, config.seed, args.clock)
    sr_x, sr_sample_s = sample_short_run(energy, box, settings, args.num_samples, config.seed)
    print(
        f"  data-space EBM: {sr_record['train_steps']} steps in {sr_record['train_s']:.1f} "
        f"{args.clock} s ({sr_record['wall_s']:.1f} wall s)"
        + (f" (diverged: {sr_record['diverged']})" if sr_record["diverged"] else "")
        + f", {sr_x.shape[0]} short-run draws in {sr_sample_s:.1f} s",
        flush=True,
    )

    # Fresh exact draws: seeds other than those of the training and held-out draws.
    exact_seed = config.seed + 2 * HELDOUT_SEED_OFFSET
    exact_x = toy.sample(args.num_samples, generator=torch.Generator().manual_seed(exact_seed))
    h_fine = fine_bandwidth(toy, heldout, exact_seed + 1)
    noise = mmd_noise(toy, heldout, h_fine, args.num_samples, exact_seed + 2)
    draws = {
        "data": heldout,
        "exact": exact_x.float(),
        "backbone": backbone_x,
        "flowebm": flow_x,
        "data_ebm": sr_x,
    }
    methods = list(METHODS)
    alt_record = None
    if args.alt:
        # Same seed, so the same backbone fit; then the tilt with the alternative settings.
        alt_config = dataclasses.replace(config, **args.alt)
        alt_ebm, _, alt_timings = train_flowebm(alt_config, train, args)
        draws["flowebm_alt"], alt_sample_s = sample_flowebm(alt_ebm, args)
        alt_record = {**alt_timings, "sample_s": alt_sample_s, "overrides": args.alt}
        methods.append("flowebm_alt")
        print(f"  {alt_label(args.alt)}: budget {alt_timings['budget_s']:.1f} s", flush=True)
    metrics = {m: evaluate(draws[m], heldout, known, h_fine) for m in methods}
    for m in methods:
        shown = ", ".join(f"{k} {metrics[m][k]:.4g}" for k in METRICS if k in metrics[m])
        print(f"  {label_of(m, args.alt):32s} {shown}", flush=True)
    result = {
        "toy": name,
        "description": toy.description,
        "mixture": toy.modes is not None and toy.weights is not None,
        "budget_s": budget,
        "ebm_steps": config.steps,
        "mmd_fine_bandwidth": h_fine,
        "mmd_noise_sd": noise,
        "flowebm": {**flow_timings, "sample_s": flow_sample_s},
        "data_ebm": {
            **sr_record,
            "sample_s": sr_sample_s,
            "settings": dataclasses.asdict(settings),
        },
        "flowebm_alt": alt_record,
        "metrics": metrics,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    result["summary"] = summarize(result, "flowebm")
    if args.alt:
        result["summary_alt"] = summarize(result, "flowebm_alt")
    return result, draws


def ratio(reference: float, value: float) -> float:
    """``reference / value`` when both are positive (MMD and energy distance are unbiased
    estimates, so they can dip below zero at the noise floor); NaN otherwise."""
    return reference / value if reference > 0 and value > 0 else math.nan


def summarize(result: dict[str, Any], key: str) -> dict[str, Any]:
    """The issue's comparisons for the FlowEBM draws ``metrics[key]``."""
    m = result["metrics"]
    flow, backbone, data_ebm = m[key], m["backbone"], m["data_ebm"]
    noise = result["mmd_noise_sd"]
    out: dict[str, Any] = {
        "toy": result["toy"],
        "budget_s": result["budget_s"],
        "beats_backbone_mmd": flow["mmd"] < backbone["mmd"],
        "mmd_backbone_over_flowebm": ratio(backbone["mmd"], flow["mmd"]),
        "mmd_gain_over_noise": (backbone["mmd"] - flow["mmd"]) / noise["mmd"],
        "beats_backbone_mmd_fine": flow["mmd_fine"] < backbone["mmd_fine"],
        "mmd_fine_backbone_over_flowebm": ratio(backbone["mmd_fine"], flow["mmd_fine"]),
        "beats_backbone_mode_weight": None,
        "mode_weight_backbone_over_flowebm": None,
        "beats_data_ebm_mmd": flow["mmd"] < data_ebm["mmd"],
        "mmd_data_ebm_over_flowebm": ratio(data_ebm["mmd"], flow["mmd"]),
        "beats_data_ebm_mmd_fine": flow["mmd_fine"] < data_ebm["mmd_fine"],
        "mmd_fine_data_ebm_over_flowebm": ratio(data_ebm["mmd_fine"], flow["mmd_fine"]),
        "beats_data_ebm_energy_distance": flow["energy_distance"] < data_ebm["energy_distance"],
    }
    if result["mixture"]:
        out["beats_backbone_mode_weight"] = (
            flow["mode_weight_error"] < backbone["mode_weight_error"]
        )
        out["mode_weight_backbone_over_flowebm"] = ratio(
            backbone["mode_weight_error"], flow["mode_weight_error"]
        )
    return out


# -- output ----------------------------------------------------------------------------------------


def label_of(method: str, alt: dict[str, Any]) -> str:
    return LABELS[method] if method in LABELS else alt_label(alt)


def metrics_table(results: list[dict[str, Any]], clock: str, alt: dict[str, Any]) -> str:
    rows = []
    for r in results:
        train = {
            "flowebm": (r["flowebm"]["budget_s"], r["flowebm"]["wall_s"], r["ebm_steps"]),
            "data_ebm": (r["data_ebm"]["train_s"], r["data_ebm"]["wall_s"]),
        }
        train["data_ebm"] += (r["data_ebm"]["train_steps"],)
        if r["flowebm_alt"] is not None:
            a = r["flowebm_alt"]
            train["flowebm_alt"] = (a["budget_s"], a["wall_s"], a["tilt_steps"])
        for m, values in r["metrics"].items():
            rows.append(
                [r["toy"], label_of(m, alt)]
                + [values.get(k, "") for k in METRICS]
                + list(train.get(m, ("", "", "")))
            )
    headers = ["toy", "method", "MMD", "MMD h/10", "energy dist.", "within 3 sd"]
    headers += ["mode-weight err.", "grid KL", f"train ({clock} s)", "(wall s)", "steps"]
    return markdown_table(headers, rows)


def summary_table(results: list[dict[str, Any]], key: str = "summary") -> str:
    rows = [
        [
            s["toy"],
            s["budget_s"],
            s["beats_backbone_mmd"],
            s["mmd_backbone_over_flowebm"],
            s["mmd_gain_over_noise"],
            s["beats_backbone_mmd_fine"],
            s["mmd_fine_backbone_over_flowebm"],
            "" if s["beats_backbone_mode_weight"] is None else s["beats_backbone_mode_weight"],
            "" if s["mode_weight_backbone_over_flowebm"] is None
            else s["mode_weight_backbone_over_flowebm"],
            s["beats_data_ebm_mmd"],
            s["mmd_data_ebm_over_flowebm"],
            s["beats_data_ebm_mmd_fine"],
            s["mmd_fine_data_ebm_over_flowebm"],
        ]
        for s in (r[key] for r in results)
    ]  # fmt: skip
    headers = [
        "toy",
        "budget W (s)",
        "EBM beats backbone on MMD",
        "MMD backbone / EBM",
        "(backbone - EBM) / noise sd",
        "beats backbone on MMD h/10",
        "MMD h/10 backbone / EBM",
        "beats backbone on mode-weight error",
        "mode-weight err. backbone / EBM",
        "EBM beats data-space EBM on MMD",
        "MMD data-space / EBM",
        "beats data-space EBM on MMD h/10",
        "MMD h/10 data-space / EBM",
    ]
    return markdown_table(headers, rows)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    sr = meta["short_run"]
    alt = []
    if meta["alt"]:
        alt = [
            "",
            f"The same comparisons for the extra row, {alt_label(meta['alt'])}: an alternative "
            "setting of the tilt applied to every toy alike (its own budget is in the table "
            "above; the data-space EBM's budget stays the default FlowEBM's):",
            "",
            summary_table(results, "summary_alt"),
        ]
    return "\n".join(
        [
            f"Sample quality against {meta['num_heldout']} held-out exact draws, "
            f"{meta['num_samples']} draws per method, seed {meta['seed']}, float32, "
            f"{meta['threads']} torch thread(s), {meta['wall_s']:.0f} s in all. Backbone: "
            f"RealNVP {meta['backbone']} fitted {meta['backbone_steps']} steps on "
            f"{meta['num_data']} draws; FlowEBM: that backbone tilted by fit_ebm "
            f"(MLPEnergy {meta['energy']}, {meta['ebm_steps']} steps, otherwise RunConfig's "
            "defaults), "
            f"sampled by hmc-imh: {meta['draws']} draw(s) a chain (thin {meta['thin']}) after "
            f"{meta['warmup']} warm-up cycles, from independent chains. Data-space EBM: MLPEnergy "
            f"{sr['layers']} x {sr['hidden']} trained by short-run ULA from uniform noise "
            f"(step {sr['step']:g}, K = {sr['k']}, lr {sr['lr']:g}) for the same time W as "
            f"backbone fit + tilt ({meta['clock']} seconds of this process), sampled the same "
            "way; steps: tilt steps of the FlowEBM (after the backbone's), training steps of "
            "the data-space EBM. MMD (median-heuristic bandwidth "
            "h, about 5 here), MMD h/10 (bandwidth a tenth of h: the median heuristic hardly "
            "sees structure finer than the toys' diameter) and energy distance are unbiased "
            "estimates (the exact-draws row is one draw of their noise; noise sd: the "
            f"standard deviation of the MMD over {NOISE_REPLICATES} sets of fresh exact draws "
            "against the same held-out draws, so a (backbone - EBM) / noise sd above about "
            "2 is a gain the draws' noise does not explain); within 3 sd and "
            "mode-weight error (L1, points within 3 sd) for the Gaussian mixtures; grid KL "
            "(nats, 100 x 100 cells) where the density is known.",
            "",
            metrics_table(results, meta["clock"], meta["alt"]),
            "",
            "Targets of the issue (ratios > 1: the FlowEBM is better):",
            "",
            summary_table(results),
            *alt,
            "",
            f"Plot: [{meta['plot']}]({meta['plot']}).",
        ]
    )


def plot(results: list[dict[str, Any]], draws: dict[str, dict[str, Tensor]], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    columns = [("data", "held-out data"), ("backbone", "backbone"), ("flowebm", "FlowEBM")]
    columns.append(("data_ebm", "data-space EBM"))
    if "flowebm_alt" in draws[results[0]["toy"]]:
        columns.append(("flowebm_alt", "FlowEBM alt."))
    figure = Figure(figsize=(3.0 * len(columns), 3.0 * len(results)))
    axes = figure.subplots(len(results), len(columns), squeeze=False)
    for row, r in zip(axes, results, strict=True):
        d = draws[r["toy"]]
        lo, hi = noise_box(d["data"], 0.1)
        for ax, (key, title) in zip(row, columns, strict=True):
            x = d[key].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="C0", rasterized=True)
            if key != "data":
                title = f"{title}\nMMD {r['metrics'][key]['mmd']:.2g}"
            else:
                title = f"{r['toy']}\n{title}"
            ax.set_title(title, fontsize="small")
            ax.set_xlim(float(lo[0]), float(hi[0]))
            ax.set_ylim(float(lo[1]), float(hi[1]))
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=80)


# -- the baseline's sweep --------------------------------------------------------------------------


def tune(args: argparse.Namespace) -> dict[str, Any]:
    """Each SWEEP setting of the short-run baseline, for the FlowEBM's budget W of the toy."""
    rows = []
    for name in args.tune_toys:
        toy = datasets.TOYS[name]
        known = known_of(toy)
        config = config_of(name, args)
        train, heldout = split(config)
        h_fine = fine_bandwidth(toy, heldout, config.seed + 2 * HELDOUT_SEED_OFFSET + 1)
        ebm, _, timings = train_flowebm(config, train, args)
        flow_x, _ = sample_flowebm(ebm, args)
        budget = timings["budget_s"]
        flow = evaluate(flow_x, heldout, known, h_fine)
        print(f"\n== {name}: budget W {budget:.1f} s, FlowEBM MMD {flow['mmd']:.4g}", flush=True)
        rows.append({"toy": name, "setting": "FlowEBM", "budget_s": budget, "metrics": flow})
        for values in SWEEP:
            settings = short_run_settings(args, config, **values)
            energy, box, record = train_short_run(train, budget, settings, config.seed, args.clock)
            x, _ = sample_short_run(energy, box, settings, args.num_samples, config.seed)
            metrics = evaluate(x, heldout, known, h_fine)
            label = (
                f"step {settings.step:g}, K {settings.k}, lr {settings.lr:g}, "
                f"MLP {settings.layers} x {settings.hidden}"
            )
            print(
                f"  {label}: {record['train_steps']} steps, "
                + ", ".join(f"{k} {metrics[k]:.4g}" for k in METRICS if k in metrics),
                flush=True,
            )
            rows.append(
                {
                    "toy": name,
                    "setting": label,
                    "settings": dataclasses.asdict(settings),
                    "budget_s": budget,
                    **record,
                    "metrics": metrics,
                }
            )
    table = markdown_table(
        ["toy", "method", "train steps", *METRICS],
        [
            [r["toy"], r["setting"], r.get("train_steps", "")]
            + [r["metrics"].get(k, "") for k in METRICS]
            for r in rows
        ],
    )
    text = (
        "Short-run data-space EBM: the settings tried, each trained for the FlowEBM's budget "
        "W on the toy (same data, same seed), 2000 short-run draws against the held-out "
        f"draws.\n\n{table}"
    )
    print("\n" + text)
    write_results("quality_tune", args, {"sweep": rows}, text)
    return {"sweep": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup(args)
    if args.tune:
        return tune(args)
    start = time.perf_counter()
    results, draws = [], {}
    for name in args.toys:
        result, toy_draws = run_toy(name, args)
        results.append(result)
        draws[name] = toy_draws
    wall = time.perf_counter() - start
    config = config_of(args.toys[0], args)
    meta = {
        "seed": args.seed,
        "clock": args.clock,
        "alt": args.alt,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "num_data": args.num_data,
        "num_heldout": args.num_heldout,
        "num_samples": args.num_samples,
        "warmup": args.warmup,
        "draws": args.draws,
        "thin": args.thin,
        "backbone": f"{config.backbone_layers} x {config.backbone_hidden}",
        "backbone_steps": config.backbone_steps,
        "energy": f"{config.energy_layers} x {config.energy_hidden}",
        "ebm_steps": config.steps,
        "run_config": config.to_dict(),
        "short_run": dataclasses.asdict(short_run_settings(args, config)),
        "plot": "quality_quick.png" if args.quick and args.out is None else "quality.png",
    }
    text = markdown(results, meta)
    print("\n" + text)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out = {"settings": settings, **meta, "toys": results}
    json_path, _ = write_results("quality", args, out, text)
    png = json_path.parent / meta["plot"]
    plot(results, draws, png)
    print(f"wrote {png}")
    return out


if __name__ == "__main__":
    main()
