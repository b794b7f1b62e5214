"""Argument checks: one function per kind of value, each saying what was expected and what came."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

__all__ = [
    "Checked",
    "check_choice",
    "check_differentiable",
    "check_event_shape",
    "check_finite",
    "check_floating",
    "check_int",
    "check_nonnegative",
    "check_points",
    "check_positive",
    "check_probability",
]


def check_int(name: str, value: object, minimum: int) -> int:
    """An integer (not a bool) of at least ``minimum``.

    Example:
        >>> check_int("num_chains", 4, 1)
        4
        >>> check_int("num_chains", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: expected num_chains >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected an integer {name}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {value}")
    return int(value)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number {name}, got {type(value).__name__} {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """A finite number above zero (NaN and infinity are refused).

    Example:
        >>> check_positive("step_size", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: expected step_size > 0, got nan
    """
    number = _real(name, value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"expected {name} > 0, got {value}")
    return number


def check_nonnegative(name: str, value: object) -> float:
    """A finite number of at least zero.

    Example:
        >>> check_nonnegative("energy_reg", 0.0)
        0.0
    """
    number = _real(name, value)
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"expected {name} >= 0, got {value}")
    return number


def check_probability(name: str, value: object) -> float:
    """A number strictly between 0 and 1.

    Example:
        >>> check_probability("target_accept_prob", 1.0)
        Traceback (most recent call last):
        ...
        ValueError: expected 0 < target_accept_prob < 1, got 1.0
    """
    number = _real(name, value)
    if not 0 < number < 1:
        raise ValueError(f"expected 0 < {name} < 1, got {value}")
    return number


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """One of ``choices``.

    Example:
        >>> check_choice("sampler", "hmc", ("hmc", "nuts"))
    """
    if value not in choices:
        raise ValueError(f"expected {name} in {sorted(map(str, choices))}, got {value!r}")


def check_event_shape(value: Tensor, event_shape: Sequence[int], name: str = "value") -> None:
    """A tensor whose trailing dimensions are ``event_shape``.

    Example:
        >>> check_event_shape(torch.zeros(5, 3), (2,), "x")
        Traceback (most recent call last):
        ...
        ValueError: expected x with event shape (2,), got shape (5, 3)
    """
    event_shape = tuple(event_shape)
    n = len(event_shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n :]) != event_shape:
        raise ValueError(
            f"expected {name} with event shape {event_shape}, got shape {tuple(value.shape)}"
        )


def check_finite(name: str, value: Tensor) -> None:
    """A tensor without NaN or infinite entries.

    Example:
        >>> check_finite("init", torch.tensor([0.0, float("inf")]))
        Traceback (most recent call last):
        ...
        ValueError: expected finite init, got 1 non-finite entries (nan or inf) in shape (2,)
    """
    bad = ~torch.isfinite(value)
    if bad.any():
        raise ValueError(
            f"expected finite {name}, got {int(bad.sum())} non-finite entries (nan or inf) "
            f"in shape {tuple(value.shape)}"
        )


def check_points(name: str, value: Tensor, event_shape: Sequence[int], minimum: int = 1) -> None:
    """Points of shape ``(n, *event_shape)``, ``n >= minimum``, all finite.

    Example:
        >>> check_points("data", torch.zeros(10, 3), (2,))
        Traceback (most recent call last):
        ...
        ValueError: expected data of shape (n, 2), got (10, 3)
    """
    event_shape = tuple(event_shape)
    if value.dim() != len(event_shape) + 1 or tuple(value.shape[1:]) != event_shape:
        expected = ", ".join(["n", *map(str, event_shape)])
        raise ValueError(f"expected {name} of shape ({expected}), got {tuple(value.shape)}")
    if value.shape[0] < minimum:
        noun = "point" if minimum == 1 else "points"
        raise ValueError(f"expected at least {minimum} {name} {noun}, got {value.shape[0]}")
    check_finite(name, value)


def check_floating(name: str, value: object, dtype: torch.dtype | None = None) -> None:
    """A floating-point tensor, of ``dtype`` when one is given.

    Example:
        >>> check_floating("init", torch.zeros(2, dtype=torch.long))
        Traceback (most recent call last):
        ...
        TypeError: expected init as a floating-point tensor, got dtype torch.int64
        >>> init = torch.zeros(2, dtype=torch.float64)
        >>> check_floating("init", init, torch.float32)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: expected init of dtype torch.float32, got torch.float64: cast it ...
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"expected {name} as a floating-point tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"expected {name} as a floating-point tensor, got dtype {value.dtype}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(
            f"expected {name} of dtype {dtype}, got {value.dtype}: cast it with .to({dtype})"
        )


def check_differentiable(
    name: str, output: Tensor, grad: Tensor | None, trainable: bool = False
) -> None:
    """An ``output`` that autograd traces back to its input (``grad``, the gradient that
    reached the input, is not ``None``), unless it is constant where finite and has no
    trainable parameters: what a sampler's potential or an energy must be for the gradient
    to be the potential's.

    Example:
        >>> x = torch.arange(3.0, requires_grad=True)
        >>> y = 2 * x.detach()  # a .detach() inside a potential
        >>> check_differentiable("the potential", y, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: expected the potential to be differentiable in its input, got an output ...
        >>> check_differentiable("the potential", torch.zeros(3), None)  # constant: legal
    """
    if grad is not None:
        return
    finite = output[torch.isfinite(output)]
    if not trainable and bool((finite == finite[:1]).all()):
        return
    raise ValueError(
        f"expected {name} to be differentiable in its input, got an output that autograd does not "
        f"trace back to it (requires_grad={output.requires_grad}): a .detach(), .item(), "
        ".numpy() or torch.no_grad() inside it makes a sampler move on a wrong gradient"
    )


T = TypeVar("T")


class Checked(Generic[T]):
    """An attribute checked whenever it is set, in the constructor or after it:
    ``check(name, value)`` returns the value to keep or raises.

    Example:
        >>> class Kernel:
        ...     step_size = Checked(check_positive)
        ...     def __init__(self, step_size: float) -> None:
        ...         self.step_size = step_size
        >>> kernel = Kernel(0.1)
        >>> kernel.step_size = float("nan")
        Traceback (most recent call last):
        ...
        ValueError: expected step_size > 0, got nan
        >>> kernel.step_size
        0.1
    """

    def __init__(self, check: Callable[[str, Any], T]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> T:
        if instance is None:
            return self  # type: ignore[return-value]
        return instance.__dict__[self.name]

    def __set__(self, instance: object, value: Any) -> None:
        instance.__dict__[self.name] = self.check(self.name, value)
