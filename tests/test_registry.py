"""Components by name: a registry lists its members in order, refuses an unknown name listing the
registered ones and a name registered twice, and what offers a choice reads it (the command line, the
tuner, the fused step's claims)."""

import itertools

import numpy as np
import pytest
import torch

from mtrec.cli import main
from mtrec.errors import ConfigError
from mtrec.nn.losses import WATCH_LOSSES, PairwiseLoss
from mtrec.nn.network import SHARINGS, USER_ENCODERS, MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.nn.tasks import RATING_LOSSES
from mtrec.nn.weighting import WEIGHTINGS, make_weighting
from mtrec.registry import Registry
from mtrec.studies.tuning import SEARCH_SPACE
from mtrec.train.loop import SCHEDULES, make_scheduler
from mtrec.train.steps import FusedStep, resolve_step


def test_a_registry_keeps_its_members_in_order_and_refuses_unknown_and_repeated_names():
    colours = Registry("colour")
    colours.register("red")(1)
    colours.register("blue")(2)
    assert colours.names() == ("red", "blue") and list(colours) == ["red", "blue"] and len(colours) == 2
    assert colours["blue"] == 2 and "red" in colours and "green" not in colours
    with pytest.raises(ConfigError, match="^unknown colour 'green'; use one of red, blue$"):
        colours["green"]
    with pytest.raises(ConfigError, match="^unknown colour 3; use one of red, blue$"):
        colours.check(3)
    with pytest.raises(ValueError, match="a colour named 'red' is already registered"):
        colours.register("red")(3)
    assert colours.names() == ("red", "blue")


def test_the_librarys_components_are_registered_in_the_order_they_are_offered():
    assert WATCH_LOSSES.names() == ("bpr", "logsigmoid", "sampled-softmax", "softmax")
    assert WEIGHTINGS.names() == ("fixed", "uncertainty", "gradnorm", "pcgrad", "mgda")
    assert SCHEDULES.names() == ("constant", "exponential", "cosine", "step")
    claims = FusedStep.claims()
    assert set(claims["watch_loss"]) <= set(WATCH_LOSSES) and set(claims["weighting"]) <= set(WEIGHTINGS)
    assert SEARCH_SPACE["watch_loss"] == ("categorical", ["bpr", "logsigmoid", "softmax"])  # the losses whose class says searched


#: Every registry of a component the fused step may claim, by the name its claims use.
CLAIMABLE = {"sharing": SHARINGS, "user_encoder": USER_ENCODERS, "watch_loss": WATCH_LOSSES, "rating_loss": RATING_LOSSES, "weighting": WEIGHTINGS}


def test_auto_takes_the_fused_step_exactly_where_it_claims_every_component():
    claims = FusedStep.claims()
    assert set(claims) == set(CLAIMABLE)
    for kind, names in claims.items():
        assert set(names) <= set(CLAIMABLE[kind]), kind
    networks = {}
    for combination in itertools.product(*(registry.names() for registry in CLAIMABLE.values())):
        chosen = dict(zip(CLAIMABLE, combination))
        shape = (chosen["sharing"], chosen["user_encoder"])
        if shape not in networks:
            with torch.device("meta"):
                networks[shape] = MultitaskNet(3, 4, 8, sharing=shape[0], user_encoder=shape[1])
        objective = JointObjective(watch_loss=chosen["watch_loss"], rating_loss=chosen["rating_loss"], weighting=chosen["weighting"])
        claimed = all(chosen[kind] in claims[kind] for kind in claims)
        assert resolve_step("auto", networks[shape], objective) == ("fused" if claimed else "autograd"), chosen


def test_unknown_weightings_and_schedules_are_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="^unknown weighting 'equal'; use one of fixed, uncertainty, gradnorm, pcgrad, mgda$"):
        make_weighting("equal", {"watch": 0.5, "rating": 0.5})
    with pytest.raises(ConfigError, match="^unknown learning-rate schedule 'linear'; use one of constant, exponential, cosine, step$"):
        make_scheduler(None, "linear", 10, 0.9, 5)
    assert make_weighting("gradnorm", {"watch": 0.5, "rating": 0.5}, gradnorm_alpha=0.7).alpha == 0.7


class Squared(PairwiseLoss):
    summary = "mean((1 - (p+ - p-))^2)"

    def terms(self, margin):
        return (1.0 - margin).square()


def test_a_registered_watch_loss_is_offered_and_described_by_the_command_line(monkeypatch, capsys):
    monkeypatch.setitem(WATCH_LOSSES._members, "squared", Squared)
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--watch-loss {bpr,logsigmoid,sampled-softmax,softmax,squared}" in help_text
    assert "squared: mean((1 - (p+ - p-))^2)" in help_text


@pytest.mark.parametrize("sharing", SHARINGS.names())
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_every_configuration_the_command_line_offers_trains_on_every_step_that_claims_it(sharing, weighting):
    from conftest import random_interactions

    from mtrec.model import MultitaskModel

    data = random_interactions(num_users=20, num_items=30, n=300, seed=5)
    for watch_loss, schedule in itertools.product(WATCH_LOSSES.names(), SCHEDULES.names()):
        settings = dict(sharing=sharing, weighting=weighting, watch_loss=watch_loss, lr_schedule=schedule)
        steps = ["autograd"]
        model = MultitaskModel(embedding_dim=4, batch_size=100, learning_rate=0.01, seed=1, **settings)
        if model.resolved_step() == "fused":
            steps.append("fused")
        for step in steps:
            fitted = MultitaskModel(embedding_dim=4, batch_size=100, learning_rate=0.01, seed=1, step=step, **settings).fit(data, 2)
            record = fitted.history_[-1]
            assert fitted.step_ == step and np.isfinite(record.train_loss), (settings, step)
            assert all(np.isfinite(value) for value in record.train_losses.values()), (settings, step)
