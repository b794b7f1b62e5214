"""log Z by importance sampling and annealed SMC against a closed form and a long run; sampling p.

Three parts, each in one process, one torch thread unless ``--threads`` says otherwise:

1. Closed form. A Gaussian backbone x = m + s z (``flow_backbone`` of an
   ``AffineTransform``) tilted by E(x) = sum_i a_i (x_i - c_i)^2 / 2 has
   log Z = sum_i [-log(1 + a_i s_i^2) / 2 - a_i (m_i - c_i)^2 / (2 (1 + a_i s_i^2))], in any
   dimension (m, c ~ N(0, 1), s, a ~ U(0.5, 1.5), seed 0, float64). At d = 2, 16, 64, 256,
   ``estimate_log_z`` with ``method="is"`` (65,536 particles) and ``"smc"`` (4,096
   particles, its defaults otherwise) is repeated with seeds 0, 1, ...: mean error, RMSE,
   the spread of the repeats against the mean reported standard error, k-hat, wall
   seconds, and the error per second (RMSE x sqrt(wall seconds): the error one second of
   work would give if it fell as 1/sqrt(cost); lower is better).
2. The trained digits model (``--digits-run``, from ``pyro-flowebm train --data digits``):
   IS and SMC against a long SMC run (8,192 particles).
3. ``FlowEBM.sample`` on an unbalanced 2-D mixture EBM (weights 0.6 / 0.3 / 0.1): the
   largest mode-weight error in binomial standard errors, and the wall time of 10,000
   draws for several particle budgets of ``ImportanceResampler`` and for ``SMCResampler``,
   as a ratio to ``ebm.backbone.sample`` of as many draws timed in the same rounds.

    python benchmarks/log_z.py --digits-run runs/digits   # ~25 minutes
    python benchmarks/log_z.py --quick                    # ~30 seconds, smoke run
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
from _common import base_parser, markdown_table, median, setup, write_results
from torch import Tensor
from torch.distributions.transforms import AffineTransform

from pyro_flowebm import FlowEBM, flow_backbone
from pyro_flowebm.app import load_run
from pyro_flowebm.distributions import ImportanceResampler
from pyro_flowebm.infer import SMCResampler, estimate_log_z


def quadratic_case(d: int) -> tuple[FlowEBM, float]:
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(d, generator=g), 0.5 + torch.rand(d, generator=g)
    a, c = 0.5 + torch.rand(d, generator=g), torch.randn(d, generator=g)

    def energy(x: Tensor) -> Tensor:
        return 0.5 * (a * (x - c) ** 2).sum(-1)

    precision = 1 + a * s**2
    log_z = (-0.5 * precision.log() - 0.5 * a * (m - c) ** 2 / precision).sum()
    return FlowEBM(flow_backbone(AffineTransform(m, s, event_dim=1), (d,)), energy), float(log_z)


def summarize(estimates: list[Any], truth: float) -> dict[str, Any]:
    errors = [e.log_z - truth for e in estimates]
    seconds = statistics.mean(e.wall_time for e in estimates)
    rmse = math.sqrt(statistics.mean(x * x for x in errors))
    spread = statistics.stdev(errors) if len(errors) > 1 else math.nan
    reported = statistics.mean(e.stderr for e in estimates)
    khats = [e.khat for e in estimates if e.khat is not None]
    return {
        "repeats": len(estimates),
        "mean_log_z": statistics.mean(e.log_z for e in estimates),
        "mean_error": statistics.mean(errors),
        "rmse": rmse,
        "spread": spread,
        "mean_stderr": reported,
        "stderr_over_spread": reported / spread if spread > 0 else math.nan,
        "khat": statistics.mean(khats) if khats else None,
        "seconds": seconds,
        "error_per_second": rmse * math.sqrt(seconds),
        "num_particles": estimates[0].num_particles,
        "stages": statistics.mean(len(e.betas) for e in estimates),
    }


def closed_form(args: Any) -> list[dict[str, Any]]:
    torch.set_default_dtype(torch.float64)
    rows = []
    dims = [2, 16] if args.quick else [2, 16, 64, 256]
    for d in dims:
        ebm, truth = quadratic_case(d)
        repeats = 3 if args.quick else (20 if d <= 64 else 3)
        for method, n in (("is", 2**16), ("smc", 512 if args.quick else 4096)):
            runs = [
                estimate_log_z(ebm, n, method=method, seed=r, progress_bar=False)
                for r in range(repeats)
            ]
            row = {"d": d, "method": method, "truth": truth} | summarize(runs, truth)
            print(
                f"d={d:4d} {method:3s} error {row['mean_error']:+.4f} rmse {row['rmse']:.4f} "
                f"se/spread {row['stderr_over_spread']:.2f} {row['seconds']:.1f} s",
                flush=True,
            )
            rows.append(row)
    torch.set_default_dtype(torch.float32)
    return rows


def digits(args: Any) -> list[dict[str, Any]]:
    if args.digits_run is None or not Path(args.digits_run).is_dir():
        print(f"no digits run at {args.digits_run}: part 2 skipped")
        return []
    ebm = load_run(args.digits_run, device="cpu")
    reference = estimate_log_z(ebm, 512 if args.quick else 8192, seed=1000)
    print(f"digits: long SMC log Z {reference.log_z:.4f} +- {reference.stderr:.4f}", flush=True)
    reference_row = summarize([reference], reference.log_z)
    rows = [{"method": "smc (reference)", "truth": reference.log_z} | reference_row]
    repeats = 2 if args.quick else 5
    for method, n in (("is", 2**16), ("smc", 256 if args.quick else 1024)):
        runs = [
            estimate_log_z(ebm, n, method=method, seed=r, progress_bar=False)
            for r in range(repeats)
        ]
        rows.append({"method": method, "truth": reference.log_z} | summarize(runs, reference.log_z))
    return rows


def mixture_ebm() -> tuple[FlowEBM, Tensor, Tensor]:
    centres = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    weights = torch.tensor([0.6, 0.3, 0.1])
    mixture = dist.MixtureSameFamily(
        dist.Categorical(weights), dist.Normal(centres, 0.4).to_event(1)
    )
    shift = AffineTransform(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0]), event_dim=1)
    backbone = flow_backbone(shift, (2,))
    ebm = FlowEBM(backbone, lambda x: backbone.log_prob(x) - mixture.log_prob(x))
    return ebm, centres, weights


def sampling(args: Any) -> list[dict[str, Any]]:
    ebm, centres, weights = mixture_ebm()
    n = 2000 if args.quick else 10_000
    samplers: dict[str, Any] = {
        f"SIR, {k} per draw": ImportanceResampler(particles_per_draw=k) for k in (1, 4, 32, 128)
    }
    samplers["SMC, 4 per draw"] = SMCResampler()
    rounds = 2 if args.quick else 5
    times: dict[str, list[float]] = {name: [] for name in samplers}
    errors: dict[str, list[float]] = {name: [] for name in samplers}
    for r in range(rounds):
        torch.manual_seed(r)
        start = time.perf_counter()
        ebm.backbone.sample((n,))
        reference = time.perf_counter() - start
        for name, sampler in samplers.items():
            start = time.perf_counter()
            x = ebm.with_sampler(sampler).sample((n,))
            times[name].append((time.perf_counter() - start) / reference)
            freq = torch.bincount(torch.cdist(x, centres).argmin(-1), minlength=3) / n
            z = (freq - weights).abs() / (weights * (1 - weights) / n).sqrt()
            errors[name].append(float(z.max()))
    return [
        {
            "sampler": name,
            "draws": n,
            "time_over_backbone": median(times[name]),
            "time_over_backbone_range": [min(times[name]), max(times[name])],
            "max_mode_error_in_se": median(errors[name]),
        }
        for name in samplers
    ]


def render(results: dict[str, Any]) -> str:
    """The Markdown tables of the three parts."""
    closed = [
        [
            r["d"], r["method"], r["num_particles"], r["mean_error"], r["rmse"], r["spread"],
            r["mean_stderr"], r["stderr_over_spread"], r["khat"], r["stages"], r["seconds"],
            r["error_per_second"],
        ]
        for r in results["closed_form"]
    ]  # fmt: skip
    markdown = "## log Z against the closed form (Gaussian backbone, quadratic energy)\n\n"
    markdown += markdown_table(
        ["d", "method", "particles", "mean error", "RMSE", "spread", "mean SE", "SE / spread",
         "k-hat", "stages", "s", "RMSE x sqrt(s)"],
        closed,
    )  # fmt: skip
    if results["digits"]:
        markdown += "\n\n## digits (against a long SMC run)\n\n" + markdown_table(
            ["method", "particles", "repeats", "mean log Z", "mean error", "RMSE", "mean SE",
             "k-hat", "s"],
            [
                [r["method"], r["num_particles"], r["repeats"], r["mean_log_z"],
                 r["mean_error"], r["rmse"], r["mean_stderr"], r["khat"], r["seconds"]]
                for r in results["digits"]
            ],
        )  # fmt: skip
    markdown += "\n\n## FlowEBM.sample on an unbalanced 3-mode mixture\n\n" + markdown_table(
        ["sampler", "draws", "time / backbone.sample", "largest mode error (binomial SE)"],
        [
            [r["sampler"], r["draws"], r["time_over_backbone"], r["max_mode_error_in_se"]]
            for r in results["sample"]
        ],
    )
    return markdown


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--digits-run", type=Path, default=Path("runs/digits"))
    args = parser.parse_args()
    setup(args)
    results = {"closed_form": closed_form(args), "digits": digits(args), "sample": sampling(args)}
    markdown = render(results)
    print("\n" + markdown)
    write_results("log_z", args, results, markdown)


if __name__ == "__main__":
    main()
