"""A Pyro model as a batched density: the log prior and log likelihood of many chains in one pass.

FlowEBM sites move in their flow's latent space (through
:class:`~pyro_flowebm.FlowEBMReparam`), every other latent site in Pyro's unconstrained
space (``biject_to(support)``, as Pyro's ``initialize_model`` does). All chains are
evaluated in one run of the model inside an outer ``pyro.plate`` over chains, the way
``Predictive(parallel=True)`` vectorizes draws. A plate was chosen over ``torch.func.vmap``
because Pyro's handlers, plates and validation already broadcast through it, and a model
written for Pyro's plates needs no change; what it cannot vectorize (indexing the first
axis, ``x.sum()`` over everything) is caught by :meth:`ModelDensity.check` against Pyro's own
potential chain by chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_validation_enabled, scale_and_mask
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.trace_struct import Trace
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from ..distributions import FlowEBMReparam, flowebm_of

__all__ = ["CHECK_TOLERANCE", "LatentSite", "ModelDensity"]

_CHAINS = "_pyro_flowebm_chains"
# The vectorized density must equal Pyro's per-chain potential to this, relative to 1 + |U|
# (or to 256 rounding errors of the model's dtype, if more: float32 sums in another order).
CHECK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LatentSite:
    """A latent site as the chains see it.

    Attributes:
        name: the site's name in the reparameterized model (``x_latent`` for a FlowEBM
            site ``x``).
        batch_shape: the site's batch shape, without the chains.
        shape: its value's shape (batch and event), without the chains.
        transform: from the unconstrained to the site's own space (the identity for a
            FlowEBM's latent variable).
        unconstrained_shape: the shape the chains move in, without the chains.
        data_name: for a FlowEBM's latent site, the name of its data-space site.
        dtype: its values' dtype (a float32 flow beside float64 sites gets float32).
    """

    name: str
    batch_shape: torch.Size
    shape: torch.Size
    transform: Transform
    unconstrained_shape: torch.Size
    data_name: str | None = None
    dtype: torch.dtype = torch.float32

    @property
    def size(self) -> int:
        """Coordinates of this site in a chain's position."""
        return self.unconstrained_shape.numel()


# Prior draws tried for one run of the model that shows its structure, where the model
# raises at some positions (Pyro's validation of a NaN it computes there).
_TRACE_TRIES = 10


def _call(model: Callable[..., Any], args: tuple, kwargs: dict) -> Trace:
    """One trace of ``model`` at a prior draw where it runs (up to ``_TRACE_TRIES`` draws);
    a model that cannot run on these arguments is a clear error."""
    try:
        with torch.no_grad():
            for attempt in range(_TRACE_TRIES):
                try:
                    return prune_subsample_sites(poutine.trace(model).get_trace(*args, **kwargs))
                except ValueError:
                    if attempt == _TRACE_TRIES - 1:
                        raise
    except TypeError as e:
        raise TypeError(
            f"expected model_args and model_kwargs that the model accepts, got "
            f"{len(args)} positional and {sorted(kwargs)} keyword arguments: {e}"
        ) from e


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic"))


class ModelDensity:
    r"""The posterior density of a Pyro model over a batch of chains.

    A chain's position is one flat vector of all latent sites, each in its unconstrained
    (or, for a FlowEBM, latent) coordinates. :meth:`log_densities` returns, per chain, the
    log prior (with the log-Jacobian of the unconstrained transforms; a FlowEBM's is its
    unnormalized latent density) and the log likelihood (the observed sites).

    Args:
        model: a Pyro model with continuous latent sites.
        model_args: its positional arguments.
        model_kwargs: its keyword arguments.

    Raises:
        TypeError: arguments the model does not take, or a non-callable model.
        ValueError: no latent site, a discrete latent site, or an observed FlowEBM whose
            normalizing constant is unknown.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> density = ModelDensity(model, (torch.zeros(3),))
        >>> prior, likelihood = density.log_densities(torch.zeros(5, 1))
        >>> prior.shape, round(float(likelihood[0]), 4)
        (torch.Size([5]), -2.7568)
    """

    def __init__(
        self,
        model: Callable[..., Any],
        model_args: Sequence[Any] = (),
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"expected a Pyro model (a callable), got {type(model).__name__}")
        if not isinstance(model_args, (tuple, list)):
            raise TypeError(
                f"expected model_args as a tuple, got {type(model_args).__name__}; write "
                "model_args=(y,) for one argument"
            )
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"expected model_kwargs as a dict, got {type(model_kwargs).__name__}")
        self.model, self.args, self.kwargs = model, tuple(model_args), dict(model_kwargs or {})
        flowebm = self._flowebm_sites(_call(model, self.args, self.kwargs))
        self.reparam_model = poutine.reparam(model, {n: FlowEBMReparam() for n in flowebm})
        trace = _call(self.reparam_model, self.args, self.kwargs)
        trace.compute_log_prob()
        self.nesting = max(
            [-f.dim for s in trace.nodes.values() for f in s.get("cond_indep_stack", ())]
            + [len(s["fn"].batch_shape) for s in trace.nodes.values() if s["type"] == "sample"]
            + [0]
        )
        self.sites = [
            self._latent_site(s, flowebm) for s in trace.nodes.values() if self._is_latent(s)
        ]
        samples = [s for s in trace.nodes.values() if s["type"] == "sample"]
        if not self.sites:
            raise ValueError(
                "expected a model with at least one latent sample site, got none: every "
                f"site is observed ({sorted(s['name'] for s in samples)})"
            )
        self.observed = {
            s["name"]: s["value"].detach()
            for s in samples
            if s["is_observed"] and not _is_deterministic(s) and s["name"] not in flowebm
        }
        self.observed_batch = {n: trace.nodes[n]["fn"].batch_shape for n in self.observed}
        self.deterministic = {
            s["name"]: s["value"].shape
            for s in samples
            if s["is_observed"] and (_is_deterministic(s) or s["name"] in flowebm)
        }
        self.dim = sum(site.size for site in self.sites)
        self.num_nonfinite = 0
        self.last_error: Exception | None = None
        self._pyro_potential: Callable[[dict[str, Tensor]], Tensor] | None = None

    @staticmethod
    def _flowebm_sites(trace: Trace) -> list[str]:
        names = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or flowebm_of(site["fn"]) is None:
                continue
            if site["is_observed"]:
                if flowebm_of(site["fn"]).log_z is None:
                    raise ValueError(
                        f"expected FlowEBM sites to be latent, got site '{name}' observed: an "
                        "observed FlowEBM's log_prob is unnormalized, so the posterior and "
                        "the evidence would be wrong; observe ebm.normalized(estimate_log_z("
                        "ebm, n)) instead"
                    )
                continue
            names.append(name)
        return names

    @staticmethod
    def _is_latent(site: dict) -> bool:
        if site["type"] != "sample" or site["is_observed"]:
            return False
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"expected continuous latent sites, got site '{site['name']}' with discrete "
                f"support ({type(site['fn']).__name__}): marginalize it out, or observe it"
            )
        return True

    @staticmethod
    def _latent_site(site: dict, flowebm: list[str]) -> LatentSite:
        name, fn = site["name"], site["fn"]
        transform = biject_to(fn.support)
        value = site["value"].detach()
        data_name = name.removesuffix("_latent") if name.endswith("_latent") else None
        return LatentSite(
            name=name,
            batch_shape=fn.batch_shape,
            shape=value.shape,
            transform=transform,
            unconstrained_shape=transform.inv(value).shape,
            data_name=data_name if data_name in flowebm else None,
            dtype=value.dtype,
        )

    # Positions and site values.

    def unpack(self, position: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Site values of chains ``(C, dim)``, shaped for the chain plate, and the
        log-Jacobian of the unconstrained transforms per chain ``(C,)``."""
        c = position.shape[0]
        values, log_det, start = {}, position.new_zeros(c), 0
        for site in self.sites:
            u = position[:, start : start + site.size].reshape(c, *site.unconstrained_shape)
            u = u.to(site.dtype)
            start += site.size
            x = site.transform(u)
            log_det = log_det + site.transform.log_abs_det_jacobian(u, x).reshape(c, -1).sum(-1)
            pad = (1,) * (self.nesting - len(site.batch_shape))
            values[site.name] = x.reshape(c, *pad, *site.shape)
        return values, log_det

    def pack(self, values: Mapping[str, Tensor]) -> Tensor:
        """Chains ``(C, dim)`` from site values in the sites' own spaces, ``(C, *shape)``."""
        parts = []
        for site in self.sites:
            x = values[site.name]
            c = x.shape[0]
            parts.append(site.transform.inv(x.reshape(c, *site.shape)).reshape(c, -1))
        return torch.cat(parts, -1)

    def trace(self, num_chains: int, values: Mapping[str, Tensor] | None = None) -> Trace:
        """A trace of the reparameterized model inside the chain plate: conditioned on
        ``values`` (from :meth:`unpack`), or with every site drawn, the observed ones too
        (prior and prior predictive)."""

        return poutine.trace(self._plated(num_chains, values)).get_trace(*self.args, **self.kwargs)

    def _plated(self, num_chains: int, values: Mapping[str, Tensor] | None) -> Callable[..., Any]:
        def plated(*args: Any, **kwargs: Any) -> Any:
            with pyro.plate(_CHAINS, num_chains, dim=-self.nesting - 1):
                return self.reparam_model(*args, **kwargs)

        if values is None:
            return _Uncondition(set(self.observed))(plated)
        return poutine.condition(plated, dict(values))

    def _site_log_prob(self, site: dict, num_chains: int) -> Tensor:
        """A site's log density with its scale and mask, shaped ``(C, *batch_shape)``."""
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
        site["log_prob"] = lp
        pyro.util.check_site_shape(site, self.nesting + 1)
        if not isinstance(lp, Tensor):  # a constant, e.g. a masked site
            lp = torch.as_tensor(lp)
        lp = lp.reshape((1,) * (self.nesting + 1 - lp.dim()) + tuple(lp.shape))
        return lp.expand(num_chains, *lp.shape[1:])

    def site_log_probs(self, position: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Each latent and observed site's log density per chain ``(C,)``, from one run of
        the model over all chains, and the log-Jacobian ``(C,)``."""
        per_site, log_det, _ = self._run(position, check_values=False)
        return per_site, log_det

    def _run(
        self, position: Tensor, check_values: bool
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """:meth:`site_log_probs`; with ``check_values``, the model runs without Pyro's
        validation (which would raise for the whole batch) and each chain is validated on
        its own afterwards: ``(C,)``, true where every distribution's arguments and every
        sampled value satisfy their constraints, as Pyro's validation requires."""
        c = position.shape[0]
        values, log_det = self.unpack(position)
        if check_values:
            with pyro.validation_enabled(False):
                trace = self.trace(c, values)
        else:
            trace = self.trace(c, values)
        wanted = {site.name for site in self.sites} | set(self.observed)
        out = {}
        for name, site in trace.nodes.items():
            if name in wanted:
                out[name] = self._site_log_prob(site, c).reshape(c, -1).sum(-1)
        valid = _valid_chains(trace, wanted, c, self.nesting) if check_values else None
        return out, log_det, valid

    def log_densities(self, position: Tensor) -> tuple[Tensor, Tensor]:
        r"""Log prior and log likelihood per chain, ``(C,)`` each, for positions ``(C, dim)``.

        The log prior includes the log-Jacobian of the unconstrained transforms, so
        :math:`-(\text{prior} + \text{likelihood})` is the potential the chains move on. A
        chain where the model returns NaN, or where Pyro's validation (when enabled) would
        refuse a distribution's arguments or a value, gets :math:`-\infty` (a rejected
        proposal) and is counted in ``num_nonfinite``; the other chains are untouched. The
        batch runs once without validation and each chain is validated afterwards; a
        batch where the model itself raises a ``ValueError`` is run half by half, so the
        few chains that fail are found in a logarithmic number of runs (the error is kept
        in ``last_error``).
        """
        try:
            per_site, log_det, valid = self._run(position, is_validation_enabled())
        except ValueError as e:
            self.last_error = e
            n = position.shape[0]
            if n == 1:
                self.num_nonfinite += 1
                # -inf with a zero gradient, so that a batch of failures still backpropagates.
                rejected = torch.where(
                    torch.ones_like(position[:, 0], dtype=torch.bool), -math.inf, position[:, 0]
                )
                return rejected, rejected
            halves = [self.log_densities(h) for h in (position[: n // 2], position[n // 2 :])]
            return torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])
        prior = log_det + sum(per_site[s.name] for s in self.sites)
        likelihood = sum((per_site[n] for n in self.observed), position.new_zeros(len(log_det)))
        if valid is not None and not bool(valid.all()):
            self.num_nonfinite += int((~valid).sum())
            prior = torch.where(valid, prior, -math.inf)
            likelihood = torch.where(valid, likelihood, -math.inf)
        return self._guard(prior), self._guard(likelihood)

    def _guard(self, log_density: Tensor) -> Tensor:
        bad = torch.isnan(log_density)
        if bool(bad.any()):
            self.num_nonfinite += int(bad.sum())
            log_density = torch.where(bad, -math.inf, log_density)
        return log_density

    # What the samplers call.

    def potential(self, position: Tensor) -> Tensor:
        """:math:`U = -\\log p(\\theta, y)` per chain, ``(C,)``: what the kernels move on."""
        prior, likelihood = self.log_densities(position)
        return -(prior + likelihood)

    def split_potential(self) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """:math:`U_0 = -\\log` prior and :math:`T = -\\log` likelihood as two functions that
        share one run of the model per position (what likelihood-tempered SMC anneals)."""
        cache: list[Any] = [None, None]

        def both(position: Tensor) -> tuple[Tensor, Tensor]:
            if cache[0] is not position:
                cache[0], cache[1] = position, self.log_densities(position)
            return cache[1]

        return (lambda q: -both(q)[0]), (lambda q: -both(q)[1])

    # Draws and values.

    @torch.no_grad()
    def prior_draws(self, num_draws: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Draws of the prior by running the model forward (a FlowEBM site by its own
        sampler): positions ``(n, dim)``, the latent and deterministic sites' values, and
        the observed sites' prior predictive draws, each ``(n, *shape)``."""
        try:
            # Where a model computes NaN parameters (at some chains), its predictive draws
            # are NaN there rather than Pyro's validation error for all chains.
            with pyro.validation_enabled(False):
                trace = self.trace(num_draws)
        except _SHAPE_ERRORS as e:
            raise self._broadcast_error(num_draws, None, e) from e
        latent = _values(trace, {s.name: s.shape for s in self.sites}, num_draws)
        values = latent | _values(trace, self.deterministic, num_draws)
        shapes = {n: v.shape for n, v in self.observed.items()}
        return self.pack(latent), values, _values(trace, shapes, num_draws)

    @torch.no_grad()
    def evaluate(self, position: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """At positions ``(n, dim)``: every latent and deterministic site's value (FlowEBM
        sites in data space, their latent values too), ``(n, *shape)``, and each observed
        site's log likelihood per observation, ``(n, *batch_shape)``."""
        n = position.shape[0]
        values, _ = self.unpack(position)
        trace = self.trace(n, values)
        out = {s.name: values[s.name].reshape(n, *s.shape) for s in self.sites}
        out |= _values(trace, self.deterministic, n)
        pointwise = {
            name: self._site_log_prob(trace.nodes[name], n).reshape(n, *self.observed_batch[name])
            for name in self.observed
        }
        return out, pointwise

    # The check against Pyro.

    def check(self, position: Tensor) -> None:
        """Compare the vectorized density at a few chains ``(k, dim)`` with Pyro's own
        potential (``initialize_model``), chain by chain.

        Raises:
            ValueError: naming the first site whose vectorized log density differs from
                its value in a run of the model on one chain (or that fails to broadcast
                over chains), with both values.
        """
        with torch.no_grad():
            try:
                vectorized, log_det = self.site_log_probs(position)
            except _SHAPE_ERRORS as e:
                raise self._broadcast_error(len(position), self.unpack(position)[0], e) from e
            for i in range(position.shape[0]):
                single, expected = self._one_chain(position[i])
                for name, value in single.items():
                    if not _close(float(vectorized[name][i]), float(value), position.dtype):
                        raise ValueError(
                            f"the model does not broadcast over chains at site '{name}': run "
                            f"for all chains at once its log density at chain {i} is "
                            f"{float(vectorized[name][i]):.6g}, run alone {float(value):.6g}. "
                            + _FIX
                        )
                total = log_det[i] + sum(v[i] for v in vectorized.values())
                if not _close(float(total), expected, position.dtype):
                    raise ValueError(
                        f"expected the vectorized log density to equal Pyro's potential, got "
                        f"{float(total):.9g} against {expected:.9g} at chain {i}"
                    )

    def _one_chain(self, position: Tensor) -> tuple[dict[str, float], float]:
        """Per-site log densities of one chain from an unbatched run of the model, and
        minus Pyro's potential there."""
        values, _ = self.unpack(position[None])
        values = {s.name: values[s.name].reshape(s.shape) for s in self.sites}
        trace = poutine.trace(poutine.condition(self.reparam_model, values)).get_trace(
            *self.args, **self.kwargs
        )
        wanted = {site.name for site in self.sites} | set(self.observed)
        trace.compute_log_prob(lambda name, site: name in wanted)
        per_site = {n: float(trace.nodes[n]["log_prob_sum"]) for n in wanted}
        params = {
            s.name: s.transform.inv(v) for s, v in zip(self.sites, values.values(), strict=True)
        }
        return per_site, -float(self._pyro(params)(params))

    def _pyro(self, params: dict[str, Tensor]) -> Callable[[dict[str, Tensor]], Tensor]:
        if self._pyro_potential is None:
            _, self._pyro_potential, _, _ = initialize_model(
                self.reparam_model, self.args, self.kwargs, initial_params=params
            )
        return self._pyro_potential

    def _broadcast_error(
        self, num_chains: int, values: Mapping[str, Tensor] | None, error: Exception
    ) -> ValueError:
        """Name the site where a run over all chains failed: the first site of a one-chain
        run that the failed run did not record."""
        tracer = poutine.trace(self._plated(num_chains, values))
        try:
            tracer.get_trace(*self.args, **self.kwargs)
        except Exception:  # noqa: BLE001 - the same failure again, to see how far it got
            pass
        seen = set(tracer.msngr.trace.nodes)
        order = list(_call(self.reparam_model, self.args, self.kwargs).nodes)
        site = next((n for n in order if n not in seen), order[-1])
        first_line = (str(error).splitlines() or [""])[0]  # not Pyro's table of trace shapes
        return ValueError(
            f"the model does not broadcast over chains at site '{site}': run for "
            f"{num_chains} chains at once it raised {type(error).__name__}: {first_line}. " + _FIX
        )


def _valid_chains(trace: Trace, names: set[str], num_chains: int, nesting: int) -> Tensor:
    """Per chain ``(C,)``: the sites ``names`` have distribution arguments and values that
    satisfy their constraints (what Pyro's validation checks, chain by chain)."""
    valid = torch.ones(num_chains, dtype=torch.bool)
    for name in names:
        site = trace.nodes[name]
        fn, event = site["fn"], 0
        valid &= _per_chain(fn.support.check(site["value"]), num_chains, nesting, 0)
        while fn is not None:
            try:
                constraints = fn.arg_constraints
            except NotImplementedError:  # a distribution that declares none
                constraints = {}
            for arg, constraint in constraints.items():
                if arg in vars(fn):  # lazily computed arguments are not validated either
                    ok = constraint.check(vars(fn)[arg])
                    valid &= _per_chain(ok, num_chains, nesting, event)
            event += getattr(fn, "reinterpreted_batch_ndims", 0)
            fn = getattr(fn, "base_dist", None)
    return valid


def _per_chain(ok: Tensor, num_chains: int, nesting: int, event: int) -> Tensor:
    """A constraint's check over a site's batch, ``event`` dims of it reinterpreted, reduced
    to ``(C,)`` along the chain dimension (at ``-(nesting + 1)`` of the site's batch)."""
    ok = torch.as_tensor(ok, dtype=torch.bool)
    axis = ok.dim() - event - (nesting + 1)
    if axis < 0 or ok.shape[axis] == 1:  # the same for every chain
        return ok.all().expand(num_chains)
    return ok.movedim(axis, 0).reshape(num_chains, -1).all(-1)


class _Uncondition(UnconditionMessenger):
    """``poutine.uncondition`` of the observed sites ``names`` only: deterministic sites
    (and a FlowEBM's data site) keep the value computed from the latent ones."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.names:
            super()._pyro_sample(msg)


# What a model that does not broadcast over chains raises.
_SHAPE_ERRORS = (ValueError, RuntimeError, IndexError)
_FIX = (
    "Write the model so that every tensor may carry extra batch dimensions on the left: "
    "index with x[..., i] rather than x[i], reduce with sum(-1), and put repeated "
    "observations in a pyro.plate."
)


def _values(trace: Trace, shapes: Mapping[str, torch.Size], n: int) -> dict[str, Tensor]:
    """The values of the sites ``shapes`` in a trace over ``n`` chains, ``(n, *shape)``."""
    out = {}
    for name, shape in shapes.items():
        value = trace.nodes[name]["value"]
        if value.numel() == shape.numel():  # the same for every chain
            value = value.expand(n, *value.shape)
        if value.numel() != n * shape.numel():
            raise ValueError(
                f"the model does not broadcast over chains at site '{name}': run for {n} "
                f"chains at once its value has shape {tuple(value.shape)}, expected {n} "
                f"values of shape {tuple(shape)}. " + _FIX
            )
        out[name] = value.reshape(n, *shape)
    return out


def _close(a: float, b: float, dtype: torch.dtype) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    tolerance = max(CHECK_TOLERANCE, 256 * torch.finfo(dtype).eps)
    return abs(a - b) <= tolerance * (1 + abs(b))
