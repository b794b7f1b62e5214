"""Posteriors of Pyro models with FlowEBM priors: many chains at once, tempered from the prior.

:func:`sample_posterior` turns a Pyro model into a :class:`~pyro_flowebm.infer.model.
ModelDensity` (FlowEBM sites in latent space, other sites unconstrained, all chains in one
plated run) and samples it. The default, likelihood-tempered SMC, starts from exact draws
of the prior, where a learned prior's modes are already weighted right, and lets the
likelihood in gradually: particles reweight across modes instead of having to walk between
them, which is what a likelihood that cuts the latent space apart makes impossible for a
chain. Its product of mean incremental weights is the evidence :math:`p(y)`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import __version__
from ..core import check_int, seeded
from ..io import to_inference_data
from .chains import run_chains
from .hmc import HMC, MALA
from .kernel import Kernel
from .model import ModelDensity
from .presets import preset_kernel
from .smc import anneal

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["METHODS", "posterior_data", "sample_posterior"]

# Positions evaluated per run of the model when the draws are turned into site values.
_BATCH = 4096
# SMC: kernel steps per temperature, the conditional ESS each temperature step keeps, and
# the moves after the last resampling unless warmup_steps says otherwise.
_SMC_MOVES = 4
_SMC_TARGET_ESS = 0.9
_SMC_FINAL_MOVES = 10


def _kernel(method: str) -> Kernel:
    if method == "mala":
        return MALA(0.1)
    return preset_kernel(method)


# The method names sample_posterior takes; "smc" is likelihood-tempered SMC.
METHODS: dict[str, Callable[[], Kernel] | None] = {
    "smc": None,
    "hmc": lambda: _kernel("hmc"),
    "mala": lambda: _kernel("mala"),
    "chees": lambda: _kernel("chees"),
}


def sample_posterior(
    model: Callable[..., Any],
    model_args: Sequence[Any] = (),
    model_kwargs: Mapping[str, Any] | None = None,
    *,
    num_chains: int,
    num_samples: int,
    warmup_steps: int | None = None,
    method: str | Kernel = "smc",
    seed: int | None = None,
    progress_bar: bool = True,
) -> InferenceData:
    r"""Sample the posterior of a Pyro model with continuous latent sites, all chains at once.

    FlowEBM sites move in their flow's latent space (as
    :class:`~pyro_flowebm.FlowEBMReparam` puts them), every other latent site in Pyro's
    unconstrained space (as ``initialize_model`` does). The log density of all chains is one
    run of the model inside a ``pyro.plate`` over chains; before sampling it is compared with
    Pyro's own potential chain by chain on three prior draws, and a model that does not
    broadcast over chains is refused with an error naming the site.

    - ``method="smc"`` (default): likelihood-tempered SMC from exact prior draws
      (:func:`~pyro_flowebm.infer.smc.anneal` with ``U_0 = -\log p(\theta)`` and
      ``T = -\log p(y \mid \theta)``): ``num_chains`` independent particle systems of
      ``num_samples`` particles, each resampled to equal weights at the end and moved
      ``warmup_steps`` more HMC steps (default 10) so that copies part. A chain of the
      output is a particle system, a draw one of its particles; ArviZ's R-hat then compares
      independent systems. The evidence :math:`\log p(y)` is the log of the mean of the
      systems' unbiased estimates, its standard error the delta method over them.
    - ``"hmc"``, ``"mala"``, ``"chees"``, or any :mod:`pyro_flowebm.infer` kernel: that
      kernel by :func:`~pyro_flowebm.infer.run_chains` on the posterior, ``num_chains``
      chains started at prior draws, ``warmup_steps`` (default ``num_samples``) adaptation
      steps. No evidence (``NaN``): chains do not estimate it. Like every local sampler
      they do not move weight between posterior modes: on a multimodal posterior the
      share of chains in each mode is where their starts and the flow's geometry sent
      them (R-hat flags it), so a mode probability needs ``"smc"``.

    A chain whose model run returns NaN or raises a ``ValueError`` (Pyro's validation) is a
    rejected proposal (SMC: a particle of weight zero), counted in the attribute
    ``num_nonfinite``; the other chains are untouched.

    Args:
        model: a Pyro model; its FlowEBM sites latent (an observed FlowEBM needs its
            ``log_z``).
        model_args: the model's positional arguments (the data).
        model_kwargs: its keyword arguments.
        num_chains: chains (SMC: independent particle systems), at least 1.
        num_samples: draws per chain (SMC: particles per system, at least 2).
        warmup_steps: SMC: HMC moves after the last resampling; kernels: adaptation steps.
        method: ``"smc"``, a kernel name, or a kernel.
        seed: seeds torch's generator for this call only; ``None`` uses the current stream.
        progress_bar: tqdm bars.

    Returns:
        ``arviz.InferenceData`` with groups ``posterior`` (every latent site; a FlowEBM site
        ``x`` in data space and as ``x_latent``; deterministic sites), ``sample_stats``
        (``lp``, the log joint density), ``log_likelihood`` (per observed site and
        observation: ``az.loo`` and ``az.waic`` run on it), ``prior`` and
        ``prior_predictive`` (draws of the model run forward, a FlowEBM site by its own
        sampler: the EBM, not its backbone), ``observed_data``; attrs ``log_evidence``,
        ``log_evidence_stderr``, ``method``, ``settings`` (JSON), ``seed``,
        ``num_nonfinite``, ``sampling_time``.

    Raises:
        TypeError: a non-callable model, arguments the model does not take, or an unknown
            kernel type.
        ValueError: no latent site, a discrete latent site, an observed FlowEBM without
            ``log_z``, a model that does not broadcast over chains, or bad counts.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> idata = sample_posterior(model, (torch.ones(4),), num_chains=4, num_samples=250,
        ...                          seed=0, progress_bar=False)
        >>> round(float(idata.posterior["mu"].mean()), 1)  # exact: 4 / 5
        0.8
        >>> exact = float(dist.MultivariateNormal(torch.zeros(4), torch.eye(4) + 1).log_prob(
        ...     torch.ones(4)))
        >>> abs(idata.attrs["log_evidence"] - exact) < 3 * idata.attrs["log_evidence_stderr"]
        True
    """
    check_int("num_chains", num_chains, 1)
    check_int("num_samples", num_samples, 2 if method == "smc" else 1)
    if warmup_steps is not None:
        check_int("warmup_steps", warmup_steps, 0)
    kernel = _method_kernel(method)
    start = time.perf_counter()
    with seeded(seed):
        density = ModelDensity(model, model_args, model_kwargs)
        n = num_chains * num_samples
        position, prior, predictive = density.prior_draws(n)
        density.check(position[: min(3, n)])
        if kernel is None:
            draws, stats, attrs = _smc(density, position, num_chains, warmup_steps, progress_bar)
        else:
            draws, stats, attrs = _chains(
                density, kernel, position, num_chains, num_samples, warmup_steps, progress_bar
            )
            attrs["method"] = method if isinstance(method, str) else attrs["method"]
    attrs |= {"seed": seed, "num_nonfinite": density.num_nonfinite}
    attrs["sampling_time"] = round(time.perf_counter() - start, 3)
    return _inference_data(density, draws, stats, attrs, prior, predictive, num_chains)


def _method_kernel(method: str | Kernel) -> Kernel | None:
    if isinstance(method, Kernel):
        return method
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"expected method one of {sorted(METHODS)} or a kernel, got {method!r}")
    make = METHODS[method]
    return None if make is None else make()


def _smc(
    density: ModelDensity, init: Tensor, num_chains: int, moves: int | None, bar: bool
) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """Likelihood-tempered SMC; draws ``(num_chains, num_samples, dim)``."""
    with torch.no_grad():
        finite = torch.isfinite(density.potential(init[: min(len(init), 1024)]))
    if not bool(finite.any()):
        raise ValueError(
            "expected a finite log density at some prior draw, got none among the first "
            f"{len(finite)}: the likelihood is zero (or NaN) wherever the prior puts mass"
            + _last_error(density)
        )
    base, likelihood = density.split_potential()
    kernel = HMC(0.3, 5, target_accept_prob=0.7)
    settings = {
        "num_moves": _SMC_MOVES,
        "target_ess": _SMC_TARGET_ESS,
        "final_moves": _SMC_FINAL_MOVES if moves is None else moves,
    }
    result = anneal(
        init, base, likelihood, kernel, num_groups=num_chains, progress_bar=bar, **settings
    )
    log_evidence, stderr = result.log_z()
    attrs = {
        "method": "smc",
        "log_evidence": log_evidence,
        "log_evidence_stderr": stderr,
        "settings": json.dumps({"kernel": kernel.settings(), **settings}),
        "betas": json.dumps(result.betas),
        "stage_acceptance": json.dumps(result.acceptance),
        "num_grad_evals": result.num_grad_evals,
    }
    return result.position.reshape(num_chains, -1, density.dim), {}, attrs


def _last_error(density: ModelDensity) -> str:
    error = density.last_error
    return "" if error is None else f"; the model raised {(str(error).splitlines() or [''])[0]}"


def _chains(
    density: ModelDensity,
    kernel: Kernel,
    prior: Tensor,
    num_chains: int,
    num_samples: int,
    warmup_steps: int | None,
    bar: bool,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
    """A kernel's chains from the first prior draws where the posterior is finite."""
    with torch.no_grad():
        finite = torch.isfinite(density.potential(prior)).nonzero().flatten()
    if len(finite) < num_chains:
        raise ValueError(
            f"expected {num_chains} prior draws with a finite posterior density to start "
            f"the chains from, got {len(finite)} of {len(prior)}" + _last_error(density)
        )
    idata = run_chains(
        density.potential,
        kernel,
        num_chains,
        num_samples,
        num_samples if warmup_steps is None else warmup_steps,
        init=prior[finite[:num_chains]],
        progress_bar=bar,
    )
    draws = torch.as_tensor(idata.posterior["x"].values)
    stats = {k: torch.as_tensor(v.values) for k, v in idata.sample_stats.items() if k != "lp"}
    attrs = {
        "method": type(kernel).__name__,
        "log_evidence": math.nan,
        "log_evidence_stderr": math.nan,
        "settings": idata.attrs["kernel"],
        "adapted": idata.attrs["adapted"],
        "num_grad_evals": idata.attrs["num_grad_evals"],
    }
    return draws.to(prior.dtype), stats, attrs


def _inference_data(
    density: ModelDensity,
    draws: Tensor,
    stats: dict[str, Tensor],
    attrs: dict[str, Any],
    prior: dict[str, Tensor],
    predictive: dict[str, Tensor],
    num_chains: int,
) -> InferenceData:
    """InferenceData of positions ``(C, S, dim)``, with the prior and the data."""
    c, s = draws.shape[:2]
    values, pointwise, lp = _evaluate(density, draws.reshape(c * s, -1))

    def grouped(x: Tensor, chains: int) -> Tensor:
        return x.reshape(chains, -1, *x.shape[1:])

    attrs |= {
        "inference_library": "pyro_flowebm",
        "inference_library_version": __version__,
        "num_chains": c,
        "num_samples": s,
    }
    return to_inference_data(
        {k: grouped(v, c) for k, v in values.items()},
        {"lp": grouped(lp, c)} | stats,
        attrs=attrs,
        log_likelihood={k: grouped(v, c) for k, v in pointwise.items()},
        prior={k: grouped(v, num_chains) for k, v in prior.items()},
        prior_predictive={k: grouped(v, num_chains) for k, v in predictive.items()},
        observed_data=density.observed,
    )


def _evaluate(
    density: ModelDensity, position: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Site values, pointwise log likelihoods and the log joint at positions ``(n, dim)``,
    a batch of positions per run of the model."""
    values: dict[str, list[Tensor]] = {}
    pointwise: dict[str, list[Tensor]] = {}
    lp = []
    for batch in position.split(_BATCH):
        v, p = density.evaluate(batch)
        with torch.no_grad():
            lp.append(-density.potential(batch))
        for out, new in ((values, v), (pointwise, p)):
            for name, value in new.items():
                out.setdefault(name, []).append(value)
    cat = {name: torch.cat(parts) for name, parts in values.items()}
    return cat, {name: torch.cat(parts) for name, parts in pointwise.items()}, torch.cat(lp)


def posterior_data(
    model: Callable[..., Any],
    samples: Mapping[str, Tensor],
    model_args: Sequence[Any] = (),
    model_kwargs: Mapping[str, Any] | None = None,
) -> InferenceData:
    """The InferenceData of :func:`sample_posterior` from draws of another sampler, e.g.
    Pyro's ``MCMC(NUTS(poutine.reparam(model, {"x": FlowEBMReparam()})))``:
    ``mcmc.get_samples(group_by_chain=True)``.

    Unlike ``az.from_pyro`` on the reparameterized model, a FlowEBM site ``x`` comes out in
    the posterior (beside ``x_latent``), not in ``observed_data``, and ``log_likelihood``
    has one entry per observation of every observed site. There is no prior group (no
    prior draws were made) and no evidence.

    Args:
        model: the model as written (not reparameterized).
        samples: every latent site of the reparameterized model (``x_latent`` for a FlowEBM
            site ``x``), ``(chain, draw, *shape)``.
        model_args: the model's positional arguments.
        model_kwargs: its keyword arguments.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> idata = posterior_data(model, {"mu": torch.zeros(2, 5)}, (torch.tensor(1.0),))
        >>> idata.log_likelihood["y"].shape
        (2, 5)
    """
    density = ModelDensity(model, model_args, model_kwargs)
    missing = [site.name for site in density.sites if site.name not in samples]
    if missing:
        raise ValueError(
            f"expected draws of every latent site {[s.name for s in density.sites]}, got "
            f"{sorted(samples)}: missing {missing}"
        )
    first = samples[density.sites[0].name]
    c, s = first.shape[:2]
    flat = {site.name: samples[site.name].reshape(c * s, *site.shape) for site in density.sites}
    draws = density.pack(flat).reshape(c, s, -1)
    attrs = {"method": "external", "log_evidence": math.nan, "log_evidence_stderr": math.nan}
    return _inference_data(density, draws, {}, attrs, {}, {}, c)
