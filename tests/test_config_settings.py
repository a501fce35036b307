"""Typed settings: each setting declared once (its default, type, range, choices and description),
errors that name the setting's path in the library and its flag on the command line, data specs
whose sources and splits are tagged unions, and command-line flags made from the declarations."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import typing
import warnings

import pytest
import torch
from conftest import random_interactions

from mtrec.cli import main
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.config import PRESETS, ModelConfig, RunConfig, flag, preset_settings
from mtrec.data.spec import DataSpec, MovieLens, RatingsFile
from mtrec.data.split_methods import SPLIT_CLASSES, SPLITS, CanonicalSplit, TemporalCutoffSplit, UserLeaveKSplit, UserShareSplit
from mtrec.errors import ConfigError
from mtrec.model import MultitaskModel
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.nn.network import SHARINGS
from mtrec.settings import Choices, SettingsError, unwrapped
from mtrec.train.distributed import local_device


def parser(default_preset: str = "seed") -> argparse.ArgumentParser:
    made = argparse.ArgumentParser()
    add_run_arguments(made, default_preset)
    return made


def parse(*argv: str) -> RunConfig:
    return run_config(parser().parse_args(list(argv)))


# ---------------------------------------------------------------------------------------------
# One declaration per setting


def test_the_estimators_keyword_parameters_are_the_model_configs_fields_with_the_same_defaults():
    """scikit-learn needs the constructor's keywords; ModelConfig declares them, and they agree."""
    signature = inspect.signature(MultitaskModel.__init__).parameters
    declared = {name: field.default for name, field in ModelConfig.model_fields.items()}
    assert {name: p.default for name, p in signature.items() if name != "self"} == declared
    assert list(MultitaskModel().get_params()) == list(declared)


def test_a_model_config_is_read_by_attribute_and_by_name_and_is_frozen():
    config = RunConfig(model={"embedding_dim": 8}).model
    assert config.embedding_dim == config["embedding_dim"] == 8 and config.layer_sizes == [24, 64]
    assert "sharing" in config and "embedding_sharing" not in config and config.get("colour", 1) == 1
    with pytest.raises(KeyError):
        config["colour"]
    with pytest.raises(ValueError, match="frozen"):
        config.embedding_dim = 4


def test_numpy_numbers_are_numbers_and_the_models_seed_seeds_the_split():
    import numpy as np

    config = RunConfig(model={"seed": np.int64(3), "learning_rate": np.float32(0.5), "rating_bias": np.bool_(True)})
    assert (config.seed, config.data.seed, config.model.rating_bias) == (3, 3, True) and type(config.seed) is int
    assert json.loads(json.dumps(config.to_json()))["data"]["split"]["seed"] == 3


def test_choices_are_read_from_the_registries_when_checked(monkeypatch):
    monkeypatch.setitem(WATCH_LOSSES._members, "squared", WATCH_LOSSES["bpr"])
    assert ModelConfig(watch_loss="squared").watch_loss == "squared"
    monkeypatch.delitem(WATCH_LOSSES._members, "squared")
    with pytest.raises(ConfigError, match="^watch_loss: unknown watch loss 'squared'; use one of bpr, logsigmoid, sampled-softmax, softmax$"):
        ModelConfig(watch_loss="squared")


# ---------------------------------------------------------------------------------------------
# Errors: the setting's path in the library, its flag on the command line


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": {"learning_rate": -1}}, "model.learning_rate: must be a positive number, got -1"),
        ({"model": {"layer_sizes": [96, 0]}}, "model.layer_sizes[1]: must be a positive whole number, got 0"),
        ({"model": {"negatives": 1001}}, "model.negatives: must be a whole number from 1 to 1000, got 1001"),
        ({"model": {"sharing": "soft"}}, "model.sharing: unknown sharing 'soft'; use one of hard, separate, residual, cross-stitch"),
        ({"model": {"factorization_weight": 0, "regression_weight": 0}}, "model: factorization_weight and regression_weight cannot both be 0"),
        ({"data": {"split": "user", "leave_k": 0}}, "data.split.leave_k: must be a positive whole number, got 0"),
        ({"data": {"leave_k": 1}}, "data.split: leave_k applies to split user, not split random"),
        ({"data": {"split": "user", "leave_k": 1, "valid_fraction": 0.1}}, "data.split: valid_fraction does not fit a test set of K per user"),
        ({"data": {"items": "titles.csv"}}, "data.source: items applies to ratings files only"),
        (
            {"data": {"split": "spring"}},
            "data.split.method: must be one of random, user, temporal, cold-items, cold-users, u1, u2, u3, u4, u5, ua, ub, got 'spring'",
        ),
        ({"epochs": 0, "k": [10, 0]}, "epochs: must be a positive whole number, got 0; k[1]: must be a positive whole number, got 0"),
        ({"early_stopping": "mrr"}, "early_stopping mrr needs a validation set: give valid_fraction (or valid_k)"),
        ({"early_stopping": "auc", "data": {"valid_fraction": 0.1}}, "early_stopping: unknown early-stopping criterion 'auc'"),
    ],
)
def test_the_library_names_the_settings_path_and_what_it_allows_never_a_flag(settings, message):
    with pytest.raises(SettingsError) as caught:
        RunConfig(**settings)
    assert str(caught.value).startswith(message) and "--" not in str(caught.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning-rate", "-1"], "argument --learning-rate: must be a positive number, got -1.0"),
        (["--layer-sizes", "96", "0"], "argument --layer-sizes: must be a positive whole number, got 0"),
        (["--threads", "0"], "argument --threads: must be a positive whole number, got 0"),
        (["--leave-k", "1"], "--leave-k applies to --split user, not --split random"),
        (
            ["--split", "user", "--leave-k", "1", "--valid-fraction", "0.1"],
            "--valid-fraction does not fit a test set of K per user: the validation set is carved by the same rule, so give --valid-k",
        ),
        (["--dataset", "1m", "--split", "u1"], "--split u1 is one of MovieLens 100K's own splits: use it with --dataset 100k"),
        (["--early-stopping", "mrr"], "--early-stopping mrr needs a validation set: give --valid-fraction (or --valid-k)"),
    ],
)
def test_the_command_line_names_the_flag_exits_2_and_shows_no_traceback(argv, message, tmp_path, capsys):
    assert main(["train", "--preset", "seed", "--logdir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"mtrec train: error: {message} (see 'mtrec train --help')\n"
    assert not (tmp_path / "r").exists()


def test_a_config_json_error_names_the_field_as_config_json_has_it(tmp_path):
    document = RunConfig().to_json()
    document["training"]["epochs"] = 0
    document["speed"]["num_threads"] = 0
    with pytest.raises(ConfigError, match=r"^speed.num_threads: must be a positive whole number, got 0; training.epochs: must be"):
        RunConfig.from_json(document)


# ---------------------------------------------------------------------------------------------
# The data spec: tagged unions of sources and splits


@pytest.mark.parametrize(
    "options, source, split",
    [
        ({}, MovieLens, "RandomSplit"),
        ({"ratings": "r.csv", "sep": ";"}, RatingsFile, "RandomSplit"),
        ({"split": "user", "leave_k": 2}, MovieLens, UserLeaveKSplit),
        ({"split": "user", "test_fraction": 0.2}, MovieLens, UserShareSplit),
        ({"split": "temporal", "cutoff": 893286638}, MovieLens, TemporalCutoffSplit),
        ({"split": "u3", "valid_fraction": 0.1}, MovieLens, CanonicalSplit),
    ],
)
def test_the_options_choose_the_source_and_the_split_and_survive_json(options, source, split):
    spec = DataSpec(**options, seed=3)
    assert isinstance(spec.source, source) and type(spec.split).__name__ == getattr(split, "__name__", split)
    assert DataSpec.from_json(json.loads(json.dumps(spec.to_json()))).with_seed(3) == spec
    assert DataSpec(source=spec.source, split=spec.split, seed=3) == spec


def test_each_split_class_takes_only_its_own_options():
    for member in SPLIT_CLASSES:
        options = [name for name in ("test_fraction", "leave_k", "cutoff", "last_k", "valid_fraction", "valid_k") if name in member.model_fields]
        assert len([name for name in options if name in ("test_fraction", "leave_k", "cutoff", "last_k")]) <= 1, member
        assert len([name for name in options if name.startswith("valid_")]) == 1, member
    assert {method for member in SPLIT_CLASSES for method in member.methods()} == set(SPLITS)


def test_a_time_cutoff_is_kept_as_text_and_a_replaced_source_takes_no_option_of_the_old_one():
    assert DataSpec(split="temporal", cutoff=893286638).split.cutoff == "893286638"
    spec = DataSpec(ratings="r.csv").replace(dataset="1m")
    assert spec.source == MovieLens(dataset="1m")
    assert DataSpec(split="user", leave_k=1).replace(split="random", leave_k=None).split.method == "random"


# ---------------------------------------------------------------------------------------------
# The flags are made from the declarations

#: Flags that are no setting: the starting point, where data lives, where runs are tracked.
NOT_SETTINGS = {"help", "preset", "data_dir", "tracker", "tracking_uri"}
#: The seed's spellings of two values of --sharing.
SPELLINGS = {"--shared-embeddings": "hard", "--no-shared-embeddings": "separate"}


def expected_choices(field) -> list[str] | None:
    annotation, metadata = unwrapped(field.annotation, list(field.metadata))
    if typing.get_origin(annotation) in (list, tuple):  # its items' choices
        annotation, metadata = unwrapped(typing.get_args(annotation)[0], [])
    choices = next((item for item in metadata if isinstance(item, Choices)), None)
    return None if choices is None else list(choices.names())


@pytest.mark.parametrize("default_preset", PRESETS)
def test_every_flag_is_a_setting_with_its_default_and_choices_and_every_setting_has_a_flag(default_preset):
    made, fields = parser(default_preset), RunConfig.option_fields()
    reached = set()
    for action in made._actions:
        if action.dest in NOT_SETTINGS:
            continue
        if isinstance(action, argparse._StoreConstAction):
            assert SPELLINGS[action.option_strings[0]] == action.const and action.const in SHARINGS
            continue
        field = fields[action.dest]
        assert flag(action.dest) in action.option_strings and action.default is argparse.SUPPRESS
        assert (list(action.choices) if action.choices else None) == expected_choices(field), action.dest
        if field.description:
            assert action.help.startswith(field.description.split("{")[0].replace("%", "%%")), action.dest
        check_the_documented_default(made, action, field, default_preset)
        reached.add(action.dest)
    assert reached == set(fields)


def check_the_documented_default(made: argparse.ArgumentParser, action: argparse.Action, field, default_preset: str) -> None:
    """The default the help names is the preset's value of the setting, read back by the flag itself."""
    default = preset_settings(default_preset).get(action.dest, field.default)
    found = re.search(r"\(.*?default ([^;,)]+)", action.help or "")
    if default is None or found is None:
        assert default is None or field.is_required(), action.dest
        return
    if isinstance(default, bool):
        words = [action.option_strings[0] if found[1] == "yes" else action.option_strings[1]]
    else:
        words = [action.option_strings[0], *found[1].split()]
    config = run_config(made.parse_args([*words, "--preset", default_preset]))
    path = RunConfig.option_paths()[action.dest].split(".")
    value = config
    for part in path:
        value = getattr(value, part)
    assert (list(value) if isinstance(value, tuple) else value) == (list(default) if isinstance(default, tuple) else default), action.dest


# ---------------------------------------------------------------------------------------------
# What the command line did beyond mapping options, now the library's


def test_data_without_ratings_trains_the_watch_head_alone_and_the_library_warns_once():
    config = RunConfig(model={"factorization_weight": 0.0, "regression_weight": 0.5})
    with pytest.warns(UserWarning, match="the data has no rating column, so the rating head cannot train"):
        resolved = config.for_data(random_interactions(ratings=False))
    assert (resolved.model.factorization_weight, resolved.model.regression_weight) == (1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.for_data(random_interactions()) is config and resolved.for_data(random_interactions(ratings=False)) is resolved


def test_a_torchrun_process_keeps_a_cpu_device():
    import torch

    assert local_device(torch.device("cpu")) == torch.device("cpu")


def test_errors_found_after_the_settings_are_made_name_settings_in_the_library_and_flags_on_the_command_line():
    from conftest import random_interactions

    from mtrec.errors import ConfigError
    from mtrec.train.memory import check_memory

    with pytest.raises(ConfigError) as caught:
        check_memory({"embedding_dim": 1e30, "batch_size": 1.0}, torch.device("cpu"))
    assert str(caught.value).endswith("most of it for embedding_dim: lower it") and "--" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        MultitaskModel().fit(random_interactions(), 1, early_stopping="mrr")
    assert "validation set (fit's validation; a run's valid_fraction or valid_k)" in str(caught.value)
    from mtrec.cli.options import flag_message

    assert flag_message(caught.value).endswith("(fit's validation; a run's --valid-fraction or --valid-k)")


def test_a_run_configs_model_unpacks_into_the_estimator_as_the_dict_of_0_2_did():
    from mtrec.config import preset

    config = preset("quality")
    model = MultitaskModel(**config.model)
    assert model.get_params() == config.model.params() and dict(**config.model)["batch_size"] == 6000
