"""The mixing report: verdicts on chains of known truth, a valid self-contained page, exit codes."""

from __future__ import annotations

import base64
import io
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from pyro_flowebm.app import report_run
from pyro_flowebm.app.cli import main
from pyro_flowebm.datasets import eight_gaussians_modes
from pyro_flowebm.diagnostics import (
    FALSE_CONVERGENCE,
    MIXING,
    NOT_MIXING,
    mixing_summary,
    report,
    to_inference_data,
    verdict,
    write_netcdf,
)
from pyro_flowebm.io import arviz

matplotlib.use("Agg")

MODES = eight_gaussians_modes().numpy()  # (8, 2), radius 4
SD = 0.15
SECTIONS = [
    "Verdict", "Summary (ArviZ)", "Mode coverage", "Chains over the data", "Trace",
    "Rank plots", "Autocorrelation", "Energy and BFMI", "Settings and reproducibility", "Build",
]  # fmt: skip


def chains(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Draws around the modes ``labels`` (chain, draw), and Hamiltonian-like sample stats."""
    rng = np.random.default_rng(seed)
    x = MODES[labels] + SD * rng.normal(size=(*labels.shape, 2))
    stats = {
        "energy": rng.normal(size=labels.shape),
        "diverging": rng.random(labels.shape) < 0.001,
        "lp": rng.normal(size=labels.shape),
    }
    return {"x": x, **{f"stat_{k}": v for k, v in stats.items()}}


def idata_of(labels: np.ndarray, seed: int = 0, **attrs):
    arrays = chains(labels, seed)
    stats = {k.removeprefix("stat_"): v for k, v in arrays.items() if k.startswith("stat_")}
    return to_inference_data({"x": arrays["x"]}, stats, attrs={"seed": seed, **attrs})


def well_mixed(n_chains: int = 4, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Independent draws of the mode of each draw: the ideal sampler."""
    return np.random.default_rng(seed + 100).integers(8, size=(n_chains, n_draws))


def same_subset(n_chains: int = 4, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Every chain mixes perfectly, but only between modes 0 and 1 of the eight."""
    return np.random.default_rng(seed + 200).integers(2, size=(n_chains, n_draws))


def stuck_apart(n_chains: int = 4, n_draws: int = 1000) -> np.ndarray:
    """Each chain stays in its own mode: 0, 2, 4, 6."""
    return np.repeat(2 * np.arange(n_chains)[:, None], n_draws, axis=1)


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


# ----------------------------------------------------------------------------- verdicts


def test_chains_in_the_same_subset_of_modes_are_false_convergence(tmp_path):
    idata = idata_of(same_subset())
    summary = mixing_summary(idata, MODES)
    # The trap: every R-hat is fine, coordinates and modes alike.
    assert summary.table["r_hat"].max() < 1.01 and summary.mode_rhat < 1.01
    assert summary.unvisited == [2, 3, 4, 5, 6, 7]
    result = report(idata, tmp_path / "r.html", modes=MODES)
    assert result.verdict.label == FALSE_CONVERGENCE
    assert first_line(result.markdown) == "verdict: false convergence"


def test_chains_stuck_in_different_modes_are_not_mixing(tmp_path):
    idata = idata_of(stuck_apart())
    result = report(idata, tmp_path / "r.html", modes=MODES)
    assert result.verdict.label == NOT_MIXING
    assert first_line(result.markdown) == "verdict: not mixing"
    # Without the modes, the coordinates' R-hat alone says the same.
    assert report(idata, tmp_path / "r2.html").verdict.label == NOT_MIXING


def test_well_mixed_chains_are_mixing(tmp_path):
    idata = idata_of(well_mixed())
    result = report(idata, tmp_path / "r.html", modes=MODES)
    assert result.verdict.label == MIXING
    assert first_line(result.markdown) == "verdict: mixing"


@pytest.mark.parametrize("seed", range(5))
def test_well_mixed_chains_of_200_draws_are_mixing_for_every_seed(seed):
    """Short, ideal chains: R-hat noise must not make the verdict flip to not mixing."""
    summary = mixing_summary(idata_of(well_mixed(4, 200, seed), seed), MODES)
    assert verdict(summary).label == MIXING, verdict(summary).reasons


def test_without_modes_false_convergence_is_not_claimed_and_the_reason_says_so():
    summary = mixing_summary(idata_of(same_subset()))
    v = verdict(summary, num_chains=4)
    assert v.label == MIXING
    assert any("modes unknown" in r for r in v.reasons)


def test_the_strict_bound_flags_what_the_default_calls_borderline():
    summary = mixing_summary(idata_of(well_mixed(4, 100, 3), 3), MODES)
    rhat = max(summary.table["r_hat"].max(), summary.mode_rhat)
    loose, strict = verdict(summary), verdict(summary, rhat_threshold=1.0)
    assert loose.label == MIXING and rhat > 1.0
    assert strict.label == NOT_MIXING


# ----------------------------------------------------------------------------- the page


class _Page(HTMLParser):
    """Collects headings, images and notes, and checks that every tag is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)


def parse(path: Path) -> _Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    return page


def decoded_images(page: _Page) -> list[np.ndarray]:
    images = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]  # embedded, no links
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        images.append(matplotlib.image.imread(io.BytesIO(png), format="png"))
    return images


def test_the_page_is_valid_self_contained_html_with_every_section(tmp_path):
    result = report(idata_of(well_mixed(4, 300)), tmp_path / "r.html", modes=MODES)
    page = parse(result.html)
    assert page.h2 == SECTIONS
    images = decoded_images(page)
    # mode occupancy, chains over the data, trace, rank, autocorrelation, energy
    assert len(images) == 6
    assert all(im.ndim == 3 and min(im.shape[:2]) > 100 for im in images)
    text = result.html.read_text(encoding="utf-8")
    assert 'src="http' not in text and "<script" not in text
    assert "BFMI per chain" in text and "<p>Seed: 0</p>" in text
    assert "arviz 0." in text and "matplotlib " in text and "pyro_flowebm " in text


def test_missing_sections_get_a_note_and_never_a_crash(tmp_path):
    """A NetCDF of someone else's sampler: a scalar and a 3-vector, no sample_stats."""
    rng = np.random.default_rng(1)
    idata = to_inference_data(
        {"mu": rng.normal(size=(2, 100)), "beta": rng.normal(size=(2, 100, 3))}
    )
    path = tmp_path / "other.nc"
    write_netcdf(idata, path)
    result = report(path, tmp_path / "r.html")
    page = parse(result.html)
    assert page.h2 == SECTIONS
    text = result.html.read_text(encoding="utf-8")
    assert "No known modes" in text
    assert "No 2-D posterior 'x'" in unescape(text)
    assert "No sample_stats group: energy plot left out." in text
    assert "No sample_stats 'diverging'" in unescape(text)
    assert len(decoded_images(page)) == 3  # trace, rank, autocorrelation
    assert first_line(result.markdown) == "verdict: mixing"


def test_many_chains_are_plotted_in_part_and_counted_in_full(tmp_path):
    idata = idata_of(well_mixed(12, 50))
    result = report(idata, tmp_path / "r.html", modes=MODES)
    text = result.html.read_text(encoding="utf-8")
    assert "Plots show the first 8 of 12 chains" in text
    assert result.verdict.label in (MIXING, NOT_MIXING)


def test_the_occupancy_of_many_chains_is_one_picture_not_a_row_a_chain(tmp_path):
    few = report(idata_of(well_mixed(4, 50)), tmp_path / "few.html", modes=MODES)
    many = report(idata_of(well_mixed(128, 50)), tmp_path / "many.html", modes=MODES)
    rows = {path: path.read_text(encoding="utf-8").count("<tr>") for path in (few.html, many.html)}
    # A few chains keep their table (a row a chain); 128 chains add no row beyond the
    # summary table's and the settings', and the picture holds every chain.
    assert rows[few.html] >= 4 + 1 and rows[many.html] < 128
    page = parse(many.html)
    occupancy = decoded_images(page)[0]
    assert occupancy.shape[0] > occupancy.shape[1] / 4  # a tall image: chains down the side


def test_compare_puts_both_runs_side_by_side_with_a_comparison_verdict(tmp_path):
    good = idata_of(well_mixed(4, 300), space="latent")
    bad = idata_of(stuck_apart(4, 300), space="data")
    result = report(good, tmp_path / "r.html", compare=bad, modes=MODES)
    assert result.verdict.label == MIXING and result.compare_verdict.label == NOT_MIXING
    assert result.comparison.startswith("latent space mixes, data space does not")
    lines = result.markdown.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "verdict: mixing" and lines[2].startswith("comparison: latent space mixes")
    page = parse(result.html)
    assert page.h2 == SECTIONS
    assert len(decoded_images(page)) == 12


def test_modes_come_from_a_file(tmp_path):
    np.save(tmp_path / "modes.npy", MODES)
    result = report(
        idata_of(same_subset(4, 200)), tmp_path / "r.html", modes=tmp_path / "modes.npy"
    )
    assert result.verdict.label == FALSE_CONVERGENCE
    assert "modes.npy" in result.html.read_text(encoding="utf-8")


def test_a_run_directory_is_for_the_app_layer(tmp_path):
    with pytest.raises(ValueError, match="report_run"):
        report(tmp_path, tmp_path / "r.html")


def test_modes_of_another_dimension_are_refused():
    with pytest.raises(ValueError, match=r"expected modes of shape \(K, d\) matching"):
        report(idata_of(well_mixed(2, 50)), "unused.html", modes=np.zeros((3, 5)))


# ----------------------------------------------------------------------------- the command


def test_the_command_reports_a_run_directory_with_its_data_and_builtin_modes(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--num-data", "300", "--num-heldout", "100", "--backbone-layers", "2"]
    small += ["--backbone-hidden", "8", "--energy-hidden", "8", "--backbone-steps", "5"]
    small += ["--batch-size", "16", "--mcmc-steps", "1", "--num-steps", "2", "--steps", "2"]
    assert (
        main(["train", "--data", "eight_gaussians", "--out", str(run), *small, "--no-progress"])
        == 0
    )
    sample = ["sample", "--run", str(run), "--out", str(run / "samples.nc"), "--num-chains", "4"]
    assert main([*sample, "--num-samples", "30", "--warmup-steps", "10", "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["report", str(run), "--out", str(tmp_path / "r.html")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("verdict: ")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "8 modes from built-in data set 'eight_gaussians'" in unescape(text)
    assert "chains over the data density; chains over the learned density" in text
    assert "<th>sampler</th><td>Cycle</td>" in text  # the settings of `sample`
    strict = main(["report", str(run), "--out", str(tmp_path / "s.html"), "--strict"])
    assert strict == (0 if out.startswith("verdict: mixing") else 3)


def test_strict_exits_3_unless_the_verdict_is_mixing(tmp_path):
    stuck, mixed = tmp_path / "stuck.nc", tmp_path / "mixed.nc"
    write_netcdf(idata_of(stuck_apart(4, 100)), stuck)
    write_netcdf(idata_of(well_mixed(4, 200)), mixed)
    out = str(tmp_path / "r.html")
    assert main(["report", str(stuck), "--out", out, "--strict"]) == 3
    assert main(["report", str(stuck), "--out", out]) == 0
    assert main(["report", str(mixed), "--out", out, "--strict"]) == 0
    assert first_line(tmp_path / "r.md") == "verdict: mixing"


def _no_posterior(tmp_path: Path) -> Path:
    path = tmp_path / "stats_only.nc"
    arviz().from_dict(sample_stats={"lp": np.zeros((2, 10))}).to_netcdf(str(path))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.nc", "no such file"),
        (_no_posterior, "with a posterior group"),
        (lambda tmp: (tmp / "empty_run").mkdir() or tmp / "empty_run", "without it; write it"),
        (lambda tmp: (tmp / "t.txt").write_text("x") and tmp / "t.txt", "an ArviZ NetCDF file"),
    ],
    ids=["missing", "no-posterior", "run-without-samples", "not-netcdf"],
)
def test_bad_input_exits_2_with_a_one_line_error(tmp_path, capsys, make, message):
    source = make(tmp_path)
    assert main(["report", str(source), "--out", str(tmp_path / "r.html")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-flowebm report: error:"), lines
    assert message in lines[0]
    assert not (tmp_path / "r.html").exists()


def test_bad_compare_and_modes_exit_2(tmp_path, capsys):
    good = tmp_path / "good.nc"
    write_netcdf(idata_of(well_mixed(2, 50)), good)
    out = str(tmp_path / "r.html")
    assert main(["report", str(good), "--compare", str(tmp_path / "no.nc"), "--out", out]) == 2
    assert main(["report", str(good), "--modes", str(tmp_path / "no.npy"), "--out", out]) == 2
    assert main(["report", str(good), "--out", str(tmp_path / "r.txt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("error:" in e for e in errors)


def test_help_names_every_flag(capsys):
    assert main(["report", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("RUN_DIR_OR_NETCDF", "--compare", "--out", "--modes", "--var-names", "--strict"):
        assert flag in text
    assert re.search(r"verdict: false\s+convergence", text)


# ----------------------------------------------------------------------------- var_names

MU, THETA = 0.5, np.array([-1.0, 0.0, 2.0])


def posterior_style(seed: int = 0, n_chains: int = 4, n_draws: int = 200, **attrs):
    """InferenceData shaped like ``infer.sample_posterior``'s: a scalar, a 3-vector, a
    FlowEBM-like ``x``/``x_latent`` pair, ``lp`` and ``acceptance_rate``, the likelihood,
    the data and the evidence; independent draws of known means."""
    rng = np.random.default_rng(seed)
    size = (n_chains, n_draws)
    posterior = {
        "mu": MU + rng.normal(size=size),
        "theta": THETA + rng.normal(size=(*size, 3)),
        "x": rng.normal(size=(*size, 2)),
        "x_latent": rng.normal(size=(*size, 2)),
    }
    stats = {"lp": rng.normal(size=size), "acceptance_rate": rng.random(size)}
    attrs = {"method": "smc", "log_evidence": -3.2, "log_evidence_stderr": 0.02, **attrs}
    return to_inference_data(
        posterior, stats, attrs={"seed": seed, **attrs},
        log_likelihood={"y": rng.normal(size=(*size, 5))}, observed_data={"y": np.ones(5)},
        prior={"mu": rng.normal(size=(1, 100))},
    )  # fmt: skip


def summary_rows(html: Path) -> list[str]:
    """Row names of the first table of the page: the ArviZ summary."""
    text = html.read_text(encoding="utf-8")
    table = text[text.index("<table>") : text.index("</table>")]
    return [unescape(name) for name in re.findall(r"<tr><th>([^<]+)</th><td", table)]


def test_var_names_picks_the_variables_of_the_table_and_the_plots(tmp_path):
    path = tmp_path / "posterior.nc"
    write_netcdf(posterior_style(), path)
    out = tmp_path / "r.html"
    assert main(["report", str(path), "--out", str(out), "--var-names", "mu", "theta"]) == 0
    assert summary_rows(out) == ["mu", "theta[0]", "theta[1]", "theta[2]"]
    text = unescape(out.read_text(encoding="utf-8"))
    assert "Variables chosen with var_names (--var-names): mu, theta." in text
    assert "x_latent" not in text and "x[0]" not in text
    # x is not chosen: no chains-over-data picture of it; trace, rank, autocorrelation remain.
    assert "not among var_names: no picture of it" in text
    assert len(decoded_images(parse(out))) == 3


def test_a_posterior_file_with_scalars_and_vectors_and_no_x_reports(tmp_path):
    """sample_posterior's groups, no variable x: the table is ArviZ's summary of the draws."""
    idata = posterior_style(n_draws=400)
    del idata.posterior["x"], idata.posterior["x_latent"]
    path = tmp_path / "posterior.nc"
    write_netcdf(idata, path)
    result = report(path, tmp_path / "r.html")  # without var_names: every variable
    page = parse(result.html)
    assert page.h2 == SECTIONS
    assert summary_rows(result.html) == ["mu", "theta[0]", "theta[1]", "theta[2]"]
    assert len(decoded_images(page)) == 3  # trace, rank, autocorrelation
    assert result.verdict.label == MIXING
    table = mixing_summary(idata).table
    # Independent draws of known means: each mean is within its Monte Carlo error (p = 0.01).
    z = np.abs(table["mean"].to_numpy() - np.array([MU, *THETA])) / table["mcse_mean"].to_numpy()
    assert z.max() < 2.576, z
    text = unescape(result.html.read_text(encoding="utf-8"))
    assert "No 2-D posterior 'x'" in text and "No sample_stats 'energy'" in text
    lp = idata.sample_stats["lp"].to_numpy()
    assert (
        f"<tr><th>lp</th><td>{lp.mean():.3f}</td><td>{lp.std():.3f}</td>"
        f"<td>{lp.min():.3f}</td><td>{lp.max():.3f}</td></tr>"
    ) in text


def test_the_evidence_of_the_attrs_is_on_the_page_and_in_the_summary(tmp_path):
    result = report(posterior_style(), tmp_path / "r.html", var_names="mu")
    line = "log evidence: -3.200 ± 0.020 (method smc)"
    assert f"<p>L{line[1:]}.</p>" in result.html.read_text(encoding="utf-8")
    assert f"- {line}" in result.markdown.read_text(encoding="utf-8").splitlines()
    nan = posterior_style(log_evidence=float("nan"), method="hmc")  # chains: no evidence
    chains = report(nan, tmp_path / "h.html", var_names=["mu"])
    assert "- log evidence: not estimated (method hmc)" in chains.markdown.read_text("utf-8")
    # A run's own output has no evidence: its summary is as before.
    plain = report(idata_of(well_mixed(2, 50)), tmp_path / "p.html")
    assert "evidence" not in plain.markdown.read_text(encoding="utf-8")


def test_an_unknown_var_name_exits_2_naming_it_and_the_choices_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "posterior.nc"
    write_netcdf(posterior_style(), path)
    out = tmp_path / "r.html"
    assert main(["report", str(path), "--out", str(out), "--var-names", "mu", "nope"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("pyro-flowebm report: error: expected --var-names")
    assert "unknown 'nope'" in line and "available: mu, theta, x, x_latent" in line
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_var_names_pass_through_report_run_and_mode_coverage_stays_on_var_name(tmp_path):
    """Chains in two of eight modes, and a second variable z that mixes: choosing z alone
    still checks the modes of x (false convergence), without drawing x."""
    z = np.random.default_rng(3).normal(size=(4, 200, 2))
    idata = to_inference_data({"x": chains(same_subset(4, 200), 0)["x"], "z": z})
    result = report_run(idata, tmp_path / "r.html", modes=MODES, var_names=["z"])
    assert summary_rows(result.html) == ["z[0]", "z[1]"]
    assert result.verdict.label == FALSE_CONVERGENCE
    with pytest.raises(ValueError, match=r"unknown 'w'; available: x, z"):
        report_run(idata, tmp_path / "w.html", var_names=["z", "w"])
    assert not (tmp_path / "w.html").exists()
