"""A multiscale Glow-style image flow from normflows layers, with a logit pre-transform."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import normflows as nf
import torch
from torch import Tensor, nn

from ..core import check_int
from .transform import NormflowsTransform

__all__ = ["glow"]


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
    steps_per_level: int = 4,
    hidden: int = 64,
    *,
    logit_alpha: float | None = 0.05,
    num_steps: int | None = None,
) -> NormflowsTransform:
    r"""A multiscale Glow-style flow for images of shape ``(C, H, W)`` (Kingma & Dhariwal, 2018).

    ``num_levels`` scales; at each, a squeeze (space to channels), ``steps_per_level`` steps of
    ActNorm, an invertible 1x1 convolution (LU-parametrized) and an affine coupling with a
    ConvNet conditioner, then half of the channels is factored out (split) and the rest
    goes on to the next scale (multiscale architecture of RealNVP, Dinh et al., 2017).
    All layers are normflows layers. The latent ``z`` has the image's shape; each factored
    part is standard normal.

    With ``logit_alpha`` set, the last layer (sampling direction) is normflows' ``Logit``:
    :math:`x = (\sigma(y) - \alpha)/(1 - 2\alpha)`, so the backbone is a density over
    pixel intensities in :math:`[0, 1]` (slightly beyond), the scale of dequantized images
    (see :func:`~pyro_flowebm.evaluate.bits_per_dim`), with its log-determinant
    accounted. ActNorm layers initialize themselves from the first batch they see (Glow's
    data-dependent initialization): fit the backbone before drawing from it.

    Args:
        event_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**num_levels``.
        num_levels: number of scales.
        steps_per_level: steps per scale.
        hidden: channels of the conditioners' hidden layers.
        logit_alpha: :math:`\alpha` of the logit pre-transform, or ``None`` for none
            (then the flow acts on the real line).
        num_steps: deprecated name of ``steps_per_level`` (a leapfrog step is not a Glow
            step).

    Example:
        >>> t = glow((1, 8, 8), num_levels=2, steps_per_level=2, hidden=8)
        >>> x = torch.rand(5, 1, 8, 8)
        >>> z = t.inv(x)
        >>> z.shape, torch.allclose(t(z), x, atol=1e-4)
        (torch.Size([5, 1, 8, 8]), True)

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions.
        arXiv:1807.03039. Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP.
        arXiv:1605.08803.
    """
    if num_steps is not None:
        warnings.warn(
            "glow(num_steps=) is deprecated: use steps_per_level=", DeprecationWarning, stacklevel=2
        )
        steps_per_level = num_steps
    event_shape = torch.Size(event_shape)
    if len(event_shape) != 3 or min(event_shape) < 1:
        raise ValueError(f"expected event_shape (C, H, W), got {tuple(event_shape)}")
    check_int("num_levels", num_levels, 1)
    check_int("steps_per_level", steps_per_level, 1)
    check_int("hidden", hidden, 1)
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
        steps = [layer for _ in range(steps_per_level) for layer in _glow_step(channels, hidden)]
        scale = _Scale(steps, scale)
    layers: list[nn.Module] = [scale]
    if logit_alpha is not None:
        layers.append(nf.transforms.Logit(alpha=logit_alpha))
    return NormflowsTransform(layers, event_shape=event_shape)
