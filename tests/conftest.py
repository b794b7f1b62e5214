"""Shared fixtures: float64 by default, a fixed seed per test, and small exact models."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import normflows as nf
import pyro
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from pyro_flowebm import FlowEBM, NormflowsTransform, flow_backbone
from pyro_flowebm.app import RunConfig, evaluate_run, report_run, sample_run, train_run
from pyro_flowebm.app.cli import main
from pyro_flowebm.io import arviz, is_temporary, to_inference_data


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's tensors are small: a second intra-op thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def float64_and_seed():
    """Tests run in float64 with a fixed seed unless they say otherwise."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(dtype)


class QuadraticEnergy(nn.Module):
    """E(x) = 0.5 (x - m)^T A (x - m)."""

    def __init__(self, m: Tensor, A: Tensor) -> None:
        super().__init__()
        self.register_buffer("m", m)
        self.register_buffer("A", A)

    def forward(self, x: Tensor) -> Tensor:
        d = x - self.m
        return 0.5 * torch.einsum("...i,ij,...j->...", d, self.A, d)


class GaussianCase:
    """A Gaussian backbone N(t, diag(exp(2 s))) tilted by a quadratic energy: a Gaussian.

    Precision P = S^-1 + A, mean mu = P^-1 (S^-1 t + A m).
    """

    def __init__(self) -> None:
        layer = nf.flows.AffineConstFlow((2,))
        with torch.no_grad():
            layer.s.copy_(torch.tensor([[0.3, -0.4]]))
            layer.t.copy_(torch.tensor([[1.0, -2.0]]))
        self.transform = NormflowsTransform([layer], event_shape=(2,))
        self.backbone = flow_backbone(self.transform, (2,))
        m = torch.tensor([0.5, 0.5])
        A = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
        self.energy = QuadraticEnergy(m, A)
        self.ebm = FlowEBM(self.backbone, self.energy)
        s_inv = torch.diag(torch.exp(-2 * layer.s.detach()[0]))
        precision = s_inv + A
        self.cov = torch.linalg.inv(precision)
        self.mean = self.cov @ (s_inv @ layer.t.detach()[0] + A @ m)

    def analytic(self) -> torch.distributions.MultivariateNormal:
        return torch.distributions.MultivariateNormal(self.mean, self.cov)


@pytest.fixture
def gaussian_case() -> GaussianCase:
    return GaussianCase()


# The two-sided 99% normal quantile: a z-test at p = 0.01.
Z99 = 2.5758


def z_bound(tests: int) -> float:
    """The two-sided 1% normal quantile for a family of ``tests`` z-tests (Bonferroni).

    One test is the suite's Z99; the max of K simultaneous z-scores is held to the
    1 - 0.01 / (2 K) quantile, so that a whole assert fails with probability <= 1%.
    """
    return Z99 if tests == 1 else float(stats.norm.ppf(1 - 0.005 / tests))


def mcse_z_scores(draws: Tensor, mean: Tensor, cov: Tensor) -> dict[str, Tensor]:
    """|estimate - truth| / MCSE for the mean and the variance of each coordinate.

    ``draws`` has shape (chain, draw, d). The variance is tested as the mean of
    (x - mean)^2 against diag(cov); MCSEs come from ArviZ (effective sample size aware).
    """
    centred_sq = (draws - mean) ** 2
    idata = to_inference_data({"m": draws, "v": centred_sq})
    mcse = arviz().mcse(idata, method="mean")
    mcse_m = torch.as_tensor(mcse["m"].values)
    mcse_v = torch.as_tensor(mcse["v"].values)
    return {
        "mean": (draws.mean((0, 1)) - mean).abs() / mcse_m,
        "variance": (centred_sq.mean((0, 1)) - torch.diagonal(cov)).abs() / mcse_v,
    }


def assert_moments(draws: Tensor, mean: Tensor, cov: Tensor) -> None:
    """The means and variances of ``draws`` (chain, draw, d) agree with the truth: the
    largest of the 2 d z-scores of :func:`mcse_z_scores` is held to ``z_bound(2 d)``, so
    that an exact sampler fails with probability 1%."""
    z = mcse_z_scores(draws, mean, cov)
    scores = torch.cat([z["mean"], z["variance"]])
    assert scores.max() < z_bound(scores.numel()), z


@pytest.fixture(scope="session")
def trained() -> FlowEBM:
    """A FlowEBM trained on eight Gaussians (float32, ~10 s), shared by the modules that
    test against its grid."""
    config = RunConfig(
        data="eight_gaussians", num_data=2000, num_heldout=200, backbone_steps=600, steps=60
    )
    with tempfile.TemporaryDirectory() as tmp:
        return train_run(tmp, config, progress_bar=False)


# The command's bad-input and fault tests: one finished run, attacked in copies.
# A small, quick run: the numbers are about the machinery, not the model's quality.
SMALL_RUN = RunConfig(
    data="two_moons", num_data=300, num_heldout=100, backbone_layers=2, backbone_hidden=8,
    energy_hidden=16, backbone_steps=20, steps=4, batch_size=32, mcmc_steps=2, num_steps=3,
    checkpoint_every=2, validate_every=2,
)  # fmt: skip
TRAIN_FLAGS = ["--num-data", "300", "--num-heldout", "100", "--backbone-layers", "2"]
TRAIN_FLAGS += ["--backbone-hidden", "8", "--energy-hidden", "16", "--backbone-steps", "20"]
TRAIN_FLAGS += ["--steps", "4", "--batch-size", "32", "--mcmc-steps", "2", "--num-steps", "3"]
TRAIN_FLAGS += ["--checkpoint-every", "2", "--validate-every", "2", "--no-progress"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished run with everything the commands write: samples, evaluation, a report."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train_run(run, SMALL_RUN, progress_bar=False)
    sample_run(run, run / "samples.nc", num_chains=4, num_samples=20, warmup_steps=5,
               progress_bar=False)  # fmt: skip
    evaluate_run(run, samples=run / "samples.nc", num_draws=32, log_z_particles=256,
                 progress_bar=False)  # fmt: skip
    report_run(run, run / "report.html")
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A copy of the finished run, for a case to attack."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (the lock file aside: it names its last holder)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".pyro_flowebm.lock"
    }


def check_refused(args: list[str], names: str, root: Path, capsys, code: int = 2) -> str:
    """Run the command; assert its exit code, that its one-line message names ``names``,
    and that nothing under ``root`` changed and no temporary file was left."""
    before = snapshot(root)
    assert main(args) == code
    err = capsys.readouterr().err
    assert names in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before
    assert not [p for p in root.rglob("*") if is_temporary(p.name) and p.suffix == ".tmp"]
    return err
