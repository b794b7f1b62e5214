"""Maximum-likelihood training of the tilt: one step function, and a loop over its state."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import (
    all_chains,
    check_int,
    check_nonnegative,
    check_points,
    check_positive,
    check_probability,
    data_parallel,
    distributed,
    local_rows,
    process_rank,
    rng_state,
    set_rng_state,
    sharding,
)
from ..datasets import check_levels, dequantize
from ..distributions import FlowEBM
from ..infer import HMC, HMCAdaptation, IndependenceMH
from ..infer.integrators import evaluation
from ..infer.state import ChainState
from ..metrics import mmd

__all__ = ["TiltSettings", "TiltState", "TrainingDiverged", "fit_ebm", "tilt_step"]

# Held-out points used by a validation: the MMD costs O(n^2).
_MAX_VALIDATION_POINTS = 1000
# Metrics on the progress bar.
_SHOWN = ("loss", "energy_gap", "acceptance", "step_size")
# The numbers of a step that open its metrics, in their order.
_METRICS = ("loss", "energy_data", "energy_model", "acceptance", "step_size")


class TrainingDiverged(RuntimeError):
    """Training stopped: the loss turned non-finite or the energies ran away.

    Attributes:
        step: the training step (0-based) at which the guard tripped; the model's
            parameters are those after step ``step - 1``, the last good one.
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class TiltSettings:
    """The settings of a training run of the tilt, checked when made: :func:`fit_ebm`'s
    keyword arguments (see it for each; its signature holds their defaults). The run
    configuration of the command checks its training fields by making one.

    Example:
        >>> import inspect
        >>> names = {f.name for f in dataclasses.fields(TiltSettings)}
        >>> defaults = {k: p.default for k, p in inspect.signature(fit_ebm).parameters.items()}
        >>> TiltSettings(**{k: defaults[k] for k in names} | {"mcmc_steps": 0})
        Traceback (most recent call last):
        ...
        ValueError: expected mcmc_steps >= 1, got 0
    """

    steps: int
    batch_size: int
    lr: float
    mcmc_steps: int
    num_steps: int
    step_size: float
    target_accept_prob: float
    persistent: bool
    independence_moves: int
    energy_reg: float
    grad_clip: float
    finetune_lr: float | None
    dequantize: int | None
    validate_every: int
    max_energy: float
    checkpoint_every: int
    compile: bool = False

    def __post_init__(self) -> None:
        for name, minimum in _COUNTS.items():
            check_int(name, getattr(self, name), minimum)
        for name in ("lr", "step_size", "grad_clip", "max_energy"):
            check_positive(name, getattr(self, name))
        if self.finetune_lr is not None:
            check_positive("finetune_lr", self.finetune_lr)
        check_probability("target_accept_prob", self.target_accept_prob)
        check_nonnegative("energy_reg", self.energy_reg)
        check_levels(self.dequantize)


# The counts of TiltSettings and their least values.
_COUNTS = {
    "steps": 1,
    "batch_size": 1,
    "mcmc_steps": 1,
    "num_steps": 1,
    "independence_moves": 0,
    "validate_every": 1,
    "checkpoint_every": 0,
}


@dataclass
class TiltState:
    """Everything a training step changes besides the model's parameters.

    Attributes:
        step: steps done.
        chains: the latent chains of the last step (persistent chains), or ``None``.
        optimizer: Adam over the energy's (and when fine-tuning the backbone's) parameters.
        schedule: the cosine learning-rate decay.
        kernel: the HMC kernel of the model draws.
        adaptation: its step-size adaptation, which runs for the whole training (the
            potential changes at every step).
        objective: the loss as a module of the trained parameters (wrapped in
            ``DistributedDataParallel`` in a ``torch.distributed`` run, which averages its
            gradients across processes); ``None``: computed without a module.

    In a ``torch.distributed`` run ``chains`` holds this process's block of the chains;
    :meth:`state_dict` gathers all of them, and :meth:`load_state_dict` takes the block
    back, whatever the number of processes that wrote it.
    """

    step: int
    chains: Tensor | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    kernel: HMC
    adaptation: HMCAdaptation
    objective: nn.Module | None = None

    def state_dict(self, ebm: FlowEBM) -> dict[str, Any]:
        """A snapshot to continue from: parameters, optimizer, schedule, the generator's
        state, chains and adaptation (copies: later steps change the live tensors)."""
        return copy.deepcopy(
            {
                "step": self.step,
                "energy": ebm.energy.state_dict(),
                "backbone": backbone_modules(ebm).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "rng": rng_state(),
                "chains": None if self.chains is None else all_chains(self.chains),
                "adaptation": self.adaptation.state_dict(),
            }
        )

    def load_state_dict(self, ebm: FlowEBM, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (or a checkpoint of 0.1, whose step size had no
        adaptation state: the adaptation starts afresh from that step size)."""
        ebm.energy.load_state_dict(state["energy"])
        backbone_modules(ebm).load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        chains = state["chains"]
        self.step, self.chains = state["step"], None if chains is None else local_rows(chains)
        if "adaptation" in state:
            self.adaptation.load_state_dict(state["adaptation"])
        else:
            kernel = self.kernel
            self.kernel = HMC(
                math.exp(state["log_step_size"]),
                kernel.num_steps,
                target_accept_prob=kernel.target_accept_prob,
                compile=kernel.compile,
            )
            position = self.adaptation.log_step.new_zeros((1, *ebm.event_shape))
            self.adaptation = self.kernel.adaptation(position, None)


def backbone_modules(ebm: FlowEBM) -> nn.ModuleList:
    """The backbone's trainable transforms as one ``nn.ModuleList`` (for state dicts)."""
    return nn.ModuleList(t for t in ebm.backbone.transforms if isinstance(t, nn.Module))


def _model_draws(ebm: FlowEBM, settings: TiltSettings, state: TiltState) -> tuple[Tensor, Tensor]:
    """Move the latent chains towards the EBM: independence moves, then HMC with the
    adaptation; returns them and the mean acceptance and step size of the HMC steps (a
    tensor of two: read with the step's other numbers, in one wait for the device)."""
    potential = ebm.chain_potential
    z = state.chains
    if z is None or not settings.persistent:
        z = local_rows(ebm.base_dist.sample((settings.batch_size,)))
    # fit_ebm checked the energy before the first step (check_energy): the chains start
    # with a plain evaluation, compiled with the rest when the chains are.
    chain = ChainState(z.detach(), *evaluation(settings.compile)(potential, z))
    imh = IndependenceMH(compile=settings.compile)
    for _ in range(settings.independence_moves):
        chain, _ = imh.step(chain, potential)
    sums = torch.zeros(2, dtype=torch.float64, device=z.device)
    for _ in range(settings.mcmc_steps):
        chain, info = state.adaptation.step(chain, potential)
        sums = sums + torch.stack([info.accept_prob.nan_to_num(0.0).mean(), info.step_size.mean()])
    return chain.position, sums / settings.mcmc_steps


def _diverged(step: int, reason: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged at step {step}: {reason}; the parameters are those of the last "
        "good step. Lower lr or raise energy_reg",
        step,
    )


def _loss(
    ebm: FlowEBM, x_data: Tensor, x_model: Tensor, settings: TiltSettings
) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of one step and the energies of the data and the model draws."""
    e_data, e_model = ebm.energy_of(x_data), ebm.energy_of(x_model)
    loss = e_data.mean() - e_model.mean()
    loss = loss + settings.energy_reg * (e_data.pow(2).mean() + e_model.pow(2).mean())
    if settings.finetune_lr is not None:
        loss = loss - ebm.backbone.log_prob(x_data).mean() + ebm.backbone.log_prob(x_model).mean()
    return loss, e_data, e_model


class _Objective(nn.Module):
    """:func:`_loss` as a module of the trained parameters (the energy's, and the
    backbone's when fine-tuned), for ``DistributedDataParallel``."""

    def __init__(self, ebm: FlowEBM, settings: TiltSettings) -> None:
        super().__init__()
        self.energy = ebm.energy
        fine_tuned = settings.finetune_lr is not None
        self.backbone = backbone_modules(ebm) if fine_tuned else nn.ModuleList()
        self.ebm, self.settings = ebm, settings

    def forward(self, x_data: Tensor, x_model: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _loss(self.ebm, x_data, x_model, self.settings)


def _guard(step: int, numbers: dict[str, float], settings: TiltSettings) -> None:
    """Raise :class:`TrainingDiverged` for the first check of the step that fails."""
    if not numbers["finite_draws"]:
        raise _diverged(step, "a model draw is not finite")
    if not math.isfinite(numbers["loss"]):
        raise _diverged(step, f"the loss is {numbers['loss']}")
    if not numbers["largest"] <= settings.max_energy:
        raise _diverged(
            step,
            f"an energy reached {numbers['largest']:.3g} (max_energy={settings.max_energy:g})",
        )
    if not math.isfinite(numbers["grad_norm"]):
        raise _diverged(step, "a gradient is not finite")


# The numbers of a step that the guard and the metrics read, in the order tilt_step stacks them.
_NUMBERS = (
    "finite_draws loss energy_data energy_model grad_norm acceptance step_size largest".split()
)


def _step_numbers(values: list[Tensor]) -> dict[str, float]:
    """The step's numbers (:data:`_NUMBERS`) in one wait for the device; in a
    ``torch.distributed`` run, over every process: means of the per-process means (equal
    blocks), the least of ``finite_draws`` and the largest energy. Every process then sees
    the same numbers, and its guard stops it with the others."""
    every = all_chains(torch.stack([v.to(torch.float64) for v in values])[None])
    numbers = every.mean(0)
    numbers[0], numbers[-1] = every[:, 0].min(), every[:, -1].max()
    return dict(zip(_NUMBERS, numbers.tolist(), strict=True))


def tilt_step(
    ebm: FlowEBM, data: Tensor, settings: TiltSettings, state: TiltState
) -> tuple[dict[str, float], Tensor]:
    r"""One training step of the tilt: model draws, the loss, its gradient, the update.

    The model draws are the persistent (or fresh) latent chains moved by
    ``independence_moves`` independence Metropolis steps and ``mcmc_steps`` HMC steps,
    pushed through the flow; the loss is
    :math:`\overline{E(x_\text{data})} - \overline{E(x_\text{model})} + \alpha(\dots)`
    (see :func:`fit_ebm`). A guard raises :class:`TrainingDiverged` before the optimizer
    step when a draw, the loss, an energy or a gradient is out of bounds. The step waits
    for the device once, for every number the guard and the metrics need together.

    Returns:
        The step's metrics (``step``, ``loss``, ``energy_data``, ``energy_model``,
        ``energy_gap``, ``acceptance``, ``step_size``, ``grad_norm``, ``lr``) and its latent
        model draws; ``state`` has moved on by one step.
    """
    step = state.step
    z, sampler = _model_draws(ebm, settings, state)
    with torch.no_grad():
        x_model = ebm.transform(z)
        finite = torch.isfinite(x_model)
        # A step with a non-finite draw is refused below; until then its loss is computed
        # on finite stand-ins, so that nothing raises before the guard.
        x_model = torch.where(finite, x_model, torch.zeros_like(x_model))
    # The whole batch is drawn in every process (the generators stay in step), each keeps
    # its block.
    x_data = data[torch.randint(data.shape[0], (settings.batch_size,), device=data.device)]
    if settings.dequantize is not None:
        x_data = dequantize(x_data, settings.dequantize)
    x_data = local_rows(x_data)
    objective = state.objective if state.objective is not None else _Objective(ebm, settings)
    loss, e_data, e_model = objective(x_data, x_model)
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    state.optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    with torch.no_grad():
        values = [finite.all(), loss, e_data.mean(), e_model.mean(), grad_norm, *sampler]
        values.append(torch.maximum(e_data.abs().max(), e_model.abs().max()))
        numbers = _step_numbers(values)
    try:
        _guard(step, numbers, settings)
    except TrainingDiverged:
        state.optimizer.zero_grad()
        raise
    metrics = {"step": step} | {k: numbers[k] for k in _METRICS}
    metrics["energy_gap"] = metrics["energy_data"] - metrics["energy_model"]
    metrics |= {"grad_norm": numbers["grad_norm"], "lr": state.schedule.get_last_lr()[0]}
    state.optimizer.step()
    state.schedule.step()
    state.chains = z if settings.persistent else None
    state.step += 1
    return metrics, z


def _validation(ebm: FlowEBM, heldout: Tensor, z: Tensor) -> dict[str, float]:
    """``val_energy_gap`` and ``val_mmd`` of the model draws ``g(z)`` against held-out points."""
    z = all_chains(z)  # every process's draws
    with torch.no_grad():
        x_model = ebm.transform(z)
        gap = ebm.energy_of(heldout).mean().item() - ebm.energy_of(x_model).mean().item()
        return {
            "val_energy_gap": gap,
            "val_mmd": mmd(x_model.flatten(1), heldout.flatten(1)).item(),
        }


def _prepare_data(
    ebm: FlowEBM, data: Tensor, validation_data: Tensor | None, levels: int | None
) -> tuple[Tensor, Tensor | None]:
    """Training and held-out points in the energy's dtype and device, checked."""
    params = list(ebm.energy.parameters())
    factory = {"dtype": params[0].dtype, "device": params[0].device}
    data = torch.as_tensor(data, **factory)
    check_points("data", data, ebm.event_shape, minimum=2)
    if validation_data is None:
        return data, None
    heldout = torch.as_tensor(validation_data, **factory)
    check_points("validation_data", heldout, ebm.event_shape)
    heldout = heldout[:_MAX_VALIDATION_POINTS]
    if levels is not None:
        # Its own generator: the same noise in a resumed run, and the global generator's
        # stream (which the checkpoints carry) is not touched.
        noise = torch.Generator(heldout.device).manual_seed(0)
        heldout = dequantize(heldout, levels, generator=noise)
    return data, heldout


def _new_state(ebm: FlowEBM, settings: TiltSettings) -> TiltState:
    """The state before the first step: Adam, its schedule, and the HMC kernel with its
    step-size adaptation, which runs for the whole training."""
    groups = [{"params": list(ebm.energy.parameters()), "lr": settings.lr}]
    if settings.finetune_lr is not None:
        flow = list(backbone_modules(ebm).parameters())
        if not flow:
            raise ValueError("expected a backbone with parameters to fine-tune, got none")
        groups.append({"params": flow, "lr": settings.finetune_lr})
    optimizer = torch.optim.Adam(groups, betas=(0.5, 0.999))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    hmc = HMC(
        settings.step_size,
        settings.num_steps,
        target_accept_prob=settings.target_accept_prob,
        compile=settings.compile,
    )
    position = groups[0]["params"][0].new_zeros((1, *ebm.event_shape))
    objective = data_parallel(_Objective(ebm, settings))
    return TiltState(0, None, optimizer, schedule, hmc, hmc.adaptation(position, None), objective)


def fit_ebm(
    ebm: FlowEBM,
    data: Tensor,
    steps: int = 1500,
    *,
    batch_size: int = 256,
    lr: float = 3e-3,
    mcmc_steps: int = 5,
    num_steps: int = 5,
    step_size: float = 0.1,
    target_accept_prob: float = 0.65,
    persistent: bool = True,
    independence_moves: int = 10,
    energy_reg: float = 0.01,
    grad_clip: float = 1.0,
    finetune_lr: float | None = None,
    dequantize: int | None = None,
    validation_data: Tensor | None = None,
    validate_every: int = 100,
    max_energy: float = 1e4,
    checkpoint_every: int = 50,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    on_metrics: Callable[[dict[str, float]], None] | None = None,
    resume: dict[str, Any] | None = None,
    progress_bar: bool = True,
    backbone_lr: float | None = None,
    compile: bool = False,
) -> list[dict[str, float]]:
    r"""Learn the tilt :math:`E` of a FlowEBM by maximum likelihood with latent MCMC.

    The gradient of the average log-likelihood in the energy's parameters :math:`\theta`
    is :math:`-\mathbb E_{\text{data}}[\nabla_\theta E] + \mathbb E_p[\nabla_\theta E]`.
    Each step (:func:`tilt_step`) estimates the model expectation with ``batch_size``
    chains in the flow's latent space (Nijkamp et al., 2022): where the previous step left
    them (persistent chains; the first step's, and with ``persistent=False`` every step's,
    start from :math:`z \sim \mathcal N(0, I)`, the backbone's own draws); moved by
    ``independence_moves`` independence Metropolis steps with the backbone as proposal,
    then ``mcmc_steps`` HMC iterations of ``num_steps`` leapfrog steps; and pushed through
    the flow. The HMC kernel moves on the potential of the model as it is at each step; its
    step size is adapted towards ``target_accept_prob`` by the dual averaging of
    :class:`~pyro_flowebm.infer.HMCAdaptation`, which runs for the whole training.
    ``docs/training.md`` shows what the independence moves, persistent chains and the
    penalty are worth, measured. The loss

    .. math::

        \overline{E(x_\text{data})} - \overline{E(x_\text{model})}
        + \alpha\,\big(\overline{E(x_\text{data})^2} + \overline{E(x_\text{model})^2}\big)

    (``energy_reg`` :math:`= \alpha` keeps energies near zero; the tilt is defined up to
    a constant) is minimized by Adam with :math:`\beta = (0.5, 0.999)`, gradient-norm
    clipping and a cosine decay of the learning rate to zero over ``steps``. With
    ``finetune_lr`` the backbone is fine-tuned jointly on the exact gradient
    :math:`-\overline{\nabla\log q(x_\text{data})} + \overline{\nabla\log q(x_\text{model})}`.

    A guard stops training with :class:`TrainingDiverged` when the loss, a gradient or a
    model draw is non-finite, or an energy exceeds ``max_energy`` in magnitude; it trips
    before the optimizer step, so the parameters are the last good ones.

    In a ``torch.distributed`` run (an initialized default process group, e.g. under
    torchrun) training is data-parallel: ``batch_size`` is the global batch, which the
    number of processes must divide; each process takes its block of every data batch and
    of the chains, the gradients are averaged by ``DistributedDataParallel``, the metrics
    and the guard's numbers are reduced over the processes, and ``on_checkpoint`` receives
    every chain (``docs/scaling.md``). A step in N processes is the step of one process
    with the same batch and chains, up to float rounding. Every process calls ``fit_ebm``
    with the same arguments; the callbacks may be given to the first alone.

    Randomness comes from torch's global generator: seed it (``pyro.set_rng_seed``) for
    a reproducible run. ``on_checkpoint`` receives, every ``checkpoint_every`` steps and
    at the end, everything needed to continue (:meth:`TiltState.state_dict`); passing that
    dict back as ``resume`` continues the run exactly where it stopped (the same final
    weights as an uninterrupted run).

    Args:
        ebm: the model; its energy's parameters (and with ``finetune_lr`` its backbone's)
            are updated in place.
        data: training points ``(n, *event_shape)``, moved to the energy's dtype and device.
        steps: number of training steps.
        batch_size: data points and chains per step.
        lr: Adam's initial learning rate for the energy.
        mcmc_steps: HMC iterations per training step.
        num_steps: leapfrog steps per HMC iteration.
        step_size: initial leapfrog step size.
        target_accept_prob: acceptance the step size is steered to.
        persistent: keep the chains from one step to the next instead of restarting them
            from :math:`\mathcal N(0, I)`.
        independence_moves: independence Metropolis moves per step, before HMC
            (0: HMC alone, as in Nijkamp et al.).
        energy_reg: :math:`\alpha`, the weight of the squared-energy penalty.
        grad_clip: maximum gradient norm.
        finetune_lr: fine-tune the backbone too, with this learning rate.
        dequantize: for quantized data, the number of levels, as in
            :func:`~pyro_flowebm.fit_backbone`: data minibatches (and the held-out points,
            once, with a fixed seed) get uniform dequantization noise, so that the energy
            compares model draws with data on the same continuous scale.
        validation_data: held-out points; every ``validate_every`` steps and at the end
            the metrics get ``val_energy_gap`` (:math:`\overline{E(x_\text{val})} -
            \overline{E(x_\text{model})}`) and ``val_mmd`` (:func:`~pyro_flowebm.metrics.mmd`
            between the step's model draws and at most 1000 held-out points).
        validate_every: steps between validations.
        max_energy: energy magnitude above which training counts as diverged.
        checkpoint_every: steps between calls of ``on_checkpoint`` (0: only at the end).
        on_checkpoint: receives the training state (a dict of tensors and numbers that
            ``torch.save`` stores and ``torch.load(weights_only=True)`` reads back).
        on_metrics: receives each step's metrics as they are computed.
        resume: a training state from ``on_checkpoint`` to continue from.
        progress_bar: a tqdm bar with the loss, energy gap, acceptance and step size.
        backbone_lr: deprecated name of ``finetune_lr``.
        compile: move the chains with gradients through ``torch.compile`` (HMC's and the
            independence moves'): the compile takes seconds (tens on a cold cache), after
            which a step of the chains runs several times faster; the same training up to
            float rounding. Pays on long runs of vector models (``docs/training.md``).

    Returns:
        The metrics of each step run by this call: ``step``, ``loss``, ``energy_data``,
        ``energy_model``, ``energy_gap``, ``acceptance``, ``step_size``, ``grad_norm``,
        ``lr``, and the validation metrics where computed.

    Raises:
        TypeError: a model that is not a FlowEBM, or an energy of another dtype than the
            data (cast to the dtype of the energy's parameters).
        ValueError: bad data (shape, non-finite, fewer than two points) or arguments, or
            an energy not differentiable in its input.
        TrainingDiverged: the guard tripped.

    Example:
        >>> import pyro
        >>> from pyro_flowebm import FlowEBM, flow_backbone, flows
        >>> from pyro_flowebm.nn import MLPEnergy
        >>> pyro.set_rng_seed(0)
        >>> ebm = FlowEBM(flow_backbone(flows.realnvp(2, 2, 8), (2,)), MLPEnergy(2, 16))
        >>> data = torch.randn(500, 2) * 0.3 + 1.0
        >>> history = fit_ebm(ebm, data, steps=50, batch_size=64, progress_bar=False)
        >>> history[-1]["step"], history[-1]["energy_data"] < history[-1]["energy_model"]
        (49, True)

    References:
        Nijkamp, Gao, Hill, Han, Zhu, Wu. MCMC should mix: learning energy-based model
        with neural transport latent space MCMC. ICLR 2022. arXiv:2006.06897.
    """
    if backbone_lr is not None:
        warnings.warn(
            "fit_ebm(backbone_lr=) is deprecated: use finetune_lr=", DeprecationWarning, 2
        )
        finetune_lr = backbone_lr if finetune_lr is None else finetune_lr
    if not isinstance(ebm, FlowEBM):
        raise TypeError(f"expected a FlowEBM, got {type(ebm).__name__}")
    energy_params = list(ebm.energy.parameters()) if isinstance(ebm.energy, nn.Module) else []
    if not energy_params:
        raise ValueError("expected an energy with trainable parameters (an nn.Module), got none")
    settings = TiltSettings(
        steps=steps, batch_size=batch_size, lr=lr, mcmc_steps=mcmc_steps, num_steps=num_steps,
        step_size=step_size, target_accept_prob=target_accept_prob, persistent=persistent,
        independence_moves=independence_moves, energy_reg=energy_reg, grad_clip=grad_clip,
        finetune_lr=finetune_lr, dequantize=dequantize, validate_every=validate_every,
        max_energy=max_energy, checkpoint_every=checkpoint_every, compile=bool(compile),
    )  # fmt: skip
    data, heldout = _prepare_data(ebm, data, validation_data, dequantize)
    # Once, before the first step: an energy without a gradient would not train, and its
    # chains would move on the backbone alone.
    ebm.check_energy(data[: settings.batch_size])
    settings = dataclasses.replace(settings, batch_size=min(settings.batch_size, data.shape[0]))
    callbacks = (on_metrics, on_checkpoint)
    # In a torch.distributed run each process moves its block of the chains and takes its
    # block of every data batch; the objective's gradients are averaged across processes.
    with sharding(settings.batch_size, "a batch size"):
        state = _new_state(ebm, settings)
        if resume is not None:
            state.load_state_dict(ebm, resume)
        progress_bar = progress_bar and process_rank()[0] == 0
        return _train(ebm, (data, heldout), settings, state, callbacks, progress_bar)


def _train(
    ebm: FlowEBM,
    data: tuple[Tensor, Tensor | None],
    settings: TiltSettings,
    state: TiltState,
    callbacks: tuple[Callable[[dict[str, float]], None] | None, Callable[[dict], None] | None],
    progress_bar: bool,
) -> list[dict[str, float]]:
    """The loop of :func:`fit_ebm` from ``state.step`` to ``settings.steps``."""
    (train, heldout), (on_metrics, on_checkpoint) = data, callbacks
    history: list[dict[str, float]] = []
    steps, every = settings.steps, settings.checkpoint_every
    with tqdm(range(state.step, steps), desc="fit EBM", disable=not progress_bar) as bar:
        for step in bar:
            metrics, z = tilt_step(ebm, train, settings, state)
            last = step + 1 == steps
            if heldout is not None and (last or (step + 1) % settings.validate_every == 0):
                metrics |= _validation(ebm, heldout, z)
            history.append(metrics)
            if on_metrics is not None:
                on_metrics(metrics)
            due = last or (every and (step + 1) % every == 0)
            # The snapshot gathers the chains of every process: all take it, whichever
            # of them was given on_checkpoint.
            if due and (on_checkpoint is not None or distributed()):
                snapshot = state.state_dict(ebm)
                if on_checkpoint is not None:
                    on_checkpoint(snapshot)
            if step % 10 == 0:
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in _SHOWN})
    return history
