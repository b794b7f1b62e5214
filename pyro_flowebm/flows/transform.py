"""normflows layers as a Pyro bijection x = g(z), for any batch shape, dtype and device."""

from __future__ import annotations

from collections.abc import Sequence

import normflows as nf
import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

__all__ = ["NormflowsTransform"]

# normflows layers that are Markov kernels, not bijections: no inverse, no log-determinant.
_STOCHASTIC_LAYERS = (nf.flows.MetropolisHastings, nf.flows.HamiltonianMonteCarlo)


class NormflowsTransform(TransformModule):
    r"""A stack of normflows layers as a Pyro :class:`~pyro.distributions.TransformModule`.

    The transform is the flow's sampling direction :math:`x = g(z)`: each layer's
    ``forward`` is applied in order, ``.inv`` applies the layers' ``inverse`` in reverse.
    normflows layers accept exactly one batch dimension; this adapter flattens any leading
    sample and batch dimensions to ``(-1, *event_shape)`` and restores them, and returns the
    log-determinant :math:`\log|\det \partial x / \partial z|` in the input's dtype and on
    its device. The log-determinant of the last inverse call (and, with ``cache_size=1``,
    of the last forward call) is kept, so
    :class:`~pyro.distributions.TransformedDistribution` pays one pass per ``log_prob``.

    Args:
        flows: normflows layers in sampling order, or a ``normflows.NormalizingFlow``
            (its ``flows``; its base distribution is ignored).
        event_shape: shape of one point, e.g. ``(2,)`` for 2-D vectors.
        cache_size: Pyro's transform cache size, 0 or 1.

    Raises:
        TypeError: if a layer is not a normflows ``Flow`` or is one of the stochastic
            layers (``MetropolisHastings``, ``HamiltonianMonteCarlo``), which are not
            bijections.

    Example:
        >>> import normflows as nf
        >>> t = NormflowsTransform([nf.flows.AffineConstFlow((2,))], event_shape=(2,))
        >>> z = torch.randn(5, 3, 2)
        >>> t(z).shape, t.log_abs_det_jacobian(z, t(z)).shape
        (torch.Size([5, 3, 2]), torch.Size([5, 3]))
    """

    bijective = True

    def __init__(
        self,
        flows: Sequence[nn.Module] | nf.NormalizingFlow,
        event_shape: Sequence[int],
        cache_size: int = 0,
    ) -> None:
        event_shape = torch.Size(event_shape)
        super().__init__(cache_size=cache_size)
        layers = list(flows.flows) if isinstance(flows, nf.NormalizingFlow) else list(flows)
        if not layers:
            raise ValueError("expected at least one normflows layer, got none")
        for i, layer in enumerate(layers):
            if isinstance(layer, _STOCHASTIC_LAYERS):
                raise TypeError(
                    f"expected bijective normflows layers, got {type(layer).__name__} at "
                    f"position {i}: stochastic layers are Markov kernels with no inverse or "
                    "log-determinant; sample with pyro_flowebm's latent MCMC instead"
                )
            if not isinstance(layer, nf.flows.Flow):
                raise TypeError(
                    f"expected normflows.flows.Flow layers, got {type(layer).__name__} at "
                    f"position {i}"
                )
        self.layers = nn.ModuleList(layers)
        self.event_shape = event_shape
        self._cached_log_det: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def domain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def codomain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def _flat(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        n = len(self.event_shape)
        if value.shape[value.dim() - n :] != self.event_shape or value.dim() < n:
            raise ValueError(
                f"expected a value with event shape {tuple(self.event_shape)}, "
                f"got shape {tuple(value.shape)}"
            )
        batch_shape = value.shape[: value.dim() - n]
        return value.reshape(-1, *self.event_shape), batch_shape

    def _run(
        self, value: Tensor, inverse: bool, with_log_det: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        out, batch_shape = self._flat(value)
        log_det = out.new_zeros(out.shape[0]) if with_log_det else None
        layers = reversed(self.layers) if inverse else self.layers
        for layer in layers:
            out, ld = layer.inverse(out) if inverse else layer(out)
            if with_log_det:
                # normflows builds some log-dets without the input's dtype or device, and
                # some as scalars; bring each to the input's and add out of place.
                ld = torch.as_tensor(ld).to(dtype=value.dtype, device=value.device)
                log_det = log_det + ld.reshape(-1).expand(out.shape[0])
        out = out.reshape(*batch_shape, *self.event_shape)
        return out, log_det.reshape(batch_shape) if with_log_det else None

    def _call(self, z: Tensor) -> Tensor:
        # Only a cached (z, x) pair can come back to log_abs_det_jacobian as the same
        # objects: without Pyro's cache the log-det is not accumulated at all (the latent
        # potential never needs it, and keeping it would break torch.func transforms).
        x, log_det = self._run(z, inverse=False, with_log_det=bool(self._cache_size))
        if self._cache_size:
            self._cached_log_det = (z, x, log_det)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        z, log_det = self._run(x, inverse=True)
        self._cached_log_det = (z, x, -log_det)
        return z

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log|\det \partial x / \partial z|`, shape ``z.shape[:-event_dim]``."""
        cached = self._cached_log_det
        if cached is not None and cached[0] is z and cached[1] is x:
            return cached[2]
        return self._run(z, inverse=False)[1]

    def forward_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(g(z), log|det dg/dz|)`` in one pass, without touching the cache."""
        return self._run(z, inverse=False)

    def with_cache(self, cache_size: int = 1) -> NormflowsTransform:
        if self._cache_size == cache_size:
            return self
        raise NotImplementedError(
            f"construct NormflowsTransform(..., cache_size={cache_size}) instead; "
            "with_cache would copy the module and detach its parameters from the optimizer"
        )

    def __getstate__(self) -> dict:
        # Cached tensors may carry autograd graphs, which neither pickle nor belong in a
        # checkpoint.
        state = super().__getstate__()
        state["_cached_log_det"] = None
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state

    def __hash__(self) -> int:
        return nn.Module.__hash__(self)
