"""The flow backbone q(x): a standard normal pushed through a transform, and its fit to data."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import TransformedDistribution
from tqdm.auto import tqdm

from ..core import (
    all_chains,
    check_int,
    check_points,
    check_positive,
    data_parallel,
    local_rows,
    process_rank,
    sharding,
)
from ..datasets import check_levels
from ..datasets import dequantize as dequantize_images

__all__ = ["fit_backbone", "flow_backbone"]


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
        >>> from pyro_flowebm.flows import realnvp
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


def fit_backbone(
    backbone: TransformedDistribution,
    data: Tensor,
    steps: int = 1000,
    *,
    batch_size: int = 256,
    lr: float = 5e-3,
    dequantize: int | None = None,
    progress_bar: bool = True,
) -> list[float]:
    r"""Fit a flow backbone to data by maximum likelihood.

    Minimizes :math:`-\frac1B \sum_i \log q(x_i)` over minibatches with Adam and a cosine
    learning-rate decay to zero over ``steps``. The transforms' parameters are updated in
    place. Minibatches are drawn with torch's generator: seed it for reproducible fits
    (``pyro.set_rng_seed``). In a ``torch.distributed`` run each process takes its block of
    every batch (the number of processes must divide ``batch_size``), the gradients are
    averaged by ``DistributedDataParallel`` and the losses returned are every process's mean
    (``docs/scaling.md``).

    Args:
        backbone: the flow, e.g. from :func:`~pyro_flowebm.flow_backbone`.
        data: points of shape ``(n, *event_shape)``; moved to the parameters' dtype and
            device.
        steps: number of optimizer steps.
        batch_size: minibatch size (capped at ``n``).
        lr: Adam's initial learning rate.
        dequantize: for quantized data (images stored as level / ``dequantize``, see
            :class:`~pyro_flowebm.datasets.ImageSet`), the number of levels: each
            minibatch gets fresh uniform noise of one level's width
            (:func:`~pyro_flowebm.datasets.dequantize`), so the flow fits a density, not
            spikes on the lattice. ``None`` for continuous data.
        progress_bar: show a tqdm bar with the running loss.

    Returns:
        The minibatch negative log-likelihood at each step (per point, in nats, of the
        dequantized data when ``dequantize`` is set).

    Raises:
        ValueError: for data of the wrong shape or with non-finite entries, or a backbone
            without trainable parameters.
        RuntimeError: if the loss becomes non-finite (lower ``lr``).

    Example:
        >>> from pyro_flowebm import flow_backbone, flows
        >>> q = flow_backbone(flows.realnvp(2, num_layers=2, hidden=8), event_shape=(2,))
        >>> data = torch.randn(500, 2) * 0.5 + 3.0
        >>> losses = fit_backbone(q, data, steps=200, lr=1e-2, progress_bar=False)
        >>> losses[-1] < losses[0]
        True
    """
    params = [p for t in backbone.transforms if isinstance(t, nn.Module) for p in t.parameters()]
    if not params:
        raise ValueError("expected a backbone with trainable transform parameters, got none")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_positive("lr", lr)
    check_levels(dequantize)
    data = torch.as_tensor(data, dtype=params[0].dtype, device=params[0].device)
    check_points("data", data, backbone.event_shape)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batch_size = min(batch_size, data.shape[0])
    history: list[float] = []
    bar = tqdm(range(steps), desc="fit backbone", disable=not progress_bar or process_rank()[0])
    # In a torch.distributed run every process draws the whole batch (the generators stay
    # in step) and takes its block; the gradients are averaged across processes.
    with bar, sharding(batch_size, "a batch size") as shard:
        objective = None
        for step in bar:
            batch = data[torch.randint(data.shape[0], (batch_size,), device=data.device)]
            if dequantize is not None:
                batch = dequantize_images(batch, dequantize)
            if objective is None:
                objective = _first_objective(backbone, batch, shard is not None)
            loss = objective(local_rows(batch))
            # Every process's loss: they all stop together.
            mean_loss = all_chains(loss.detach()[None]).mean()
            if not torch.isfinite(mean_loss):
                raise RuntimeError(
                    f"the backbone's loss became non-finite at step {step} (lr={lr}); "
                    "lower the learning rate"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(mean_loss.item())
            if step % 50 == 0:
                bar.set_postfix(nll=f"{history[-1]:.3f}")
    return history


class _NegativeLogLikelihood(nn.Module):
    """The backbone's mean negative log-likelihood as a module of its transforms, for
    ``DistributedDataParallel``."""

    def __init__(self, backbone: TransformedDistribution) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(t for t in backbone.transforms if isinstance(t, nn.Module))
        self.backbone = backbone

    def forward(self, batch: Tensor) -> Tensor:
        return -self.backbone.log_prob(batch).mean()


def _first_objective(backbone: TransformedDistribution, batch: Tensor, sharded: bool) -> nn.Module:
    """The loss module, made at the first batch: in a ``torch.distributed`` run, the
    layers that initialize themselves from the first batch they see (ActNorm) see the whole
    batch in every process, as in one process, before the module is wrapped."""
    if sharded:
        with torch.no_grad():
            backbone.log_prob(batch)
    return data_parallel(_NegativeLogLikelihood(backbone))
