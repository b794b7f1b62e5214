"""The leapfrog (velocity Verlet) step for a batch of chains, eager and for torch.compile.

Pyro's ``pyro.ops.integrator.velocity_verlet`` integrates one potential summed into a
scalar; the Metropolis test here needs each chain's own potential at the end of every
trajectory, which the summed form would recompute with an extra forward pass per
iteration. These steps return the per-chain potential they already computed for the
gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import is_validation_enabled, validation_enabled
from torch import Tensor

from .state import Potential, value_and_grad

__all__ = [
    "COMPILE_OPTIONS",
    "compiled",
    "compiled_value_and_grad",
    "evaluation",
    "functional_leapfrog_step",
    "functional_value_and_grad",
    "leapfrog_step",
]

# Inductor settings for the compiled leapfrog step, local to that one function: Inductor's
# CPU code for tanh calls Sleef's tanh, which is slower than eager's; the decomposition
# 2 / (1 + exp(-2x)) - 1 (Inductor's CPU default before PyTorch 2.7) differs from it by
# float32 rounding in absolute terms; the C++ wrapper launches the step's ~150 kernels
# without Python. What each is worth is measured in docs/benchmarks.md.
COMPILE_OPTIONS = {"cpp.use_decompose_tanh": True, "cpp_wrapper": True}


@functools.cache
def compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(function, options=COMPILE_OPTIONS)``, made once per function.

    Every kernel built with ``compile=True`` shares it, so a kernel made afresh (one a
    training step, say) finds the graphs compiled for the last one. Inductor keeps what it
    compiled on disk as well (its cache folder, ``TORCHINDUCTOR_CACHE_DIR``), so a new
    process compiles the same step in seconds instead of tens of seconds.

    Example:
        >>> compiled(functional_leapfrog_step) is compiled(functional_leapfrog_step)
        True
    """
    # torch.compile switches torch.distributions' argument validation off for the whole
    # process (torch._dynamo patches torch once): give the setting back.
    with validation_enabled(is_validation_enabled()):
        return torch.compile(function, options=COMPILE_OPTIONS)


def leapfrog_step(
    potential: Potential, q: Tensor, p: Tensor, grad: Tensor, eps: Tensor, inv_mass: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One velocity-Verlet step for all chains: returns ``(q, p, U(q), grad U(q))``.

    Example:
        >>> potential = lambda q: 0.5 * q.pow(2).sum(-1)
        >>> q, p = torch.ones(1, 1), torch.zeros(1, 1)
        >>> q, p, u, g = leapfrog_step(potential, q, p, q.clone(), torch.tensor(0.1),
        ...                            torch.ones(1))
        >>> round(q.item(), 6), round(p.item(), 6)
        (0.995, -0.09975)
    """
    p = p - 0.5 * eps * grad
    q = q + eps * inv_mass * p
    u, grad = value_and_grad(potential, q)
    p = p - 0.5 * eps * grad
    return q, p, u, grad


def functional_value_and_grad(potential: Potential, q: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`~pyro_flowebm.infer.value_and_grad` through ``torch.func``, for
    ``torch.compile`` (no shape check: :meth:`Kernel.init` checked the potential)."""

    def total(x: Tensor) -> tuple[Tensor, Tensor]:
        u = potential(x)
        return u.sum(), u

    grad, (_, u) = torch.func.grad_and_value(total, has_aux=True)(q)
    return u.detach(), grad.detach()


def functional_leapfrog_step(
    potential: Potential, q: Tensor, p: Tensor, grad: Tensor, eps: Tensor, inv_mass: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same step through ``torch.func``, which ``torch.compile`` traces without breaks."""
    p = p - 0.5 * eps * grad
    q = q + eps * inv_mass * p
    # Detached: with trainable parameters inside the potential, u would otherwise carry an
    # autograd graph to them that grows with every step of the chain.
    u, grad = functional_value_and_grad(potential, q)
    p = p - 0.5 * eps * grad
    return q, p.detach(), u, grad


def compiled_value_and_grad(potential: Potential, q: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`U` and :math:`\\nabla U` at ``q`` by the compiled leapfrog step of size zero.

    A step of size zero from momentum zero stays at ``q`` and returns the potential and its
    gradient there, so the kernels that only evaluate (the independence moves) run the graph
    HMC compiled for the same chains instead of compiling one of their own.

    Example:
        >>> u, g = compiled_value_and_grad(lambda q: 0.5 * q.pow(2).sum(-1), torch.ones(16, 2))
        >>> u[:2].tolist(), g[:2].tolist()
        ([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]])
    """
    zeros = torch.zeros_like(q)
    eps = q.new_zeros(q.shape[:1] + (1,) * (q.dim() - 1))
    inv_mass = q.new_ones(q.shape[1:])
    _, _, u, grad = compiled(functional_leapfrog_step)(potential, q, zeros, zeros, eps, inv_mass)
    return u, grad


def evaluation(compile: bool) -> Callable[[Potential, Tensor], tuple[Tensor, Tensor]]:
    """How a kernel built with ``compile`` evaluates :math:`U` and :math:`\\nabla U` at new
    points: :func:`compiled_value_and_grad`, or eagerly
    :func:`~pyro_flowebm.infer.value_and_grad`.

    Example:
        >>> evaluation(False) is value_and_grad, evaluation(True) is compiled_value_and_grad
        (True, True)
    """
    return compiled_value_and_grad if compile else value_and_grad
