"""normflows layers as a Pyro bijection z -> x, presets for vectors and images, and the backbone."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import normflows as nf
import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

from ._dense import Dense

__all__ = [
    "NormflowsTransform",
    "flow_backbone",
    "glow",
    "neural_spline",
    "realnvp",
]

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


def _coupling_net(d_in: int, d_out: int, hidden: int) -> nn.Module:
    # Smooth activations: HMC integrates gradients of U(z) through the flow, and ReLU kinks
    # make the leapfrog error jump. The last layer starts at zero, so the flow starts as the
    # identity.
    net = nn.Sequential(
        Dense(d_in, hidden),
        nn.Tanh(),
        Dense(hidden, hidden),
        nn.Tanh(),
        Dense(hidden, d_out),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def _check_preset_args(dim: int, num_layers: int, hidden: int) -> None:
    if dim < 2:
        raise ValueError(f"expected dim >= 2 for a coupling flow, got dim={dim}")
    if num_layers < 1:
        raise ValueError(f"expected num_layers >= 1, got {num_layers}")
    if hidden < 1:
        raise ValueError(f"expected hidden >= 1, got {hidden}")


def realnvp(dim: int, num_layers: int = 8, hidden: int = 64) -> NormflowsTransform:
    r"""RealNVP-style affine coupling flow for vectors (Dinh et al., 2017).

    Each layer is a normflows ``AffineCouplingBlock`` (the first half of the coordinates
    sets an exponential scale and a shift of the second half) followed by a swap of the
    halves. The coupling networks are two-hidden-layer tanh MLPs whose last layer starts at
    zero, so every coupling starts as the identity and a new backbone is exactly
    :math:`\mathcal N(0, I)` (the flow itself is a permutation of the coordinates when
    the number of swaps is odd).

    Args:
        dim: dimension of the data, at least 2.
        num_layers: number of coupling layers.
        hidden: width of the coupling networks.

    Example:
        >>> t = realnvp(2, num_layers=4, hidden=16)
        >>> z = torch.randn(10, 2)
        >>> torch.allclose(t.inv(t(z)), z, atol=1e-5)
        True

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. arXiv:1605.08803.
    """
    _check_preset_args(dim, num_layers, hidden)
    d1 = math.ceil(dim / 2)
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        net = _coupling_net(d1, 2 * (dim - d1), hidden)
        layers += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
    return NormflowsTransform(layers, event_shape=(dim,))


def neural_spline(
    dim: int,
    num_layers: int = 4,
    hidden: int = 64,
    *,
    num_bins: int = 8,
    tail_bound: float = 3.0,
) -> NormflowsTransform:
    """Rational-quadratic neural spline coupling flow for vectors (Durkan et al., 2019).

    Each layer is a normflows ``CoupledRationalQuadraticSpline`` (alternating masks, two
    residual blocks of width ``hidden``, linear tails outside ``[-tail_bound, tail_bound]``)
    followed by an ``LULinearPermute`` that mixes the coordinates.

    Args:
        dim: dimension of the data, at least 2.
        num_layers: number of spline coupling layers.
        hidden: width of the residual networks that emit the spline parameters.
        num_bins: number of spline bins.
        tail_bound: the splines act on ``[-tail_bound, tail_bound]``, identity outside.

    Example:
        >>> t = neural_spline(2, num_layers=2, hidden=16)
        >>> z = torch.randn(10, 2)
        >>> torch.allclose(t.inv(t(z)), z, atol=1e-4)
        True

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. arXiv:1906.04032.
    """
    _check_preset_args(dim, num_layers, hidden)
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [
            nf.flows.CoupledRationalQuadraticSpline(
                dim,
                num_blocks=2,
                num_hidden_channels=hidden,
                num_bins=num_bins,
                tail_bound=tail_bound,
                reverse_mask=bool(i % 2),
            ),
            nf.flows.LULinearPermute(dim),
        ]
    return NormflowsTransform(layers, event_shape=(dim,))


class _Scale(nf.flows.Flow):
    """One scale of a multiscale flow, a bijection of ``(N, C, H, W)`` tensors.

    Density direction (``inverse``, x -> z): squeeze to ``(4C, H/2, W/2)``, the steps, then
    the first half of the channels goes on to the next, coarser scale while the second half
    is factored out as latent variables; unsqueeze back to ``(C, H, W)``. ``forward`` (z ->
    x) runs the same in reverse. The unsqueeze keeps the latent and the data the same shape:
    a fixed permutation of a standard normal is a standard normal.
    """

    def __init__(self, steps: Sequence[nf.flows.Flow], inner: _Scale | None) -> None:
        super().__init__()
        self.squeeze = nf.flows.Squeeze()  # normflows' forward unsqueezes (sampling direction)
        self.steps = nn.ModuleList(steps)
        self.inner = inner

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = self.squeeze.inverse(z)
        log_det = y.new_zeros(y.shape[0])
        if self.inner is not None:
            kept, factored = y.chunk(2, dim=1)
            kept, ld = self.inner(kept)
            y, log_det = torch.cat([kept, factored], dim=1), log_det + ld
        for step in self.steps:
            y, ld = step(y)
            log_det = log_det + ld
        x, _ = self.squeeze(y)
        return x, log_det

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = self.squeeze.inverse(x)
        log_det = y.new_zeros(y.shape[0])
        for step in reversed(self.steps):
            y, ld = step.inverse(y)
            log_det = log_det + ld
        if self.inner is not None:
            kept, factored = y.chunk(2, dim=1)
            kept, ld = self.inner.inverse(kept)
            y, log_det = torch.cat([kept, factored], dim=1), log_det + ld
        z, _ = self.squeeze(y)
        return z, log_det


def _conv_net(c_in: int, c_out: int, hidden: int) -> nn.Module:
    # Glow's conditioner (3x3, 1x1, 3x3 convolutions) with SiLU instead of ReLU: HMC moves
    # through the flow, and kinks make the leapfrog error jump. The last convolution starts
    # at zero, so every coupling starts as a fixed scale.
    net = nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.SiLU(),
        nn.Conv2d(hidden, c_out, 3, padding=1),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class _ActNorm(nf.flows.ActNorm):
    """normflows' ActNorm (data-dependent initialization on the first batch), with the
    "initialized yet?" test made once: normflows reads a tensor flag on every call, which
    on a GPU waits for the device each time and breaks ``torch.compile``'s graph."""

    _initialized = False  # a Python flag, set once the buffer says so

    def _once(self, direction: str, z: Tensor) -> tuple[Tensor, Tensor]:
        if self._initialized:
            return getattr(nf.flows.AffineConstFlow, direction)(self, z)
        out = getattr(super(), direction)(z)
        self._initialized = bool(self.data_dep_init_done > 0)
        return out

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._once("forward", z)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._once("inverse", z)


def _glow_step(channels: int, hidden: int) -> list[nf.flows.Flow]:
    """ActNorm, invertible 1x1 convolution, affine coupling (density direction), as the
    layers of normflows' ``GlowBlock`` but with a smooth conditioner."""
    coupling = nf.flows.AffineCouplingBlock(
        _conv_net((channels + 1) // 2, 2 * (channels // 2), hidden),
        scale=True,
        scale_map="sigmoid",
        split_mode="channel",
    )
    with warnings.catch_warnings():
        # normflows factors the 1x1 convolution's initial weight with torch.lu, which torch
        # deprecates; the factors are the same.
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.lu is deprecated")
        mixing = nf.flows.Invertible1x1Conv(channels, use_lu=True)
    return [coupling, mixing, _ActNorm((channels, 1, 1))]


def glow(
    event_shape: Sequence[int],
    num_levels: int = 2,
    num_steps: int = 4,
    hidden: int = 64,
    *,
    logit_alpha: float | None = 0.05,
) -> NormflowsTransform:
    r"""A multiscale Glow-style flow for images of shape ``(C, H, W)`` (Kingma & Dhariwal, 2018).

    ``num_levels`` scales; at each, a squeeze (space to channels), ``num_steps`` steps of
    ActNorm, an invertible 1x1 convolution (LU-parametrized) and an affine coupling with a
    ConvNet conditioner, then half of the channels is factored out (split) and the rest
    goes on to the next scale (multiscale architecture of RealNVP, Dinh et al., 2017).
    All layers are normflows layers. The latent ``z`` has the image's shape; each factored
    part is standard normal.

    With ``logit_alpha`` set, the last layer (sampling direction) is normflows' ``Logit``:
    :math:`x = (\sigma(y) - lpha)/(1 - 2lpha)`, so the backbone is a density over
    pixel intensities in :math:`[0, 1]` (slightly beyond), the scale of dequantized images
    (see :func:`~pyro_flowebm.evaluate.bits_per_dim`), with its log-determinant
    accounted. ActNorm layers initialize themselves from the first batch they see (Glow's
    data-dependent initialization): fit the backbone before drawing from it.

    Args:
        event_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**num_levels``.
        num_levels: number of scales.
        num_steps: steps per scale.
        hidden: channels of the conditioners' hidden layers.
        logit_alpha: :math:`lpha` of the logit pre-transform, or ``None`` for none
            (then the flow acts on the real line).

    Example:
        >>> t = glow((1, 8, 8), num_levels=2, num_steps=2, hidden=8)
        >>> x = torch.rand(5, 1, 8, 8)
        >>> z = t.inv(x)
        >>> z.shape, torch.allclose(t(z), x, atol=1e-4)
        (torch.Size([5, 1, 8, 8]), True)

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
        arXiv:1807.03039. Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP.
        arXiv:1605.08803.
    """
    event_shape = torch.Size(event_shape)
    if len(event_shape) != 3 or min(event_shape) < 1:
        raise ValueError(f"expected event_shape (C, H, W), got {tuple(event_shape)}")
    if num_levels < 1 or num_steps < 1 or hidden < 1:
        raise ValueError(
            "expected num_levels, num_steps and hidden >= 1, "
            f"got {num_levels}, {num_steps}, {hidden}"
        )
    c, h, w = event_shape
    if h % 2**num_levels or w % 2**num_levels:
        raise ValueError(
            f"expected H and W divisible by 2**num_levels = {2**num_levels} (each level "
            f"squeezes by 2), got (H, W) = ({h}, {w}); pad or crop the images, or use fewer "
            "levels"
        )
    if logit_alpha is not None and not 0 < logit_alpha < 0.5:
        raise ValueError(f"expected 0 < logit_alpha < 0.5 or None, got {logit_alpha}")
    scale: _Scale | None = None
    for level in reversed(range(num_levels)):  # from the coarsest scale out
        channels = 4 * c * 2**level
        steps = [layer for _ in range(num_steps) for layer in _glow_step(channels, hidden)]
        scale = _Scale(steps, scale)
    layers: list[nn.Module] = [scale]
    if logit_alpha is not None:
        layers.append(nf.transforms.Logit(alpha=logit_alpha))
    return NormflowsTransform(layers, event_shape=event_shape)


def flow_backbone(
    transform: TransformModule, event_shape: Sequence[int]
) -> dist.TransformedDistribution:
    r"""The flow :math:`q(x)`: a standard normal base pushed through ``transform``.

    :math:`q(x) = \mathcal N(z; 0, I)\,|\det \partial z/\partial x|` with :math:`x = g(z)`.
    The base takes its dtype and device from the transform's parameters: build the backbone
    after moving the transform (``transform.double()``, ``transform.to(device)``).

    Args:
        transform: the bijection z -> x, e.g. :func:`realnvp` or any Pyro transform.
        event_shape: shape of one point.

    Returns:
        A :class:`pyro.distributions.TransformedDistribution` with event shape
        ``event_shape`` and empty batch shape.

    Example:
        >>> q = flow_backbone(realnvp(2, num_layers=2, hidden=8), event_shape=(2,))
        >>> x = q.sample((4,))
        >>> x.shape, q.log_prob(x).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """
    event_shape = torch.Size(event_shape)
    own_shape = getattr(transform, "event_shape", event_shape)
    if own_shape != event_shape:
        raise ValueError(
            f"expected event_shape {tuple(own_shape)} to match the transform's, "
            f"got {tuple(event_shape)}"
        )
    param = next(iter(transform.parameters()), None) if isinstance(transform, nn.Module) else None
    factory = (
        {"dtype": torch.get_default_dtype()}
        if param is None
        else {
            "dtype": param.dtype,
            "device": param.device,
        }
    )
    loc = torch.zeros(event_shape, **factory)
    # The base does not validate its values: a point outside the flow's range (beyond a
    # logit layer's interval) has a NaN latent value, and its NaN log-density is for a
    # sampler to reject, not an error in the middle of a chain.
    normal = dist.Normal(loc, torch.ones_like(loc), validate_args=False)
    base = dist.Independent(normal, len(event_shape), validate_args=False)
    return dist.TransformedDistribution(base, [transform])
