"""Named samplers for a FlowEBM: the presets of ``pyro-flowebm sample`` and of run evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..core import check_choice, seeded
from ..distributions import FlowEBM
from .chains import check_counts, run_chains
from .cycle import Cycle
from .hmc import HMC
from .independence import IndependenceMH
from .kernel import Kernel
from .nuts import latent_nuts

if TYPE_CHECKING:
    from arviz import InferenceData

__all__ = ["SAMPLERS", "preset_kernel", "sample_ebm"]

# The vectorized presets: the kernel each stands for.
_KERNELS: dict[str, Callable[[bool], Kernel]] = {
    "hmc-imh": lambda compile: Cycle(
        [HMC(step_size=0.1, num_steps=5, compile=compile), IndependenceMH(compile=compile)],
        [4, 1],
    ),
    "hmc": lambda compile: HMC(step_size=0.1, num_steps=10, compile=compile),
    "chees": lambda compile: HMC(step_size=0.1, chees=True, compile=compile),
    # The data-space baseline's.
    "data-hmc": lambda compile: HMC(step_size=0.05, num_steps=10, compile=compile),
}
SAMPLERS = ("hmc-imh", "hmc", "chees", "nuts", "data-hmc")


def preset_kernel(sampler: str, *, compile: bool = False) -> Kernel:
    """A fresh kernel of a vectorized preset (``"hmc-imh"``, ``"hmc"``, ``"chees"``, or
    ``"data-hmc"``, the data-space baseline's); with ``compile``, its gradients run
    through ``torch.compile``.

    Example:
        >>> preset_kernel("hmc-imh").settings()["repeats"]
        [4, 1]
    """
    check_choice("sampler", sampler, _KERNELS)
    return _KERNELS[sampler](bool(compile))


def sample_ebm(
    ebm: FlowEBM,
    sampler: str = "hmc-imh",
    num_chains: int = 256,
    num_samples: int = 200,
    warmup_steps: int = 200,
    *,
    thin: int = 1,
    seed: int | None = 0,
    progress_bar: bool = True,
    compile: bool = False,
) -> InferenceData:
    r"""Sample a FlowEBM with one of the named sampler presets, in latent space but one.

    - ``"hmc-imh"``: a :class:`~pyro_flowebm.infer.Cycle` of four
      :class:`~pyro_flowebm.infer.HMC` iterations (5 leapfrog steps, adapted step size)
      and one :class:`~pyro_flowebm.infer.IndependenceMH` move: local moves within a
      mode, exact jumps between modes wherever the backbone puts mass. More independence
      moves a cycle mix mode weights faster where the backbone covers the modes but
      converge slower where it does not (measured in ``docs/samplers.md``).
    - ``"hmc"``: HMC with 10 leapfrog steps and an adapted step size.
    - ``"chees"``: HMC with its trajectory length adapted by ChEES.
    - ``"nuts"``: Pyro's NUTS (:func:`~pyro_flowebm.latent_nuts`), one chain at a time.
    - ``"data-hmc"``: the baseline, HMC in data space on
      :meth:`~pyro_flowebm.FlowEBM.data_potential` (10 leapfrog steps, adapted step size),
      each chain started at the point :math:`g(z)` where the latent presets start with the
      same ``seed``.

    With ``compile=True`` the vectorized presets evaluate the potential's gradients
    through ``torch.compile`` (:class:`~pyro_flowebm.infer.HMC`'s ``compile``): the same
    chains up to float rounding, several times faster per step once compiled. The compile
    takes seconds to tens of seconds, so it pays on long runs (``docs/benchmarks.md``);
    ``"nuts"`` has no compiled form.

    Returns:
        ``arviz.InferenceData`` with posterior ``x``, and ``z`` for the latent presets
        (see :func:`~pyro_flowebm.infer.run_chains`); the preset's name is in the attrs
        (``preset``).

    Example:
        >>> from pyro_flowebm import flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> idata = sample_ebm(ebm, "hmc", 8, 10, 10, progress_bar=False)
        >>> idata.posterior["x"].shape, idata.posterior.attrs["preset"]
        ((8, 10, 2), 'hmc')
    """
    if not isinstance(ebm, FlowEBM):
        raise TypeError(f"expected a FlowEBM, got {type(ebm).__name__}")
    check_choice("sampler", sampler, SAMPLERS)
    # Here as well as in run_chains: the data-space preset draws its starting points
    # before run_chains sees num_chains.
    check_counts(num_chains, num_samples, warmup_steps, thin, seed)
    if sampler == "nuts":
        if compile:
            raise ValueError("expected compile=False with the nuts sampler, got True")
        if thin != 1:
            raise ValueError(f"expected thin=1 with the nuts sampler, got {thin}")
        idata = latent_nuts(
            ebm, num_samples, warmup_steps, num_chains, seed=seed, progress_bar=progress_bar
        )
    elif sampler == "data-hmc":
        with seeded(seed, ebm.base_dist.mean.device):
            start = ebm.base_dist.sample((num_chains,))  # run_chains' latent start
        with torch.no_grad():
            start = ebm.transform(start)
            # run_chains checks a potential function, but data_potential's -log q term
            # carries a gradient even where the energy's is missing.
            ebm.check_energy(start.reshape(-1, *ebm.event_shape))
        kernel = preset_kernel(sampler, compile=compile)
        idata = run_chains(
            ebm.data_potential, kernel, num_chains, num_samples, warmup_steps,
            init=start, thin=thin, seed=seed, progress_bar=progress_bar,
        )  # fmt: skip
    else:
        kernel = preset_kernel(sampler, compile=compile)
        idata = run_chains(
            ebm, kernel, num_chains, num_samples, warmup_steps,
            thin=thin, seed=seed, progress_bar=progress_bar,
        )  # fmt: skip
    for group in ("posterior", "sample_stats"):
        if group in idata.groups():
            idata[group].attrs["preset"] = sampler
    return idata
