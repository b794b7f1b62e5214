"""FlowEBM: the exponential tilt of a flow as a Pyro distribution, and its latent-space form."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.transforms import ComposeTransform

from ..core import check_event_shape, check_finite, check_int
from ..core.checks import check_differentiable, check_floating
from .resampling import ImportanceResampler, LatentSampler

__all__ = ["FlowEBM", "LatentFlowEBM"]


def _check_standard_normal(base: torch.distributions.Distribution) -> None:
    inner = base
    while isinstance(inner, torch.distributions.Independent):
        inner = inner.base_dist
    if not (
        isinstance(inner, torch.distributions.Normal)
        and bool((inner.loc == 0).all())
        and bool((inner.scale == 1).all())
        and base.event_shape == inner.batch_shape[len(inner.batch_shape) - len(base.event_shape) :]
    ):
        raise ValueError(
            "expected the backbone's base distribution to be a standard normal N(0, I) over "
            f"the event shape (as built by flow_backbone), got {base}"
        )


class FlowEBM(TorchDistribution):
    r"""An energy-based model as an exponential tilt of a normalizing flow.

    .. math::

        p(x) = q(x)\, e^{-E(x)} / Z, \qquad
        p(z) \propto \mathcal N(z; 0, I)\, e^{-E(g(z))}, \quad x = g(z),

    where :math:`q` is the flow backbone (see :func:`~pyro_flowebm.flow_backbone`) and
    :math:`E` an energy network, lower meaning more probable. In the flow's latent space
    the Jacobian cancels: MCMC sees :math:`U(z) = \tfrac12|z|^2 + E(g(z))`,
    one forward pass of flow and energy, no log-determinant, no inverse.

    ``log_prob`` is **unnormalized**, :math:`\log q(x) - E(x)`, unless an estimate of
    :math:`\log Z` is attached by :meth:`normalized` (from
    :func:`~pyro_flowebm.infer.estimate_log_z`). ``sample()`` draws from :math:`p` with
    ``sampler``: by default importance resampling from the backbone
    (:class:`~pyro_flowebm.distributions.ImportanceResampler`), or annealed SMC
    (:class:`~pyro_flowebm.infer.SMCResampler`) where the importance weights degenerate;
    so ``pyro.infer.Predictive`` on a model with this prior draws from :math:`p`. The
    backbone's own draws are ``ebm.backbone.sample()``. Chains with diagnostics come from
    latent MCMC (:func:`~pyro_flowebm.infer.run_chains`, :func:`~pyro_flowebm.latent_nuts`,
    or NUTS through :class:`~pyro_flowebm.FlowEBMReparam` inside a Pyro model).

    Args:
        backbone: the flow :math:`q(x)`, a
            :class:`~pyro.distributions.TransformedDistribution` whose base is the
            standard normal :math:`\mathcal N(0, I)` (see
            :func:`~pyro_flowebm.flow_backbone`).
        energy: a callable (usually an ``nn.Module``) mapping points of shape
            ``(N, *event_shape)`` to energies of shape ``(N,)`` or ``(N, 1)``.
        validate_args: Pyro's argument and value validation.
        sampler: what ``sample()`` draws with, ``sampler(ebm, n)`` returning ``n`` latent
            draws (a :class:`~pyro_flowebm.distributions.LatentSampler`); default
            :class:`~pyro_flowebm.distributions.ImportanceResampler` ``()``.

    Example:
        >>> from pyro_flowebm import flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> q = flow_backbone(flows.realnvp(2, num_layers=2, hidden=8), event_shape=(2,))
        >>> ebm = FlowEBM(q, MLPEnergy(2, hidden=8))
        >>> x = ebm.sample((3,))  # draws of p, by importance resampling
        >>> ebm.log_prob(x).shape
        torch.Size([3])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        backbone: dist.TransformedDistribution,
        energy: Callable[[Tensor], Tensor],
        validate_args: bool | None = None,
        *,
        sampler: LatentSampler | None = None,
    ) -> None:
        if not isinstance(backbone, torch.distributions.TransformedDistribution):
            raise TypeError(
                "expected backbone to be a pyro.distributions.TransformedDistribution "
                f"(see pyro_flowebm.flow_backbone), got {type(backbone).__name__}"
            )
        if not callable(energy):
            raise TypeError(f"expected a callable energy, got {type(energy).__name__}")
        _check_standard_normal(backbone.base_dist)
        if sampler is not None and not callable(sampler):
            raise TypeError(
                f"expected a sampler callable as sampler(ebm, n), got {type(sampler).__name__}"
            )
        self.backbone = backbone
        self.energy = energy
        self.sampler: LatentSampler = sampler if sampler is not None else ImportanceResampler()
        self.log_z: float | None = None
        self.log_z_stderr: float | None = None
        super().__init__(backbone.batch_shape, backbone.event_shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return self.backbone.support

    @property
    def base_dist(self) -> TorchDistribution:
        """The latent distribution :math:`\\mathcal N(0, I)` of the backbone."""
        return self.backbone.base_dist

    @property
    def transform(self) -> ComposeTransform:
        """The backbone's bijection :math:`g: z \\mapsto x`."""
        return ComposeTransform(self.backbone.transforms)

    def expand(self, batch_shape: torch.Size, _instance: FlowEBM | None = None) -> FlowEBM:
        new = self._get_checked_instance(FlowEBM, _instance)
        batch_shape = torch.Size(batch_shape)
        new.backbone = self.backbone.expand(batch_shape)
        new.energy = self.energy
        new.sampler = self.sampler
        new.log_z, new.log_z_stderr = self.log_z, self.log_z_stderr
        super(FlowEBM, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def energy_of(self, x: Tensor) -> Tensor:
        """:math:`E(x)` for ``x`` of shape ``(..., *event_shape)``; returns shape ``(...)``.

        Leading dimensions are flattened for the energy network and restored. The energy
        must return a tensor of ``x``'s dtype, of shape ``(N,)`` or ``(N, 1)`` for ``N``
        points (checked at every call: dtype and shape are free to read).
        """
        check_event_shape(x, self.event_shape, "x")
        batch_shape = x.shape[: x.dim() - len(self.event_shape)]
        flat = x.reshape(-1, *self.event_shape)
        e = self.energy(flat)
        if not isinstance(e, Tensor):
            raise TypeError(
                f"expected the energy to return a tensor of shape ({flat.shape[0]},), "
                f"got {type(e).__name__}"
            )
        if e.dtype != flat.dtype:
            raise TypeError(
                f"expected the energy to return dtype {flat.dtype} (the points'), got {e.dtype}"
            )
        if e.shape not in ((flat.shape[0],), (flat.shape[0], 1)):
            raise ValueError(
                f"expected the energy to return shape ({flat.shape[0]},) or "
                f"({flat.shape[0]}, 1) for points of shape {tuple(flat.shape)}, "
                f"got {tuple(e.shape)}"
            )
        return e.reshape(batch_shape)

    def check_energy(self, x: Tensor) -> None:
        r"""Check the energy once on points ``x`` ``(N, *event_shape)`` before sampling or
        training: a floating-point tensor of ``x``'s dtype and shape ``(N,)``
        (:meth:`energy_of`'s checks), differentiable in ``x``.

        The gradient of the latent potential :math:`\tfrac12|z|^2 + E(g(z))` misses the
        energy term when the energy's output is not traced back to ``x`` by autograd (a
        ``.detach()``, ``.item()`` or ``torch.no_grad()`` in its forward): samplers would
        move on the backbone alone. An energy constant where finite and without trainable
        parameters is legal. Buffers that a forward in training mode updates (spectral
        norm's power iteration, batch norm's statistics) are restored: the check leaves the
        energy as it found it.

        Raises:
            TypeError: ``x`` is not a floating-point tensor, or the energy returns another
                dtype or no tensor.
            ValueError: a wrong shape, or an energy not differentiable in ``x``.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> q = flow_backbone(flows.realnvp(2, 2, 8), (2,))
            >>> FlowEBM(q, lambda x: x.pow(2).sum(-1)).check_energy(torch.randn(4, 2))
            >>> detached = FlowEBM(q, lambda x: x.pow(2).sum(-1).detach())
            >>> detached.check_energy(torch.randn(4, 2))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: expected the energy to be differentiable in its input, got an output ...
        """
        check_floating("x", x)
        module = self.energy if isinstance(self.energy, nn.Module) else nn.Module()
        saved = [(b, b.clone()) for b in module.buffers()]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            e = self.energy_of(x)
            grad = (
                torch.autograd.grad(e.sum(), x, allow_unused=True)[0] if e.requires_grad else None
            )
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        trainable = any(p.requires_grad for p in module.parameters())
        check_differentiable("the energy", e, grad, trainable)

    def _validate_value(self, value: Tensor) -> None:
        check_event_shape(value, self.event_shape)
        check_finite("values", value)
        self._validate_sample(value)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Log density :math:`\log q(x) - E(x)`, **unnormalized**: it omits :math:`\log Z`,
        unless :meth:`normalized` attached an estimate of it (then :math:`\log q(x) - E(x)
        - \widehat{\log Z}`, with :attr:`log_z_stderr` the estimate's standard error)."""
        if self._validate_args:
            self._validate_value(value)
        log_p = self.backbone.log_prob(value) - self.energy_of(value)
        return log_p if self.log_z is None else log_p - self.log_z

    def normalized(self, log_z: float | Any, stderr: float | None = None) -> FlowEBM:
        r"""This model with an estimate of :math:`\log Z` attached: its ``log_prob`` is then
        normalized, :math:`\log p(x) = \log q(x) - E(x) - \widehat{\log Z}`.

        Args:
            log_z: the estimate, a number or a result of
                :func:`~pyro_flowebm.infer.estimate_log_z` (its ``log_z`` and ``stderr``).
            stderr: the estimate's standard error, for a number (taken from the result
                otherwise).

        Returns:
            A new :class:`FlowEBM` sharing backbone, energy and sampler, with
            :attr:`log_z` and :attr:`log_z_stderr` set; the error of ``log_prob`` from the
            estimate is :attr:`log_z_stderr`, the same for every point.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
            >>> normalized = ebm.normalized(0.5, stderr=0.01)
            >>> x = torch.zeros(1, 2)
            >>> (ebm.log_prob(x) - normalized.log_prob(x)).item(), normalized.log_z_stderr
            (0.5, 0.01)
        """
        if not isinstance(log_z, int | float):
            if stderr is not None:
                raise TypeError("expected stderr only with a number log_z, got both an estimate")
            if not hasattr(log_z, "log_z") or not hasattr(log_z, "stderr"):
                raise TypeError(
                    "expected log_z as a number or an estimate with log_z and stderr "
                    f"(from pyro_flowebm.infer.estimate_log_z), got {type(log_z).__name__}"
                )
            log_z, stderr = log_z.log_z, log_z.stderr
        if not math.isfinite(log_z):
            raise ValueError(f"expected a finite log_z, got {log_z}")
        if stderr is not None and stderr < 0:  # NaN: unknown (SMC with one particle system)
            raise ValueError(f"expected stderr >= 0, got {stderr}")
        new = self.expand(self.batch_shape)
        new.log_z = float(log_z)
        new.log_z_stderr = None if stderr is None else float(stderr)
        return new

    def with_sampler(self, sampler: LatentSampler) -> FlowEBM:
        """This model drawing with ``sampler`` (see the class's ``sampler`` argument).

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.distributions import ImportanceResampler
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
            >>> ebm.with_sampler(ImportanceResampler(particles_per_draw=8)).sampler
            ImportanceResampler(particles_per_draw=8, min_particles=4096)
        """
        if not callable(sampler):
            raise TypeError(
                f"expected a sampler callable as sampler(ebm, n), got {type(sampler).__name__}"
            )
        new = self.expand(self.batch_shape)
        new.sampler = sampler
        return new

    def importance_draws(self, num_particles: int, batch_size: int = 8192) -> tuple[Tensor, Tensor]:
        r"""Latent draws :math:`z_i \sim \mathcal N(0, I)` of the backbone and their
        importance log-weights :math:`-E(g(z_i))` towards this model.

        :math:`Z = \mathbb E_{z \sim \mathcal N(0, I)}[e^{-E(g(z))}]`: the backbone's
        density cancels. A non-finite energy gets log-weight ``-inf`` (weight zero).

        Args:
            num_particles: number of draws :math:`M`.
            batch_size: draws per energy evaluation.

        Returns:
            ``z`` of shape ``(M, *event_shape)`` and log-weights of shape ``(M,)``, detached.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
            >>> z, log_w = ebm.importance_draws(100)
            >>> z.shape, bool((log_w == 0).all())  # E = 0 at initialization
            (torch.Size([100, 2]), True)
        """
        check_int("num_particles", num_particles, 1)
        check_int("batch_size", batch_size, 1)
        loc = self.base_dist.mean
        z = torch.randn((num_particles, *self.event_shape), dtype=loc.dtype, device=loc.device)
        log_weights = torch.empty(num_particles, dtype=loc.dtype, device=loc.device)
        with torch.no_grad():
            for start in range(0, num_particles, batch_size):
                batch = z[start : start + batch_size]
                log_weights[start : start + batch_size] = -self.energy_of(self.transform(batch))
        bad = torch.isnan(log_weights) | (log_weights == math.inf)
        return z, log_weights.masked_fill(bad, -math.inf)

    def latent_potential(self, z: Tensor) -> Tensor:
        r"""The potential MCMC sees in latent space, :math:`U(z) = \tfrac12|z|^2 + E(g(z))`.

        No log-determinant: in latent space the Jacobian cancels, and
        :math:`U(z) = -\log p(x) - \log|\det \partial g/\partial z| + \text{const}`
        with :math:`x = g(z)`. Non-finite values are returned as they are (NUTS counts
        them as divergences), not raised.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> q = flow_backbone(flows.realnvp(2, 2, 8), event_shape=(2,))
            >>> ebm = FlowEBM(q, MLPEnergy(2, 8))  # E = 0 at initialization
            >>> ebm.latent_potential(torch.tensor([3.0, 4.0]))
            tensor(12.5000, grad_fn=<AddBackward0>)
        """
        check_event_shape(z, self.event_shape, "z")
        return self._potential_at(z, self.transform(z))

    def _potential_at(self, z: Tensor, x: Tensor) -> Tensor:
        """:math:`U(z)` given :math:`x = g(z)` already computed."""
        half_sq_norm = 0.5 * z.pow(2).reshape(*z.shape[: z.dim() - len(self.event_shape)], -1)
        return half_sq_norm.sum(-1) + self.energy_of(x)

    def data_potential(self, x: Tensor) -> Tensor:
        r"""The potential in data space, :math:`E(x) - \log q(x) = -\log p(x) - \log Z`.

        What a data-space sampler moves on (the baseline latent MCMC is compared with): it
        needs the backbone's inverse and log-determinant at every evaluation. Values are
        not validated: a proposal outside the flow's range gives a non-finite potential for
        the sampler to reject, not an error.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
            >>> x = torch.randn(3, 2)
            >>> torch.allclose(ebm.data_potential(x), -ebm.log_prob(x))
            True
        """
        q = self.backbone
        # The same transforms (and parameters), without the check that raises on a NaN.
        q = type(q)(q.base_dist, q.transforms, validate_args=False)
        return self.energy_of(x) - q.log_prob(x)

    def latent_log_prob(self, z: Tensor) -> Tensor:
        r"""Unnormalized latent log density, :math:`-U(z) = -\tfrac12|z|^2 - E(g(z))`."""
        return -self.latent_potential(z)

    def latent(self) -> LatentFlowEBM:
        """This model as a distribution over the flow's latent variable ``z``."""
        return LatentFlowEBM(self)

    def chain_potential(self, z: Tensor) -> Tensor:
        """:math:`U` summed over the batch shape, for chains ``z`` of shape
        ``(C, *batch_shape, *event_shape)``; returns shape ``(C,)``, what the vectorized
        kernels of :mod:`pyro_flowebm.infer` move on."""
        return self.latent_potential(z).reshape(z.shape[0], -1).sum(-1)

    def sample(
        self,
        sample_shape: torch.Size = torch.Size(),
        mcmc_steps: int = 0,
        kernel: object = None,
    ) -> Tensor:
        r"""Independent draws of :math:`p`, by the model's ``sampler`` (default: importance
        resampling from the backbone, :class:`~pyro_flowebm.distributions.ImportanceResampler`).

        Every element of the batch shape is a draw of its own. The backbone's draws, which
        follow :math:`q`, are ``ebm.backbone.sample()``; ``mcmc_steps`` and ``kernel`` are
        kept only to say that short-run MCMC moved to
        :func:`pyro_flowebm.infer.corrected_sample`.

        Example:
            >>> from pyro_flowebm import flow_backbone, flows
            >>> from pyro_flowebm.nn import MLPEnergy
            >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 8))
            >>> ebm.sample((100,)).shape
            torch.Size([100, 2])
        """
        if mcmc_steps or kernel is not None:
            raise TypeError(
                "FlowEBM.sample(mcmc_steps=k, kernel=...) moved to the inference layer: use "
                "pyro_flowebm.infer.corrected_sample(ebm, sample_shape, mcmc_steps=k, "
                "kernel=...)"
            )
        z = self.latent_sample(sample_shape)
        with torch.no_grad():
            return self.transform(z)

    def latent_sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Latent draws :math:`z` of :math:`p(z)` by the model's ``sampler``, of shape
        ``sample_shape + batch_shape + event_shape``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        num_draws = shape.numel()
        with torch.no_grad():
            z = self.sampler(self, num_draws)
        expected = (num_draws, *self.event_shape)
        if tuple(z.shape) != expected:
            raise ValueError(
                f"expected the sampler to return latent draws of shape {expected}, "
                f"got {tuple(z.shape)}"
            )
        return z.reshape(shape + self.event_shape)


class LatentFlowEBM(TorchDistribution):
    r"""A :class:`FlowEBM` in its flow's latent space: :math:`p(z) \propto
    \mathcal N(z; 0, I)\, e^{-E(g(z))}`.

    ``log_prob`` is unnormalized; ``sample`` draws :math:`p(z)` with the model's sampler,
    as :meth:`FlowEBM.sample` does. This is the site distribution that
    :class:`~pyro_flowebm.FlowEBMReparam` puts in a model.

    Example:
        >>> from pyro_flowebm import flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> q = flow_backbone(flows.realnvp(2, 2, 8), event_shape=(2,))
        >>> latent = FlowEBM(q, MLPEnergy(2, 8)).latent()
        >>> latent.log_prob(latent.sample((3,))).shape
        torch.Size([3])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(self, ebm: FlowEBM, validate_args: bool | None = None) -> None:
        self.ebm = ebm
        # One slot shared with every expanded copy: Pyro's plates expand the site's
        # distribution after FlowEBMReparam drew from it and before log_prob is asked.
        self._pushed: list[tuple[Tensor, Tensor] | None] = [None]
        super().__init__(ebm.batch_shape, ebm.event_shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return self.ebm.base_dist.support

    def expand(
        self, batch_shape: torch.Size, _instance: LatentFlowEBM | None = None
    ) -> LatentFlowEBM:
        new = self._get_checked_instance(LatentFlowEBM, _instance)
        batch_shape = torch.Size(batch_shape)
        new.ebm = self.ebm.expand(batch_shape)
        new._pushed = self._pushed
        super(LatentFlowEBM, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def remember_pushforward(self, z: Tensor, x: Tensor) -> None:
        """Keep :math:`x = g(z)` of the value ``z`` (the same tensor object), so that
        ``log_prob(z)`` skips a second flow pass: what :class:`~pyro_flowebm.FlowEBMReparam`
        does for the value it draws."""
        self._pushed[0] = (z, x)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Unnormalized latent log density :math:`-\tfrac12|z|^2 - E(g(z))`."""
        pushed = self._pushed[0]
        if pushed is not None and pushed[0] is value:
            check_event_shape(value, self.event_shape, "z")
            return -self.ebm._potential_at(value, pushed[1])
        return self.ebm.latent_log_prob(value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.ebm.latent_sample(sample_shape)
