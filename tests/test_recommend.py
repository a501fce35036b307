"""Using a trained model: recommendations, predictions, similar items, and their commands,
on a model trained on the real MovieLens 100K."""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch

from mtrec.cli import main
from mtrec.data.requests import read_pairs
from mtrec.errors import AmbiguousItemError, ConfigError, UnknownItemError, UnknownUserError
from mtrec.model import MultitaskModel
from mtrec.serving.recommender import Recommender

STAR_WARS = 50
#: What each command needs besides --model.
TARGETS = {"recommend": ["--user", 196], "predict": ["--user", 196, "--item", STAR_WARS], "similar": ["--item", STAR_WARS]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ml100k_split):
    train, _ = ml100k_split
    run = tmp_path_factory.mktemp("run")
    MultitaskModel(seed=0).fit(train, epochs=3).save(run)
    return run


@pytest.fixture(scope="module")
def recommender(run_dir):
    return Recommender.load(run_dir)


def all_scores(model: MultitaskModel, user: int) -> tuple[np.ndarray, np.ndarray]:
    """p and r_hat of every item for one user index, straight from the estimator."""
    items = np.arange(model.data_.num_items)
    return model.predict(np.full_like(items, user), items)


def seen_items(model: MultitaskModel, user: int) -> np.ndarray:
    data = model.data_
    return data.seen_indices[data.seen_indptr[user] : data.seen_indptr[user + 1]]


def heaviest_user(model: MultitaskModel) -> int:
    return int(np.argmax(np.diff(model.data_.seen_indptr)))


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_returns_the_top_k_of_the_watch_scores(recommender, exclude_seen):
    model = recommender.model
    user = heaviest_user(model)
    p, r_hat = all_scores(model, user)
    ranked = p.copy()
    if exclude_seen:
        ranked[seen_items(model, user)] = -np.inf
    expected = np.argsort(-ranked, kind="stable")[:10]
    result = recommender.recommend(model.data_.user_ids[user], k=10, exclude_seen=exclude_seen)
    assert not result.cold_start
    assert [row.rank for row in result.items] == list(range(1, 11))
    assert [row.item for row in result.items] == model.data_.item_ids[expected].tolist()
    assert [row.p for row in result.items] == pytest.approx(p[expected].tolist(), abs=1e-5)
    assert [row.rating_raw for row in result.items] == pytest.approx(r_hat[expected].tolist(), abs=1e-5)
    seen = set(model.data_.item_ids[seen_items(model, user)].tolist())
    recommended_seen = {row.item for row in result.items} & seen
    assert (recommended_seen == set()) if exclude_seen else recommended_seen


def test_watch_score_is_the_share_of_the_catalogue_the_item_outscores(recommender):
    model = recommender.model
    index = recommender.user_index(196)
    p, _ = all_scores(model, index)
    result = recommender.recommend(196, k=20, exclude_seen=False)
    assert result.items[0].watch_score == 1.0
    for row in result.items:
        outscored = np.sum(p < row.p - 1e-6) / (len(p) - 1)
        assert row.watch_score == pytest.approx(outscored, abs=2 / len(p))
    scores = [row.watch_score for row in result.items]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    predicted = recommender.predict([(196, row.item) for row in result.items])
    assert [row.watch_score for row in predicted] == pytest.approx(scores, abs=1 / len(p))


def test_a_user_who_has_seen_almost_everything_gets_fewer_items():
    from conftest import random_interactions

    data = random_interactions(num_users=3, num_items=5, n=14, seed=2)
    recommender = Recommender(MultitaskModel(embedding_dim=4).fit(data, 1))
    counts = np.bincount(data.users, minlength=3)
    user = int(np.argmax(counts))
    result = recommender.recommend(data.user_ids[user], k=10)
    assert len(result.items) == 5 - counts[user]
    assert len(recommender.recommend(data.user_ids[user], k=10, exclude_seen=False).items) == 5


def test_unknown_user_gets_the_most_rated_items_flagged_cold_start(recommender, ml100k_split):
    train, _ = ml100k_split
    counts = np.bincount(train.items, minlength=train.num_items)
    result = recommender.recommend("not-a-user", k=5)
    assert result.cold_start and result.user == "not-a-user"
    assert [row.item for row in result.items] == train.item_ids[np.argsort(-counts, kind="stable")[:5]].tolist()
    assert [row.num_ratings for row in result.items] == sorted(counts, reverse=True)[:5]
    assert all(row.watch_score is None and row.rating is None for row in result.items)


def test_predict_scores_many_pairs_in_one_batch(recommender):
    model = recommender.model
    pairs = [(196, STAR_WARS), ("196", "242"), (1, "Toy Story (1995)"), (943, 1682)]
    predictions = recommender.predict(pairs)
    users = [recommender.user_index(u) for u, _ in pairs]
    items = [recommender.item_index(i) for _, i in pairs]
    p, r_hat = model.predict(users, items)
    assert [(row.user, row.item) for row in predictions] == [(196, 50), (196, 242), (1, 1), (943, 1682)]
    assert [row.p for row in predictions] == pytest.approx(p.tolist(), abs=1e-5)
    assert [row.rating_raw for row in predictions] == pytest.approx(r_hat.tolist(), abs=1e-5)
    assert predictions[2].title == "Toy Story (1995)"
    for row, user in zip(predictions, users):
        scores, _ = all_scores(model, user)
        assert row.watch_score == pytest.approx(np.mean(np.delete(scores, 0) < row.p), abs=2 / len(scores))
    assert recommender.predict([]) == []


def test_predict_names_the_unknown_user_or_item(recommender):
    with pytest.raises(UnknownItemError, match=r"unknown item 'no such film' \(pair 2 of 2\)"):
        recommender.predict([(196, 50), (196, "no such film")])
    with pytest.raises(UnknownUserError, match="unknown user 'stranger'.*cannot score them"):
        recommender.predict([("stranger", 50)])


def test_ratings_are_clipped_to_the_rating_scale_with_the_raw_value_kept(run_dir):
    model = MultitaskModel.load(run_dir)
    with torch.no_grad():
        model.network_.rating_mlp[-1].bias += 10.0  # push every predicted rating above 5
    recommender = Recommender(model)
    rows = recommender.recommend(196, k=5).items + recommender.predict([(196, 50)])
    assert all(row.rating == 5.0 and row.rating_raw > 5.0 for row in rows)


def test_a_model_without_a_rating_head_gives_no_ratings():
    from conftest import random_interactions

    data = random_interactions(ratings=False)
    recommender = Recommender(MultitaskModel(embedding_dim=4, regression_weight=0).fit(data, 1))
    row = recommender.predict([(1, 2)])[0]
    assert row.rating is None and row.rating_raw is None and 0 <= row.watch_score <= 1


@pytest.mark.parametrize("name", [50, "50", "Star Wars (1977)", "star wars (1977)", "STAR WARS", " star wars "])
def test_items_are_named_by_id_or_title(recommender, name):
    assert recommender.item_index(name) == recommender.item_index(STAR_WARS)


def test_an_ambiguous_title_lists_the_candidates(recommender):
    with pytest.raises(AmbiguousItemError, match="'chasing amy' names 2 items; use an item id") as raised:
        recommender.item_index("chasing amy")
    assert raised.value.candidates == [(246, "Chasing Amy (1997)"), (268, "Chasing Amy (1997)")]
    assert recommender.item_index(268) != recommender.item_index(246)


def test_similar_items_are_the_nearest_by_cosine_excluding_the_item(recommender):
    q = recommender.network.item_embeddings.weight.detach().numpy()
    index = recommender.item_index("Star Wars")
    cosine = q @ q[index] / (np.linalg.norm(q, axis=1) * np.linalg.norm(q[index]))
    cosine[index] = -np.inf
    expected = np.argsort(-cosine)[:10]
    result = recommender.similar("Star Wars", k=10)
    assert result.item == STAR_WARS and result.title == "Star Wars (1977)"
    assert [row.item for row in result.items] == recommender.model.data_.item_ids[expected].tolist()
    assert [row.similarity for row in result.items] == pytest.approx(cosine[expected].tolist(), abs=1e-5)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_k_must_be_a_positive_whole_number(recommender, k):
    with pytest.raises(ConfigError, match="k must be a positive whole number"):
        recommender.recommend(196, k=k)
    with pytest.raises(ConfigError, match="k must be a positive whole number"):
        recommender.similar(50, k=k)


@pytest.mark.parametrize(
    "text",
    ["user,item\n196,50\n1,Toy Story (1995)\n", "item\tuser\n50\t196\nToy Story (1995)\t1\n", "196,50\n\n1,Toy Story (1995)\n"],
)
def test_pairs_files_are_csv_or_tsv_with_an_optional_header(tmp_path, text):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    assert read_pairs(path) == [("196", "50"), ("1", "Toy Story (1995)")]


def test_a_pairs_line_without_an_item_names_its_line(tmp_path):
    from mtrec.errors import DataError

    path = tmp_path / "pairs.csv"
    path.write_text("user,item\n196,50\n7\n")
    with pytest.raises(DataError, match="line 3: expected a user and an item"):
        read_pairs(path)


# --- the commands -------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_recommend_prints_a_table_of_titles_scores_and_ratings(run_dir, recommender, capsys):
    code, out, err = run_cli(capsys, "recommend", "--model", run_dir, "--user", 196, "-k", 5)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "top 5 for user 196 (seen items excluded)"
    assert lines[1].split() == ["rank", "item", "title", "genres", "watch", "score", "rating"]
    expected = recommender.recommend(196, k=5).items
    assert len(lines) == 7
    for line, row in zip(lines[2:], expected):
        assert row.title in line and f"{row.watch_score:.3f}" in line and f"{row.rating:.2f}" in line
        assert ", ".join(row.genres) in line


@pytest.mark.parametrize("flag, exclude_seen", [([], True), (["--include-seen"], False)])
def test_recommend_json_matches_the_library(run_dir, recommender, capsys, flag, exclude_seen):
    user = recommender.model.data_.user_ids[heaviest_user(recommender.model)]
    code, out, _ = run_cli(capsys, "recommend", "--model", run_dir, "--user", user, "-k", 10, "--format", "json", *flag)
    document = json.loads(out)
    expected = recommender.recommend(user, k=10, exclude_seen=exclude_seen)
    assert code == 0 and document["exclude_seen"] is exclude_seen
    assert [row["item"] for row in document["items"]] == [row.item for row in expected.items]


def test_recommend_csv_has_one_row_per_item(run_dir, capsys):
    code, out, _ = run_cli(capsys, "recommend", "--model", run_dir, "--user", 196, "-k", 3, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [row["rank"] for row in rows] == ["1", "2", "3"]
    assert {"item", "title", "year", "genres", "watch_score", "p", "rating", "rating_raw"} <= set(rows[0])


def test_recommend_for_an_unknown_user_says_cold_start(run_dir, capsys):
    code, out, _ = run_cli(capsys, "recommend", "--model", run_dir, "--user", "newcomer", "-k", 3)
    assert code == 0
    assert out.splitlines()[0] == "user 'newcomer' is unknown to the model (cold start): the 3 most-rated items"
    assert "Star Wars (1977)" in out.splitlines()[2]


def test_predict_one_pair_by_title(run_dir, recommender, capsys):
    code, out, _ = run_cli(capsys, "predict", "--model", run_dir, "--user", 196, "--item", "star wars", "--format", "json")
    (row,) = json.loads(out)["predictions"]
    expected = recommender.predict([(196, 50)])[0]
    assert code == 0 and row["item"] == 50 and row["watch_score"] == pytest.approx(expected.watch_score)
    assert 1 <= row["rating"] <= 5


def test_predict_a_file_of_pairs(run_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("196\t50\n1\tToy Story (1995)\n")
    code, out, _ = run_cli(capsys, "predict", "--model", run_dir, "--pairs", pairs)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "predicted watch scores and ratings"
    assert "Star Wars (1977)" in lines[2] and "Toy Story (1995)" in lines[3]


def test_similar_by_title(run_dir, recommender, capsys):
    code, out, _ = run_cli(capsys, "similar", "--model", run_dir, "--item", "Star Wars (1977)", "-k", 3)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "the 3 items most similar to 50 Star Wars (1977)"
    for line, row in zip(lines[2:], recommender.similar(50, k=3).items):
        assert row.title in line and f"{row.similarity:.3f}" in line


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["predict", "--user", 196, "--item", "no such film"], 1, "unknown item 'no such film'"),
        (["predict", "--user", "stranger", "--item", 50], 1, "unknown user 'stranger'"),
        (["similar", "--item", "Chasing Amy (1997)"], 1, "names 2 items; use an item id: 246 'Chasing Amy (1997)'"),
        (["predict", "--user", 196], 2, "give --user and --item, or --pairs FILE"),
        (["predict", "--user", 196, "--item", 50, "--pairs", "x.csv"], 2, "not both"),
        (["predict", "--pairs", "/no/such/pairs.csv"], 1, "/no/such/pairs.csv: No such file or directory"),
    ],
)
def test_bad_input_is_one_clear_line(run_dir, capsys, argv, code, message):
    command = argv[0]
    result, out, err = run_cli(capsys, command, "--model", run_dir, *argv[1:])
    assert result == code and out == ""
    assert err.startswith(f"mtrec {command}: error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["recommend", "similar"])
def test_k_must_be_positive_on_the_command_line(run_dir, capsys, command):
    assert main([command, "--model", str(run_dir), *map(str, TARGETS[command]), "-k", "0"]) == 2
    assert "argument -k: must be a positive whole number, got 0" in capsys.readouterr().err


def damaged(run_dir, tmp_path, how):
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    path = copy / "model.safetensors"
    payload = bytearray(path.read_bytes())
    if how == "truncated":
        payload = payload[: len(payload) // 2]
    else:
        payload[-5] ^= 0xFF
    path.write_bytes(bytes(payload))
    return copy


@pytest.mark.parametrize(
    "how, message", [("truncated", "is not a readable mtrec model (truncated or corrupt)"), ("tampered", "failed its integrity check")]
)
@pytest.mark.parametrize("command", ["recommend", "predict", "similar"])
def test_a_damaged_model_is_a_clear_error(run_dir, tmp_path, capsys, how, message, command):
    model = damaged(run_dir, tmp_path, how)
    code, _, err = run_cli(capsys, command, "--model", model, *TARGETS[command])
    assert code == 1 and message in err and len(err.splitlines()) == 1


def test_a_missing_model_directory_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "recommend", "--model", tmp_path / "nothing", "--user", 196)
    assert code == 1 and err == f"mtrec recommend: error: no model file at {tmp_path / 'nothing' / 'model.safetensors'}\n"


def test_help_explains_the_watch_score(capsys):
    assert main(["recommend", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "rank percentile of the model's raw score p among all items for the user" in help_text


@pytest.mark.slow
def test_a_closed_pipe_ends_the_output_quietly(run_dir):
    import subprocess
    import sys

    command = [sys.executable, "-m", "mtrec.cli", "recommend", "--model", str(run_dir), "--user", "196", "-k", "1000", "--format", "json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`, long before the ~300 KB of output (a pipe holds 64 KB)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert stderr == ""
