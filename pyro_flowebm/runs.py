"""Training runs on disk: config, data split, metrics, atomic checkpoints, resume, loading."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor

from . import datasets, flows
from ._atomic import atomic_write
from .distribution import FlowEBM
from .energy import ConvEnergy, MLPEnergy
from .flows import flow_backbone
from .train import backbone_modules, fit_backbone, fit_ebm, rng_state, set_rng_state

__all__ = ["RunConfig", "RunExistsError", "load_run", "read_metrics", "train_run"]

CONFIG = "config.json"
DATA = "data.pt"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
# Everything train_run writes; --overwrite removes exactly these and what later commands
# wrote into the run (samples, evaluation), nothing else.
RUN_FILES = (
    *(CONFIG, DATA, METRICS, CHECKPOINT),
    *("samples.nc", "evaluation.json", "evaluation.png", "probe.pt"),
)
# Presets for vectors (dim, layers, hidden) and for images (event shape, levels, steps, hidden).
BACKBONES = {"realnvp": flows.realnvp, "neural_spline": flows.neural_spline}
IMAGE_BACKBONES = {"glow": flows.glow}
# RunConfig.for_data's defaults for image data, where RunConfig's own (sized for 2-D toys)
# would train for an hour: a digits run in about 10 minutes on one CPU thread.
IMAGE_DEFAULTS: dict[str, Any] = {
    "backbone_hidden": 64,
    "energy_hidden": 32,
    "energy_layers": 3,
    "backbone_steps": 2000,
    "steps": 300,
    "batch_size": 128,
    "mcmc_steps": 3,
    # What the digits results were measured with (docs/images.md), before the toys'
    # defaults moved to persistent chains and a weaker penalty.
    "persistent": False,
    "energy_reg": 0.1,
}


class RunExistsError(FileExistsError):
    """The output directory holds something and neither resume nor overwrite was asked."""


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
    :class:`~pyro_flowebm.energy.MLPEnergy` of ``energy_layers`` x ``energy_hidden``.
    Images: :func:`~pyro_flowebm.flows.glow` (``"auto"``) with ``backbone_levels``
    scales of ``backbone_layers`` steps with ``backbone_hidden`` channels, and a
    :class:`~pyro_flowebm.energy.ConvEnergy` of ``energy_layers`` convolutions starting
    at ``energy_hidden`` channels.
    Training: :func:`~pyro_flowebm.fit_backbone` for ``backbone_steps`` at
    ``backbone_lr``, then :func:`~pyro_flowebm.fit_ebm` for ``steps`` with the remaining
    fields (``finetune_lr`` is its ``backbone_lr``).

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
    backbone_steps: int = 1000
    backbone_lr: float = 5e-3
    steps: int = 1500
    lr: float = 3e-3
    batch_size: int = 256
    mcmc_steps: int = 5
    num_steps: int = 5
    persistent: bool = True
    independence_moves: int = 10
    energy_reg: float = 0.01
    finetune_lr: float | None = None
    validate_every: int = 100
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        names = ["auto", *BACKBONES, *IMAGE_BACKBONES]
        if self.backbone not in names:
            raise ValueError(f"expected backbone in {sorted(names)}, got {self.backbone!r}")
        positive = (
            "num_data num_heldout backbone_levels backbone_layers backbone_hidden energy_layers "
            "energy_hidden backbone_steps steps batch_size mcmc_steps num_steps validate_every"
        ).split()
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.independence_moves < 0 or self.checkpoint_every < 0:
            raise ValueError(
                "expected independence_moves >= 0 and checkpoint_every >= 0, got "
                f"{self.independence_moves}, {self.checkpoint_every}"
            )
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"expected 0 < heldout_fraction < 1, got {self.heldout_fraction}")
        rates = {"backbone_lr": self.backbone_lr, "lr": self.lr, "finetune_lr": self.finetune_lr}
        for name, value in rates.items():
            if value is not None and not value > 0:
                raise ValueError(f"expected {name} > 0, got {value}")
        if not self.energy_reg >= 0:
            raise ValueError(f"expected energy_reg >= 0, got {self.energy_reg}")

    @classmethod
    def for_data(cls, data: str, **fields: Any) -> RunConfig:
        """A config for ``data``: :data:`IMAGE_DEFAULTS` for image data, the class's own
        defaults otherwise, and ``fields`` over either.

        Example:
            >>> RunConfig.for_data("digits").steps, RunConfig.for_data("rings").steps
            (300, 1500)
        """
        defaults = IMAGE_DEFAULTS if is_image_data(data) else {}
        return cls(data=data, **(defaults | fields))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A config from a dict, refusing unknown keys (a typo is an error, not a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; expected some of {sorted(known)}")
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
            if name not in BACKBONES:
                raise ValueError(f"expected a vector backbone {sorted(BACKBONES)}, got {name!r}")
            transform = BACKBONES[name](shape[0], self.backbone_layers, self.backbone_hidden)
            energy = MLPEnergy(shape[0], self.energy_hidden, self.energy_layers)
        elif len(shape) == 3:
            name = "glow" if self.backbone == "auto" else self.backbone
            if name not in IMAGE_BACKBONES:
                raise ValueError(
                    f"expected an image backbone {sorted(IMAGE_BACKBONES)}, got {name!r}"
                )
            transform = IMAGE_BACKBONES[name](
                shape, self.backbone_levels, self.backbone_layers, self.backbone_hidden
            )
            energy = ConvEnergy(shape, self.energy_hidden, self.energy_layers)
        else:
            raise ValueError(f"expected vectors (d,) or images (C, H, W), got shape {shape}")
        device = torch.device(self.device)
        backbone = flow_backbone(transform.to(device, torch.float32), event_shape=shape)
        return FlowEBM(backbone, energy.to(device, torch.float32))

    def fit_ebm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~pyro_flowebm.fit_ebm` this config sets."""
        names = (
            "lr batch_size mcmc_steps num_steps persistent independence_moves energy_reg "
            "validate_every checkpoint_every"
        ).split()
        return {name: getattr(self, name) for name in names} | {"backbone_lr": self.finetune_lr}

    @property
    def images(self) -> bool:
        """Whether ``data`` names image data (see the class docstring)."""
        return is_image_data(self.data)


def is_image_data(data: str) -> bool:
    """A name of :data:`~pyro_flowebm.datasets.IMAGE_SETS`, or a ``.npy`` file holding an
    array of 3 or 4 dimensions."""
    if data in datasets.IMAGE_SETS:
        return True
    if data.endswith(".npy") and Path(data).is_file():
        return np.load(data, mmap_mode="r").ndim in (3, 4)
    return False


def _save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _load(path: Path, device: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=device, weights_only=True)


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    """The :class:`RunConfig` of a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"expected a run directory with {CONFIG}, got {run_dir}")
    return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics of a run, one dict per line of ``metrics.jsonl`` (``phase`` is
    ``"backbone"`` or ``"ebm"``)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    metrics = []
    for i, line in enumerate(lines):
        try:
            metrics.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            # A run killed in the middle of writing its last line; resume writes it again.
    return metrics


def read_data(run_dir: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """The training and held-out points of a run."""
    data = _load(Path(run_dir) / DATA)
    return data["train"], data["heldout"]


def read_levels(run_dir: str | os.PathLike[str]) -> int | None:
    """The intensity levels of a run's images (``None`` for continuous data)."""
    return _load(Path(run_dir) / DATA).get("levels")


def _split(config: RunConfig) -> tuple[Tensor, Tensor, int | None]:
    """Training and held-out data of a config, and the levels of image data, before
    anything is written."""
    if config.images:
        train = datasets.load_images(config.data, "train")
        heldout = datasets.load_images(config.data, "validation")
        return train.images.float(), heldout.images.float(), train.levels
    return (*_split_vectors(config), None)


def _split_vectors(config: RunConfig) -> tuple[Tensor, Tensor]:
    if config.data in datasets.TOYS:
        train = datasets.load(
            config.data, config.num_data, generator=torch.Generator().manual_seed(config.seed)
        )
        heldout = datasets.load(
            config.data,
            config.num_heldout,
            generator=torch.Generator().manual_seed(config.seed + 1_000_003),
        )
        return train.float(), heldout.float()
    data = datasets.load(config.data).float()
    n_heldout = round(config.heldout_fraction * data.shape[0])
    if not 1 <= n_heldout < data.shape[0] - 1:
        raise ValueError(
            f"expected enough rows in {config.data} to hold out {config.heldout_fraction:g} "
            f"and train on at least 2, got {data.shape[0]} rows"
        )
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(config.seed))
    return data[order[n_heldout:]], data[order[:n_heldout]]


def _prepare(out: Path, config: RunConfig, resume: bool, overwrite: bool) -> bool:
    """Check ``out`` against the flags; returns whether an existing run is resumed."""
    if resume and overwrite:
        raise ValueError("expected at most one of resume and overwrite, got both")
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"expected a directory for the run, got an existing file {out}")
    contents = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not contents:
        if resume:
            raise FileNotFoundError(f"expected a run to resume in {out}, got no such run")
        return False
    if resume:
        stored = read_config(out)
        if stored != config:
            diff = {
                k: (v, getattr(config, k))
                for k, v in stored.to_dict().items()
                if getattr(config, k) != v
            }
            raise ValueError(
                f"expected the settings of the run in {out} to resume it, got different "
                f"ones (stored, given): {diff}"
            )
        return True
    if not overwrite:
        raise RunExistsError(
            f"expected an empty or new --out directory, got {out} with {len(contents)} "
            "entries; pass --resume to continue the run in it or --overwrite to start over"
        )
    if CONFIG not in contents:
        raise RunExistsError(
            f"expected a run directory (with {CONFIG}) to overwrite, got {out} without one; "
            "refusing to delete files that no run wrote"
        )
    return False


def train_run(
    out: str | os.PathLike[str],
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> FlowEBM:
    """Train a FlowEBM into a run directory: split the data, fit the backbone, learn the tilt.

    The run directory holds ``config.json``, ``data.pt`` (training and held-out points),
    ``metrics.jsonl`` (one JSON object a step: ``phase``, ``step``, the loss and, for the
    tilt, the metrics of :func:`~pyro_flowebm.fit_ebm`) and ``checkpoint.pt``, written
    atomically (temporary file, then rename) at the end of the backbone fit, every
    ``checkpoint_every`` steps of the tilt and at the end. Nothing is written before the
    config and the data have been checked.

    An existing non-empty ``out`` is left alone unless ``resume`` (continue from the
    last checkpoint, with the same config: on the CPU the final weights equal those of an
    uninterrupted run) or ``overwrite`` (delete the run's files and start over; only a
    directory holding a ``config.json`` is overwritten).

    Args:
        out: the run directory (created if missing).
        config: the run's settings.
        resume: continue the run in ``out``.
        overwrite: replace the run in ``out``.
        progress_bar: tqdm bars for both phases.

    Returns:
        The trained model.

    Raises:
        RunExistsError: ``out`` holds something and neither flag was given.
        ValueError: bad data (see :func:`~pyro_flowebm.datasets.validate_data`), or a
            resumed run whose stored config differs from ``config``.
        TrainingDiverged: training blew up; ``checkpoint.pt`` still holds the last good
            state.

    Example:
        >>> import tempfile
        >>> config = RunConfig(data="two_moons", num_data=500, num_heldout=200,
        ...                    backbone_steps=20, steps=4, batch_size=32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ebm = train_run(tmp, config, progress_bar=False)
        ...     sorted(p.name for p in Path(tmp).iterdir())
        ['checkpoint.pt', 'config.json', 'data.pt', 'metrics.jsonl']
    """
    out = Path(out)
    train, heldout, levels = _split(config)  # raises on bad data before anything is touched
    event_shape = tuple(train.shape[1:])
    pyro.set_rng_seed(config.seed)
    ebm = config.build(event_shape)  # and on a model that does not fit the data
    resuming = _prepare(out, config, resume, overwrite)
    checkpoint = (
        _load(out / CHECKPOINT, config.device)  # persistent chains go back to the device
        if resuming and (out / CHECKPOINT).is_file()
        else None
    )
    if not resuming:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        _save({"train": train, "heldout": heldout, "levels": levels}, out / DATA)
        _write_text(json.dumps(config.to_dict(), indent=2) + "\n", out / CONFIG)
    else:
        train, heldout = read_data(out)
    device = torch.device(config.device)
    train, heldout = train.to(device), heldout.to(device)

    backbone = backbone_modules(ebm)
    metrics_path = out / METRICS
    if checkpoint is None:
        # From the start: the backbone fit is short and reruns identically from the seed.
        # Re-seeded after building, so that its minibatches (and so the fitted backbone) do
        # not depend on how many random numbers the energy's initialization drew.
        pyro.set_rng_seed(config.seed + 1)
        metrics_path.unlink(missing_ok=True)
        losses = fit_backbone(
            ebm.backbone, train, config.backbone_steps, lr=config.backbone_lr,
            batch_size=config.batch_size, dequantize=levels, progress_bar=progress_bar,
        )  # fmt: skip
        lines = (
            json.dumps({"phase": "backbone", "step": i, "loss": v}) for i, v in enumerate(losses)
        )
        _write_text("".join(line + "\n" for line in lines), metrics_path)
        checkpoint = {
            "phase": "backbone",
            "event_shape": list(event_shape),
            "backbone": backbone.state_dict(),
            "energy": ebm.energy.state_dict(),
            "rng": rng_state(),
        }
        _save(checkpoint, out / CHECKPOINT)
    else:
        # Keep the metrics up to the checkpoint: the steps after it are run again.
        done = checkpoint["trainer"]["step"] if checkpoint["phase"] == "ebm" else 0
        kept = [m for m in read_metrics(out) if m["phase"] == "backbone" or m["step"] < done]
        _write_text("".join(json.dumps(m) + "\n" for m in kept), metrics_path)
    backbone.load_state_dict(checkpoint["backbone"])
    ebm.energy.load_state_dict(checkpoint["energy"])
    set_rng_state(checkpoint["rng"])
    trainer = checkpoint.get("trainer")
    if trainer is not None and trainer["step"] >= config.steps:
        return ebm  # the run is complete

    def on_checkpoint(state: dict[str, Any]) -> None:
        _save(
            {
                "phase": "ebm",
                "event_shape": list(event_shape),
                "backbone": state["backbone"],
                "energy": state["energy"],
                "rng": state["rng"],
                "trainer": state,
            },
            out / CHECKPOINT,
        )

    with open(metrics_path, "a", encoding="utf-8") as log:

        def on_metrics(metrics: dict[str, float]) -> None:
            log.write(json.dumps({"phase": "ebm", **metrics}) + "\n")
            log.flush()

        fit_ebm(
            ebm,
            train,
            config.steps,
            validation_data=heldout,
            on_checkpoint=on_checkpoint,
            on_metrics=on_metrics,
            resume=trainer,
            dequantize=levels,
            progress_bar=progress_bar,
            **config.fit_ebm_kwargs(),
        )
    return ebm


def load_run(run_dir: str | os.PathLike[str], *, device: str | None = None) -> FlowEBM:
    """The trained FlowEBM of a run directory, from its last checkpoint, ready to sample.

    The weights are read with ``torch.load(weights_only=True)``. A run stopped during or
    right after the backbone fit gives its backbone with a zero energy.

    Args:
        run_dir: a directory written by :func:`train_run` (or ``pyro-flowebm train``).
        device: where to put the model (default: the run's device).

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint yet.

    Example:
        >>> import tempfile
        >>> config = RunConfig(data="rings", num_data=300, num_heldout=100,
        ...                    backbone_steps=10, steps=2, batch_size=32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_run(tmp, config, progress_bar=False)
        ...     ebm = load_run(tmp)
        >>> ebm.sample((5,), mcmc_steps=2).shape
        torch.Size([5, 2])
    """
    config = read_config(run_dir)
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint in {run_dir}, got none yet")
    if device is not None:
        config = dataclasses.replace(config, device=device)
    checkpoint = _load(path, config.device)
    ebm = config.build(tuple(checkpoint["event_shape"]))
    backbone_modules(ebm).load_state_dict(checkpoint["backbone"])
    ebm.energy.load_state_dict(checkpoint["energy"])
    return ebm
