"""A linear layer whose thin products are written elementwise when torch.compile traces it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dense(nn.Linear):
    """``nn.Linear`` whose thin products are broadcasts under ``torch.compile``.

    A product with at most two input features (outer products) or at most two output
    features (a few dot products) does almost no arithmetic; as a matrix multiply it is
    a library call that Inductor does not fuse with the activation next to it. Traced by
    ``torch.compile``, such a layer is written as a broadcast product and a sum, which
    Inductor fuses into its neighbours; run eagerly it stays a matrix multiply, which is
    the faster of the two there (both measured in ``docs/benchmarks.md``). Wider layers are
    matrix multiplies either way. The parameters and the state dict are those of
    ``nn.Linear``.

    Example:
        >>> layer = Dense(2, 4)
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        True
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(x)
        if self.in_features <= 2:
            out = (x.unsqueeze(-1) * self.weight.t()).sum(-2)
        elif self.out_features <= 2:
            out = (x.unsqueeze(-2) * self.weight).sum(-1)
        else:
            return super().forward(x)
        return out if self.bias is None else out + self.bias
