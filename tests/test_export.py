"""`mtrec export`: ONNX graphs that score like the PyTorch model (every sharing mode, rating biases),
Parquet tables that reproduce the watch score from the files alone, atomic and verified exports,
and the bad input a user can give."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
from conftest import random_interactions
from torch import nn

from mtrec.cli import main
from mtrec.config import preset
from mtrec.errors import ConfigError, ModelFileError
from mtrec.model import MultitaskModel
from mtrec.nn.network import SHARINGS
from mtrec.runs import train_run
from mtrec.serving.export import export_model, export_run, verify_export


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ml100k_split):
    """A complete run trained for 2 epochs on the real MovieLens 100K."""
    train, test = ml100k_split
    logdir = tmp_path_factory.mktemp("runs") / "run"
    train_run(preset("seed").replace(epochs=2), train, None, test, logdir)
    return logdir


@pytest.fixture(scope="module")
def model(run_dir):
    return MultitaskModel.load(run_dir)


class OnnxModel:
    """The three exported graphs in onnxruntime, combined as model.json says."""

    def __init__(self, folder):
        self.description = json.loads((folder / "model.json").read_text())
        self.sessions = {name: ort.InferenceSession(str(folder / file)) for name, file in self.description["graphs"].items()}

    def encode(self, side: str, indices: np.ndarray) -> dict[str, np.ndarray]:
        session = self.sessions[f"{side}_encoder"]
        outputs = session.run(None, {f"{side}s": indices.astype(np.int64)})
        return dict(zip([output.name for output in session.get_outputs()], outputs))

    def scores(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, q = self.encode("user", users), self.encode("item", items)
        p = (u["watch_vectors"] * q["watch_vectors"]).sum(1) + u["watch_biases"] + q["watch_biases"]
        (r_hat,) = self.sessions["rating_head"].run(None, {
            "user_vectors": u["rating_vectors"], "item_vectors": q["rating_vectors"],
            "user_biases": u["rating_biases"], "item_biases": q["rating_biases"],
        })  # fmt: skip
        return p, r_hat


# ---------------------------------------------------------------------------------------------
# ONNX


def test_onnx_export_scores_10000_pairs_like_pytorch_and_ranks_the_same_top_10(run_dir, model, tmp_path, capsys):
    target = tmp_path / "onnx"
    code, out, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "onnx")
    assert code == 0 and err == ""
    assert out.startswith(f"exported {run_dir} as onnx to {target}")
    exported = OnnxModel(target)
    data = model.data_
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, data.num_users, 10_000), rng.integers(0, data.num_items, 10_000)
    p, r_hat = exported.scores(users, items)
    p_torch, r_torch = model.predict(users, items)
    assert np.abs(p - p_torch).max() <= 1e-5
    assert np.abs(r_hat - r_torch).max() <= 1e-5
    hundred = rng.choice(data.num_users, 100, replace=False)
    u, q = exported.encode("user", hundred), exported.encode("item", np.arange(data.num_items))
    p_all = u["watch_vectors"] @ q["watch_vectors"].T + u["watch_biases"][:, None] + q["watch_biases"][None]
    with torch.no_grad():
        torch_all = model.network_.all_watch_scores(torch.as_tensor(hundred)).numpy()
    assert np.array_equal(np.argsort(-p_all, 1, kind="stable")[:, :10], np.argsort(-torch_all, 1, kind="stable")[:, :10])
    assert exported.description["user_ids"] == data.user_ids.tolist()
    assert exported.description["item_ids"] == data.item_ids.tolist()
    assert exported.description["rating_scale"] == [1.0, 5.0] and exported.description["sharing"] == "hard"


def test_onnx_graphs_have_dynamic_batch_dimensions(run_dir, tmp_path):
    import onnx

    target = export_run(run_dir, tmp_path / "onnx", "onnx")
    for name in ("user_encoder", "item_encoder", "rating_head"):
        graph = onnx.load(str(target / f"{name}.onnx")).graph
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (name, value.name)
    exported = OnnxModel(target)
    for size in (1, 7, 3000):
        indices = np.arange(size) % 900
        assert exported.encode("user", indices)["watch_vectors"].shape == (size, 32)
        assert exported.scores(indices, indices)[1].shape == (size,)


@pytest.mark.parametrize("rating_bias", [False, True])
@pytest.mark.parametrize("sharing", SHARINGS)
def test_onnx_export_matches_every_sharing_mode_and_rating_bias(tmp_path, sharing, rating_bias):
    data = random_interactions()
    model = MultitaskModel(sharing=sharing, rating_bias=rating_bias, embedding_dim=8, seed=1).fit(data, epochs=1)
    with torch.no_grad():  # residuals and biases start at zero, stitches near the identity: make every part count
        for parameter in model.network_.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    exported = OnnxModel(export_model(model, tmp_path / "onnx", "onnx"))
    users, items = np.divmod(np.arange(data.num_users * data.num_items), data.num_items)
    p, r_hat = exported.scores(users, items)
    p_torch, r_torch = model.predict(users, items)
    assert np.abs(p - p_torch).max() <= 1e-5
    assert np.abs(r_hat - r_torch).max() <= 1e-5
    assert exported.description["sharing"] == sharing and exported.description["rating_bias"] is rating_bias


def test_a_model_without_ratings_exports_no_rating_head(tmp_path):
    data = random_interactions(ratings=False)
    model = MultitaskModel(factorization_weight=1.0, regression_weight=0.0, embedding_dim=8).fit(data, epochs=1)
    target = export_model(model, tmp_path / "onnx", "onnx")
    description = json.loads((target / "model.json").read_text())
    assert description["graphs"] == {"user_encoder": "user_encoder.onnx", "item_encoder": "item_encoder.onnx"}
    assert description["rating"] is None and description["has_ratings"] is False
    assert sorted(verify_export(target)["files"]) == ["item_encoder.onnx", "model.json", "user_encoder.onnx"]


def test_a_rating_head_the_export_does_not_know_is_refused_and_nothing_is_written(tmp_path):
    model = MultitaskModel(embedding_dim=8).fit(random_interactions(), epochs=1)
    model.network_.rating_mlp.insert(1, nn.Dropout(0.1))
    with pytest.raises(ConfigError, match="the rating head holds a Dropout layer"):
        export_model(model, tmp_path / "onnx", "onnx")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Parquet


def test_parquet_export_reproduces_the_watch_score_from_the_files_alone(run_dir, model, tmp_path, capsys):
    target = tmp_path / "vectors"
    code, _, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "parquet")
    assert code == 0 and err == ""
    # Only pyarrow and numpy from here: what a vector database's loader would do.
    users, items = pq.read_table(target / "users.parquet"), pq.read_table(target / "items.parquet")
    assert users.column_names == ["user", "vector", "bias"]
    assert items.column_names == ["item", "title", "vector", "bias"]
    user_vectors = users["vector"].combine_chunks().flatten().to_numpy().reshape(len(users), -1)
    item_vectors = items["vector"].combine_chunks().flatten().to_numpy().reshape(len(items), -1)
    user_row = {user: row for row, user in enumerate(users["user"].to_pylist())}
    item_row = {item: row for row, item in enumerate(items["item"].to_pylist())}
    rng = np.random.default_rng(1)
    data = model.data_
    user_ids = data.user_ids[rng.integers(0, data.num_users, 10_000)]
    item_ids = data.item_ids[rng.integers(0, data.num_items, 10_000)]
    rows_u = np.array([user_row[u] for u in user_ids.tolist()])
    rows_i = np.array([item_row[i] for i in item_ids.tolist()])
    p = (user_vectors[rows_u] * item_vectors[rows_i]).sum(1) + users["bias"].to_numpy()[rows_u] + items["bias"].to_numpy()[rows_i]
    index_of = {raw: index for index, raw in enumerate(data.item_ids.tolist())}
    user_index = {raw: index for index, raw in enumerate(data.user_ids.tolist())}
    p_torch, _ = model.predict([user_index[u] for u in user_ids.tolist()], [index_of[i] for i in item_ids.tolist()])
    assert np.abs(p - p_torch).max() <= 1e-5
    assert items["title"][49].as_py() == "Star Wars (1977)" and items["item"][49].as_py() == 50
    description = json.loads((target / "model.json").read_text())
    assert description["watch_score"] == "p = dot(user.vector, item.vector) + user.bias + item.bias"


# ---------------------------------------------------------------------------------------------
# Atomic and verified


def test_an_export_is_verified_by_its_manifest(run_dir, tmp_path):
    target = export_run(run_dir, tmp_path / "vectors", "parquet")
    manifest = verify_export(target)
    assert manifest["export"] == "parquet" and manifest["model_sha256"] == json.loads((run_dir / "metrics.json").read_text())["model_sha256"]
    assert sorted(manifest["files"]) == ["items.parquet", "model.json", "users.parquet"]
    payload = bytearray((target / "users.parquet").read_bytes())
    payload[100] ^= 0xFF
    (target / "users.parquet").write_bytes(bytes(payload))
    with pytest.raises(ModelFileError, match="users.parquet failed its integrity check"):
        verify_export(target)
    (target / "users.parquet").unlink()
    with pytest.raises(ModelFileError, match="users.parquet is missing"):
        verify_export(target)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ModelFileError, match="notes.txt is not part of the export"):
        verify_export(target)


def test_an_export_to_an_existing_directory_is_refused_without_force(run_dir, tmp_path, capsys):
    target = tmp_path / "vectors"
    export_run(run_dir, target, "parquet")
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    code, out, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "onnx")
    assert code == 2 and out == ""
    assert err == f"mtrec export: error: {target} already exists: give --force to replace it, or choose another --to\n"
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    code, _, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "onnx", "--force")
    assert code == 0 and err == ""
    assert verify_export(target)["export"] == "onnx" and not (target / "users.parquet").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vectors"]  # no staging or old folder left


def test_force_never_replaces_a_folder_that_is_not_an_export(run_dir, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "parquet", "--force")
    assert code == 2
    assert err == (f"mtrec export: error: {target} holds files that are not an mtrec export, which --force never replaces: choose another --to\n")
    assert [path.name for path in target.iterdir()] == ["thesis.tex"]


def test_an_export_of_an_incomplete_run_is_refused(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "metrics.json").unlink()
    target = tmp_path / "onnx"
    code, out, err = run_cli(capsys, "export", "--model", unfinished, "--to", target, "--format", "onnx")
    assert code == 1 and out == ""
    assert err.startswith(f"mtrec export: error: {unfinished} is not a complete run (unfinished)") and err.count("\n") == 1
    assert not target.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["unfinished"]


def test_a_missing_onnx_package_names_the_extra(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without the package gives: ImportError
    target = tmp_path / "onnx"
    code, out, err = run_cli(capsys, "export", "--model", run_dir, "--to", target, "--format", "onnx")
    assert code == 2 and out == ""
    assert err == 'mtrec export: error: the ONNX export needs onnx: pip install "mtrec[export]"\n'
    assert not target.exists()
    with pytest.raises(ConfigError, match=r'pip install "mtrec\[export\]"'):
        export_run(run_dir, target, "onnx")
