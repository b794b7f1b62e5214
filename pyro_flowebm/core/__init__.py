"""The foundation: argument checks, randomness and array conversion, used by every layer."""

from .arrays import to_numpy
from .checks import (
    check_choice,
    check_event_shape,
    check_finite,
    check_int,
    check_nonnegative,
    check_points,
    check_positive,
    check_probability,
)
from .rng import rng_state, seeded, set_rng_state
from .version import __version__

__all__ = [
    "__version__",
    "check_choice",
    "check_event_shape",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_points",
    "check_positive",
    "check_probability",
    "rng_state",
    "seeded",
    "set_rng_state",
    "to_numpy",
]
