"""The run configuration: every default written once, in the library, and read from there."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

import pytest

from pyro_flowebm import fit_backbone, fit_ebm
from pyro_flowebm.app import IMAGE_DEFAULTS, RunConfig, default_of, evaluate_run, sample_run
from pyro_flowebm.app.cli import main
from pyro_flowebm.app.config import COMPILE_MIN_GRADIENTS
from pyro_flowebm.infer import sample_ebm
from pyro_flowebm.train import TiltSettings

# RunConfig fields that are arguments of a library function under another name.
RENAMED = {"backbone_steps": (fit_backbone, "steps"), "backbone_lr": (fit_backbone, "lr")}
# RunConfig fields that belong to a run alone (data split, model size, where it runs).
RUN_ONLY = {
    "data", "seed", "device", "num_data", "num_heldout", "heldout_fraction", "backbone",
    "backbone_levels", "backbone_layers", "backbone_hidden", "energy_layers", "energy_hidden",
}  # fmt: skip


def library_home(field: str) -> tuple[object, str]:
    if field in RENAMED:
        return RENAMED[field]
    assert field in inspect.signature(fit_ebm).parameters, field
    return fit_ebm, field


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def stated_defaults(text: str) -> dict[str, str]:
    """``--flag`` -> the "(default: ...)" its entry in the options of a help text states."""
    options = text.split("options:", 1)[1]
    entries = re.split(r" (?=--[a-z][a-z-]* )", options)
    found = {}
    for entry in entries:
        flag = entry.split(" ", 1)[0]
        default = re.search(r"\(default: ([^;)]+)", entry)
        if flag.startswith("--") and default:
            found[flag] = default.group(1).strip()
    return found


def help_defaults(command: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    return stated_defaults(help_text(command, capsys))


def test_every_training_default_of_the_config_is_the_library_s():
    config = RunConfig()
    for field in dataclasses.fields(RunConfig):
        if field.name in RUN_ONLY:
            continue
        function, name = library_home(field.name)
        assert getattr(config, field.name) == default_of(function, name), field.name


def test_the_config_checks_its_training_fields_as_fit_ebm_does():
    for field, value, message in [
        ("mcmc_steps", 0, "expected mcmc_steps >= 1, got 0"),
        ("lr", -1.0, "expected lr > 0, got -1.0"),
        ("energy_reg", -0.5, "expected energy_reg >= 0, got -0.5"),
        ("checkpoint_every", -1, "expected checkpoint_every >= 0, got -1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            RunConfig(**{field: value})
        kwargs = {f.name: default_of(fit_ebm, f.name) for f in dataclasses.fields(TiltSettings)}
        with pytest.raises(ValueError, match=re.escape(message)):
            TiltSettings(**(kwargs | {field: value}))


def test_the_train_command_states_the_config_s_defaults(capsys):
    text = help_text("train", capsys)
    stated = stated_defaults(text)
    config = RunConfig()
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name in ("data", "persistent", "compile"):
            continue
        assert stated[flag] == str(getattr(config, field.name)), flag
    for field, value in IMAGE_DEFAULTS.items():  # the image preset, stated beside
        assert f"{getattr(config, field)}; images: {value}" in text, field
    assert f"at least {COMPILE_MIN_GRADIENTS:,} gradient" in " ".join(text.split())


def test_the_chains_are_compiled_where_it_pays_and_old_runs_stay_eager():
    per_step = 5 * 5 + 10  # mcmc_steps x num_steps + independence_moves, the defaults
    enough = math.ceil(COMPILE_MIN_GRADIENTS / per_step)
    assert RunConfig.for_data("rings", steps=enough).compile
    assert not RunConfig.for_data("rings", steps=enough - 1).compile
    assert RunConfig.for_data("eight_gaussians").compile  # the demo's run
    assert not RunConfig.for_data("digits", steps=10**6).compile  # images: never by default
    assert not RunConfig.for_data("rings", compile=False).compile
    assert RunConfig.for_data("rings", steps=2, compile=True).compile
    assert not RunConfig().compile  # the library's default
    written_before = RunConfig.for_data("rings").to_dict()
    del written_before["compile"]
    assert RunConfig.from_dict(written_before).compile is False


def test_the_sample_and_evaluate_commands_take_the_library_s_defaults(capsys):
    sample = help_defaults("sample", capsys)
    for flag, name in [("--num-chains", "num_chains"), ("--num-samples", "num_samples"),
                       ("--warmup-steps", "warmup_steps"), ("--thin", "thin"), ("--seed", "seed"),
                       ("--sampler", "sampler")]:  # fmt: skip
        assert sample[flag] == str(default_of(sample_ebm, name)), flag
        assert default_of(sample_run, name) == default_of(sample_ebm, name)
    evaluate = help_defaults("evaluate", capsys)
    for flag, name in [("--num-draws", "num_draws"), ("--seed", "seed")]:
        assert evaluate[flag] == str(default_of(evaluate_run, name)), flag


def test_default_of_refuses_a_parameter_without_one():
    with pytest.raises(ValueError, match=r"expected a default for fit_ebm\(data=\)"):
        default_of(fit_ebm, "data")
