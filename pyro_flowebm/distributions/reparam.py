"""FlowEBMReparam: a Pyro reparameterizer that moves a FlowEBM site into its flow's latent space."""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.reparam.reparam import Reparam
from torch import Tensor
from torch.distributions.transforms import Transform

from .flowebm import FlowEBM

__all__ = ["FlowEBMReparam", "flowebm_of"]


class FlowEBMReparam(Reparam):
    r"""Sample a :class:`~pyro_flowebm.FlowEBM` site ``x`` through its latent variable.

    Under ``poutine.reparam(model, config={"x": FlowEBMReparam()})`` the site
    ``pyro.sample("x", FlowEBM(...))`` becomes a latent site ``x_latent`` with density
    :math:`p(z) \propto \mathcal N(z; 0, I)\, e^{-E(g(z))}` and a deterministic site
    ``x = g(z)``, as Pyro's :class:`~pyro.infer.reparam.TransformReparam` does for a
    transformed distribution. NUTS on the reparameterized model then moves in latent
    space, where the flow has straightened the modes, and likelihood sites that depend
    on ``x`` are unchanged. Plates and ``to_event`` around the site are kept.

    Only latent sites can be reparameterized: an observed FlowEBM site has no latent
    variable to move (its ``log_prob`` needs no reparameterization).

    Example:
        >>> import pyro
        >>> from pyro import poutine
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> def model():
        ...     x = pyro.sample("x", ebm)
        ...     pyro.sample("y", pyro.distributions.Normal(x, 1.0).to_event(1),
        ...                 obs=torch.ones(2))
        >>> reparam = FlowEBMReparam()
        >>> trace = poutine.trace(poutine.reparam(model, {"x": reparam})).get_trace()
        >>> sorted(name for name in trace.nodes if not name.startswith("_"))
        ['x', 'x_latent', 'y']
        >>> samples = {"x_latent": torch.randn(100, 2)}
        >>> reparam.transform_samples(samples)["x"].shape
        torch.Size([100, 2])
    """

    def __init__(self) -> None:
        self._transforms: dict[str, Transform] = {}

    def apply(self, msg: dict) -> dict:
        name = msg["name"]
        if msg["is_observed"]:
            raise NotImplementedError(
                f"FlowEBMReparam moves a latent site to latent space; site '{name}' is "
                "observed: remove it from the reparam config"
            )
        fn, event_dim = self._unwrap(msg["fn"])
        if not isinstance(fn, FlowEBM):
            raise TypeError(
                f"expected site '{name}' to have a FlowEBM distribution, got {type(fn).__name__}"
            )
        transform = fn.transform
        self._transforms[name] = transform
        latent = fn.latent()
        z = pyro.sample(f"{name}_latent", self._wrap(latent, event_dim))
        x = transform(z)
        latent.remember_pushforward(z, x)
        # A pyro.deterministic() site, as in Pyro's own TransformReparam.
        new_fn = dist.Delta(x, event_dim=event_dim).mask(False)
        return {"fn": new_fn, "value": x, "is_observed": True}

    def transform_samples(self, samples: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map latent draws to data space, like NeuTraReparam's ``transform_sample``.

        Args:
            samples: draws keyed by site name, e.g. ``mcmc.get_samples()``; every
                ``{name}_latent`` of a site this reparameterizer has handled is mapped.

        Returns:
            ``{name: g(samples[name + "_latent"])}`` for each such site, computed without
            gradients.

        Raises:
            RuntimeError: if the reparameterized model has not run yet.
            KeyError: if a site's latent draws are missing from ``samples``.
        """
        if not self._transforms:
            raise RuntimeError(
                "FlowEBMReparam has not seen a site yet: run the reparameterized model once "
                "(e.g. through MCMC) before transform_samples"
            )
        out = {}
        with torch.no_grad():
            for name, transform in self._transforms.items():
                key = f"{name}_latent"
                if key not in samples:
                    raise KeyError(
                        f"expected latent draws '{key}' in samples, got keys {sorted(samples)}"
                    )
                out[name] = transform(samples[key])
        return out


def flowebm_of(fn: object) -> FlowEBM | None:
    """The :class:`~pyro_flowebm.FlowEBM` a site's distribution is, through ``to_event``
    (``Independent``) wrappers and ``expand``; ``None`` for any other distribution.

    Example:
        >>> from pyro_flowebm import flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
        >>> flowebm_of(ebm.expand((3,)).to_event(1)) is not None
        True
        >>> flowebm_of(dist.Normal(0.0, 1.0)) is None
        True
    """
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, FlowEBM) else None
