"""The run configuration: every setting of a training run, its defaults taken from the library.

A default of training or sampling is written once, in the signature of the library
function that uses it (:func:`~pyro_flowebm.fit_ebm`, :func:`~pyro_flowebm.fit_backbone`,
:func:`~pyro_flowebm.infer.sample_ebm`, ...); the configuration and the command read it
from there with :func:`default_of`. What belongs to a run alone (the data split, the
model's size, the seed) is written here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import datasets, flows
from ..core import check_choice, check_positive
from ..distributions import FlowEBM
from ..flows import fit_backbone, flow_backbone
from ..nn import ConvEnergy, MLPEnergy
from ..train import TiltSettings, fit_ebm
from .checks import check_count, check_seed

__all__ = [
    "BACKBONES",
    "IMAGE_BACKBONES",
    "IMAGE_DEFAULTS",
    "RunConfig",
    "default_of",
    "is_image_data",
]


def default_of(function: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` in ``function``'s signature.

    Example:
        >>> default_of(fit_ebm, "lr")
        0.003
    """
    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"expected a default for {function.__name__}({name}=), got none")
    return default


# Presets for vectors (dim, layers, hidden) and for images (event shape, levels, steps, hidden).
BACKBONES = {"realnvp": flows.realnvp, "neural_spline": flows.neural_spline}
IMAGE_BACKBONES = {"glow": flows.glow}
# The image preset of RunConfig.for_data, where the defaults (sized for 2-D toys) would
# train for an hour: a digits run in about 10 minutes on one CPU thread. It keeps restarted
# chains and the stronger penalty the digits results were measured with (docs/images.md).
IMAGE_DEFAULTS: dict[str, Any] = {
    "backbone_hidden": 64,
    "energy_hidden": 32,
    "energy_layers": 3,
    "backbone_steps": 2000,
    "steps": 300,
    "batch_size": 128,
    "mcmc_steps": 3,
    "persistent": False,
    "energy_reg": 0.1,
}
# RunConfig fields that are fit_ebm's keyword arguments of the same name.
_FIT_EBM_FIELDS = (
    "steps",
    "lr",
    "batch_size",
    "mcmc_steps",
    "num_steps",
    "persistent",
    "independence_moves",
    "energy_reg",
    "finetune_lr",
    "validate_every",
    "checkpoint_every",
    "compile",
)
# Fields added since 0.1, and the value that reproduces a run written before them.
_ADDED_FIELDS: dict[str, Any] = {"compile": False}
# A vector run compiles its chains' gradients by default (training and sampling) when
# they take at least this many evaluations per chain: the compile, ~20 s on a cold cache
# and ~3 s on a warm one, then costs less than the 2-4 ms an evaluation it saves at 128 to
# 256 chains on one core (docs/benchmarks.md).
COMPILE_MIN_GRADIENTS = 10_000


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; stored as ``config.json`` in the run.

    Data: ``data`` is a toy name of :data:`~pyro_flowebm.datasets.TOYS` (``num_data``
    training and ``num_heldout`` held-out exact draws, from independent seeds), a
    ``.npy``/``.pt``/``.csv`` file of vectors (split at random, ``heldout_fraction`` held
    out), or images: a name of :data:`~pyro_flowebm.datasets.IMAGE_SETS` or a ``.npy``
    array of 3 or 4 dimensions, with the fixed train/validation split of
    :func:`~pyro_flowebm.datasets.load_images` (``num_data``, ``num_heldout`` and
    ``heldout_fraction`` do not apply), dequantized in training.
    Model, vectors: a ``backbone`` preset of :mod:`~pyro_flowebm.flows` (``"auto"`` is
    ``"realnvp"``) with ``backbone_layers`` x ``backbone_hidden``, and an
    :class:`~pyro_flowebm.nn.MLPEnergy` of ``energy_layers`` x ``energy_hidden``.
    Images: :func:`~pyro_flowebm.flows.glow` (``"auto"``) with ``backbone_levels``
    scales of ``backbone_layers`` steps with ``backbone_hidden`` channels, and a
    :class:`~pyro_flowebm.nn.ConvEnergy` of ``energy_layers`` convolutions starting
    at ``energy_hidden`` channels.
    Training: :func:`~pyro_flowebm.fit_backbone` for ``backbone_steps`` at
    ``backbone_lr``, then :func:`~pyro_flowebm.fit_ebm` with the fields of its keyword
    arguments (``steps``, ``lr``, ..., ``finetune_lr``, ``compile``); their defaults are
    the library's, but :meth:`for_data` sets ``compile`` where it pays
    (:meth:`compile_pays`).

    Example:
        >>> RunConfig(data="rings", steps=200).steps
        200
    """

    data: str = "eight_gaussians"
    seed: int = 0
    device: str = "cpu"
    num_data: int = 5000
    num_heldout: int = 2000
    heldout_fraction: float = 0.2
    backbone: str = "auto"
    backbone_levels: int = 2
    backbone_layers: int = 4
    backbone_hidden: int = 32
    energy_layers: int = 2
    energy_hidden: int = 64
    backbone_steps: int = default_of(fit_backbone, "steps")
    backbone_lr: float = default_of(fit_backbone, "lr")
    steps: int = default_of(fit_ebm, "steps")
    lr: float = default_of(fit_ebm, "lr")
    batch_size: int = default_of(fit_ebm, "batch_size")
    mcmc_steps: int = default_of(fit_ebm, "mcmc_steps")
    num_steps: int = default_of(fit_ebm, "num_steps")
    persistent: bool = default_of(fit_ebm, "persistent")
    independence_moves: int = default_of(fit_ebm, "independence_moves")
    energy_reg: float = default_of(fit_ebm, "energy_reg")
    finetune_lr: float | None = default_of(fit_ebm, "finetune_lr")
    validate_every: int = default_of(fit_ebm, "validate_every")
    checkpoint_every: int = default_of(fit_ebm, "checkpoint_every")
    compile: bool = default_of(fit_ebm, "compile")

    def __post_init__(self) -> None:
        _check_types(self)
        check_seed("seed", self.seed)
        check_choice("backbone", self.backbone, ["auto", *BACKBONES, *IMAGE_BACKBONES])
        for name in (
            "num_data num_heldout backbone_levels backbone_layers backbone_hidden "
            "energy_layers energy_hidden backbone_steps"
        ).split():
            check_count(name, getattr(self, name), 1)
        for name in ("steps", "batch_size", "mcmc_steps", "num_steps", "validate_every"):
            check_count(name, getattr(self, name), 1)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(
                f"expected device to be a torch device such as cpu or cuda:0, got {self.device!r}"
            ) from e
        check_positive("backbone_lr", self.backbone_lr)
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"expected 0 < heldout_fraction < 1, got {self.heldout_fraction}")
        TiltSettings(**self.fit_ebm_kwargs(), **_OTHER_TILT_SETTINGS)

    @classmethod
    def for_data(cls, data: str, **fields: Any) -> RunConfig:
        """A config for ``data``: :data:`IMAGE_DEFAULTS` for image data, the class's own
        defaults otherwise, and ``fields`` over either.

        Example:
            >>> RunConfig.for_data("digits").steps, RunConfig.for_data("rings").steps
            (300, 1500)
        """
        defaults = IMAGE_DEFAULTS if is_image_data(data) else {}
        config = cls(data=data, **(defaults | fields))
        if "compile" in fields:
            return config
        return dataclasses.replace(config, compile=config.compile_pays())

    def compile_pays(self) -> bool:
        """Whether compiling the chains' gradients repays its compile: vector data, and a
        tilt of at least :data:`COMPILE_MIN_GRADIENTS` gradient evaluations per chain.
        Image models are left eager: their compile takes minutes.

        Example:
            >>> RunConfig().compile_pays(), RunConfig(steps=100).compile_pays()
            (True, False)
        """
        per_step = self.mcmc_steps * self.num_steps + self.independence_moves
        return not self.images and self.steps * per_step >= COMPILE_MIN_GRADIENTS

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A config from a dict of every field, refusing unknown and missing keys (a typo is
        an error, not a default; a key left out would silently change a resumed run). A
        field added since 0.1 and missing from an older run's config gets the value that
        run was trained with (``compile``: false).

        Example:
            >>> RunConfig.from_dict({"data": "rings", "stepz": 3})
            Traceback (most recent call last):
            ...
            ValueError: unknown run config keys ['stepz']; expected some of [...]
        """
        if not isinstance(values, dict):
            raise TypeError(f"expected a run config as a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown run config keys {unknown}; expected some of [{', '.join(sorted(known))}]"
            )
        values = {k: v for k, v in _ADDED_FIELDS.items() if k not in values} | values
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"expected every run config key, got none for {missing}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build(self, event_shape: int | tuple[int, ...]) -> FlowEBM:
        """A fresh float32 model of this architecture for points of ``event_shape``
        (``(d,)`` or ``d`` for vectors, ``(C, H, W)`` for images), on this config's device;
        its energy is zero, so the model equals its backbone."""
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        if len(shape) == 1:
            name = "realnvp" if self.backbone == "auto" else self.backbone
            check_choice("vector backbone", name, BACKBONES)
            transform = BACKBONES[name](shape[0], self.backbone_layers, self.backbone_hidden)
            energy = MLPEnergy(shape[0], self.energy_hidden, self.energy_layers)
        elif len(shape) == 3:
            name = "glow" if self.backbone == "auto" else self.backbone
            check_choice("image backbone", name, IMAGE_BACKBONES)
            transform = IMAGE_BACKBONES[name](
                shape, self.backbone_levels, self.backbone_layers, self.backbone_hidden
            )
            energy = ConvEnergy(shape, self.energy_hidden, self.energy_layers)
        else:
            raise ValueError(f"expected vectors (d,) or images (C, H, W), got shape {shape}")
        device = torch.device(self.device)
        backbone = flow_backbone(transform.to(device, torch.float32), event_shape=shape)
        return FlowEBM(backbone, energy.to(device, torch.float32))

    def minimum_bytes(self, event_shape: tuple[int, ...]) -> int:
        """A lower bound of the memory training needs: the square weight matrices of both
        networks, four times (weights, gradients, Adam's two moments), and a toy's points.

        Example:
            >>> RunConfig(backbone_hidden=10**8).minimum_bytes((2,)) > 2**50
            True
        """
        dim = int(np.prod(event_shape))
        depth = self.backbone_layers * (self.backbone_levels if len(event_shape) == 3 else 1)
        weights = depth * self.backbone_hidden**2 + self.energy_layers * self.energy_hidden**2
        points = (self.num_data + self.num_heldout) * dim if self.data in datasets.TOYS else 0
        return 4 * (4 * weights + points + self.batch_size * dim * self.backbone_hidden)

    def fit_ebm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~pyro_flowebm.fit_ebm` this config sets."""
        return {name: getattr(self, name) for name in _FIT_EBM_FIELDS}

    @property
    def images(self) -> bool:
        """Whether ``data`` names image data (see the class docstring)."""
        return is_image_data(self.data)


# What a field of each annotation may hold (an int is a float; a bool is neither).
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "float | None": (
        "a number or null",
        lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    ),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_types(config: RunConfig) -> None:
    """Every field of the kind its annotation says, and floats finite."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        what, accepts = _KINDS[str(field.type)]
        if not accepts(value):
            raise TypeError(
                f"expected {field.name} to be {what}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite {field.name}, got {value}")


# The settings of fit_ebm a run does not set: the library's defaults.
_OTHER_TILT_SETTINGS = {
    f.name: default_of(fit_ebm, f.name)
    for f in dataclasses.fields(TiltSettings)
    if f.name not in _FIT_EBM_FIELDS
}


def is_image_data(data: str) -> bool:
    """A name of :data:`~pyro_flowebm.datasets.IMAGE_SETS`, or a ``.npy`` file holding an
    array of 3 or 4 dimensions.

    Example:
        >>> is_image_data("digits"), is_image_data("rings")
        (True, False)
    """
    if data in datasets.IMAGE_SETS:
        return True
    if data.endswith(".npy") and Path(data).is_file():
        return len(datasets.npy_shape(data)) in (3, 4)
    return False
