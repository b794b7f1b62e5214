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
from .shard import (
    Shard,
    all_chains,
    chain_draws,
    data_parallel,
    distributed,
    local_rows,
    on_first_process,
    process_rank,
    sharding,
)
from .version import __version__

__all__ = [
    "Shard",
    "__version__",
    "all_chains",
    "chain_draws",
    "data_parallel",
    "check_choice",
    "check_event_shape",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_points",
    "check_positive",
    "check_probability",
    "distributed",
    "local_rows",
    "on_first_process",
    "process_rank",
    "rng_state",
    "seeded",
    "set_rng_state",
    "sharding",
    "to_numpy",
]
