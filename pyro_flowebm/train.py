"""Fitting the flow backbone by maximum likelihood."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import TransformedDistribution
from tqdm.auto import tqdm

__all__ = ["fit_backbone"]


def _check_data(data: Tensor, event_shape: torch.Size) -> None:
    n = len(event_shape)
    if data.dim() != n + 1 or data.shape[1:] != event_shape:
        raise ValueError(
            f"expected data of shape (n, {', '.join(map(str, event_shape))}), "
            f"got {tuple(data.shape)}"
        )
    if data.shape[0] < 1:
        raise ValueError("expected at least one data point, got none")
    if not torch.isfinite(data).all():
        raise ValueError(
            f"expected finite data, got {int((~torch.isfinite(data)).sum())} non-finite entries"
        )


def fit_backbone(
    backbone: TransformedDistribution,
    data: Tensor,
    steps: int = 2000,
    *,
    batch_size: int = 256,
    lr: float = 1e-3,
    progress_bar: bool = True,
) -> list[float]:
    r"""Fit a flow backbone to data by maximum likelihood.

    Minimizes :math:`-\frac1B \sum_i \log q(x_i)` over minibatches with Adam and a cosine
    learning-rate decay to zero over ``steps``. The transforms' parameters are updated in
    place. Minibatches are drawn with torch's generator: seed it for reproducible fits
    (``pyro.set_rng_seed``).

    Args:
        backbone: the flow, e.g. from :func:`~pyro_flowebm.flow_backbone`.
        data: points of shape ``(n, *event_shape)``; moved to the parameters' dtype and
            device.
        steps: number of optimizer steps.
        batch_size: minibatch size (capped at ``n``).
        lr: Adam's initial learning rate.
        progress_bar: show a tqdm bar with the running loss.

    Returns:
        The minibatch negative log-likelihood at each step.

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
    if steps < 1 or batch_size < 1:
        raise ValueError(f"expected steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    data = torch.as_tensor(data, dtype=params[0].dtype, device=params[0].device)
    _check_data(data, backbone.event_shape)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batch_size = min(batch_size, data.shape[0])
    history: list[float] = []
    with tqdm(range(steps), desc="fit backbone", disable=not progress_bar) as bar:
        for step in bar:
            idx = torch.randint(data.shape[0], (batch_size,), device=data.device)
            loss = -backbone.log_prob(data[idx]).mean()
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"the backbone's loss became non-finite at step {step} (lr={lr}); "
                    "lower the learning rate"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(nll=f"{loss.item():.3f}")
    return history
