"""The history encoder: U[u] + |N(u)|^-α Σ Y[j] over the user's training items, pooled in one
embedding_bag, with seeded, resumable dropout, a cap, and instant fold-in."""

from __future__ import annotations

import pytest
import torch
from conftest import random_interactions

from mtrec.errors import ConfigError
from mtrec.nn.encoders import HistoryEncoder
from mtrec.nn.network import USER_ENCODERS, MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.serving.foldin import fold_in
from mtrec.train.loop import Trainer
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import make_step

HISTORIES = {0: [1, 3, 4], 1: [], 2: [0, 1, 2, 3, 4, 5, 6], 3: [6]}


def history_net(**settings) -> MultitaskNet:
    torch.manual_seed(0)
    net = MultitaskNet(4, 8, embedding_dim=3, user_encoder="history", encoder_settings=settings)
    with torch.no_grad():
        net.history_embeddings.weight.normal_()
    indptr = torch.tensor([0, *torch.cumsum(torch.tensor([len(h) for h in HISTORIES.values()]), 0).tolist()])
    return net.use_histories(indptr, [item for history in HISTORIES.values() for item in history])


@pytest.mark.parametrize("alpha, cap", [(0.5, 1000), (0.0, 1000), (1.0, 3)])
def test_the_pool_is_the_normalised_sum_of_the_users_item_vectors(alpha, cap):
    net = history_net(alpha=alpha, cap=cap).eval()
    users = torch.tensor([2, 0, 1, 3, 0])
    got = net.user_vectors(users)
    for row, user in enumerate(users.tolist()):
        items = HISTORIES[user][:cap]  # the cap keeps the lowest item indices
        pooled = net.history_embeddings.weight[items].sum(0) * max(len(items), 1) ** -alpha if items else torch.zeros(3)
        torch.testing.assert_close(got[row], net.user_embeddings.weight[user] + pooled)
    assert torch.equal(got[2], net.user_embeddings.weight[1])  # no history: the free vector alone


def test_dropout_is_seeded_counted_and_resumable():
    a, b = history_net(dropout=0.5, seed=3).train(), history_net(dropout=0.5, seed=3).train()
    users = torch.tensor([0, 2, 2])
    first = a.user_vectors(users)
    assert torch.equal(first, b.user_vectors(users))  # the same seed draws the same
    assert not torch.equal(first, a.user_vectors(users))  # each pool draws anew
    assert int(a.history_draws) == 2 and "history_draws" in a.state_dict()
    b.load_state_dict(a.state_dict())  # a checkpoint carries the count: the next draw is the same
    assert torch.equal(a.user_vectors(users), b.user_vectors(users))
    evaluated = a.eval()
    assert torch.equal(evaluated.user_vectors(users), evaluated.user_vectors(users))  # no dropout when evaluating


def test_bad_settings_are_refused_naming_the_allowed_values():
    for settings, message in [
        ({"alpha": 2}, "history_alpha must be a number from 0 to 1, got 2"),
        ({"dropout": 1.0}, "history_dropout must be a number from 0 to below 1, got 1.0"),
        ({"cap": 0}, "history_cap must be a positive whole number, got 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MultitaskNet(4, 8, 3, user_encoder="history", encoder_settings=settings)
    assert "history" in USER_ENCODERS.names()


def test_a_history_aware_network_trains_with_autograd_and_learns_its_item_vectors():
    data = random_interactions(num_users=30, num_items=40, n=600, seed=2)
    torch.manual_seed(0)
    net = MultitaskNet(30, 40, 8, user_encoder="history", encoder_settings={"dropout": 0.2}).use_histories(*data.seen_items_csr())
    step = make_step("auto", net, JointObjective(), learning_rate=0.05)
    assert step.kind == "autograd"
    history = Trainer(step, EpochSampler(data, 0, torch.device("cpu"), True), 64, 3, {}).run()
    assert history[-1].train_loss < history[0].train_loss
    assert net.history_embeddings.weight.abs().sum() > 0  # Y starts at zero and learns


def test_fold_in_reads_a_new_users_history_instantly_and_resizing_keeps_the_settings():
    net = history_net(alpha=0.5, dropout=0.3, cap=50).eval()
    one = fold_in(net, JointObjective({"watch": 1.0, "rating": 0.0}), items=[1, 3, 4], steps=0)
    assert one.structure()["encoder_settings"] == net.structure()["encoder_settings"]
    # the user starts at the mean of the users that trained (those with a history: not user 1's untrained row)
    trained = [user for user, history in enumerate(HISTORIES.values()) if history]
    assert len(trained) < len(HISTORIES)
    expected = net.user_embeddings.weight[trained].mean(0) + net.history_embeddings.weight[[1, 3, 4]].sum(0) / 3**0.5
    torch.testing.assert_close(one.user_vectors(torch.tensor([0]))[0], expected)
    assert isinstance(net._encoder, HistoryEncoder)


@pytest.mark.parametrize("encoder", ["id", "history"])
def test_scores_against_several_items_make_each_users_vector_once_and_equal_pair_by_pair(encoder):
    torch.manual_seed(1)
    net = MultitaskNet(4, 8, 3, user_encoder=encoder).use_histories(torch.tensor([0, 2, 2, 5, 6]), torch.tensor([1, 2, 0, 3, 7, 5]))
    users, items = torch.tensor([0, 2, 3]), torch.tensor([[1, 4, 5, 7], [0, 0, 6, 2], [3, 3, 3, 1]])
    pairs = net.watch_score(users.repeat_interleave(4), items.reshape(-1)).view(3, 4)
    torch.testing.assert_close(net.watch_scores(users, items), pairs)


def test_the_same_batch_gives_the_same_gradients_bit_for_bit_with_two_threads():
    """A large batch of few users: indexing's backward (``pooled[inverse]``, ``scores[inverse, items]``)
    adds a user's rows with threads racing, so one seed could train two ways; index_select's does not."""
    from mtrec.nn.batch import Batch
    from mtrec.nn.losses import WATCH_LOSSES

    torch.manual_seed(0)
    net = MultitaskNet(4, 8, embedding_dim=16, user_encoder="history").train()
    with torch.no_grad():
        for table in (net.history_embeddings, net.item_embeddings, net.user_embeddings):
            table.weight.normal_()
    indptr = torch.tensor([0, *torch.cumsum(torch.tensor([len(h) for h in HISTORIES.values()]), 0).tolist()])
    net.use_histories(indptr, [item for history in HISTORIES.values() for item in history])
    generator = torch.Generator().manual_seed(1)
    users = torch.randint(0, 4, (4096,), generator=generator)  # 4096 x 16 rows of the pools' gradient: threads split it
    batch = Batch(users, torch.randint(0, 8, (4096,), generator=generator), torch.randint(0, 8, (4096,), generator=generator))
    outputs = torch.randn(4096, 16, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(8):
            net.zero_grad()
            ((net.user_vectors(users) * outputs).sum() + WATCH_LOSSES["softmax"]()(net, batch)).backward()
            grads.append([net.history_embeddings.weight.grad.clone(), net.item_embeddings.weight.grad.clone()])
    finally:
        torch.set_num_threads(threads)
    for grad in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grad, grads[0]))
