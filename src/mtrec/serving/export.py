"""Exports of a trained model for other runtimes: ONNX graphs, or Parquet tables for vector databases.

Both exports read the network's two heads as per-user and per-item tables, computed by the
network itself, so every sharing mode (hard, separate, residual, cross-stitch) and the rating
head's biases come out exactly as the model scores them:

======================  ===============================================================
``watch_vectors``       the likelihood head's vectors (u, q; with the residual or the
                        cross-stitch mix applied)
``watch_biases``        its biases a (per user) and b (per item)
``rating_vectors``      the rating head's vectors (what its MLP reads as [u, q, u*q])
``rating_biases``       its biases (zero where the model has no ``rating_bias``)
======================  ===============================================================

so that, for user index i and item index j,

* the watch score ``p = watch_vectors_user[i] · watch_vectors_item[j] + watch_biases_user[i] + watch_biases_item[j]``;
* the rating ``r_hat = MLP([u, q, u*q]) + rating_biases_user[i] + rating_biases_item[j]`` with
  ``u = rating_vectors_user[i]``, ``q = rating_vectors_item[j]``, clipped to the data's rating
  scale for display (as :class:`mtrec.serving.recommender.Recommender` does).

ONNX (``format="onnx"``, needs ``pip install "mtrec[export]"``)
    ``user_encoder.onnx`` (input ``users``, int64 user indices of shape [batch]; outputs the four
    user tables' rows), ``item_encoder.onnx`` (``items`` likewise), and ``rating_head.onnx``
    (inputs ``user_vectors`` and ``item_vectors`` [batch, d], ``user_biases`` and ``item_biases``
    [batch]; output ``rating`` [batch]); every batch dimension is dynamic. ``model.json`` says how
    the outputs combine (the formulas above), the rating scale, and the external ids: index i is
    ``user_ids[i]``. A model that did not learn ratings has no rating head (``"rating": null``).
Parquet (``format="parquet"``)
    ``users.parquet`` (``user``: the external id, ``vector``: the watch vector as a fixed-size
    list of float32, ``bias``) and ``items.parquet`` (``item``, ``title`` where the data has
    titles, ``vector``, ``bias``), for vector databases. The watch score is
    ``p = dot(user.vector, item.vector) + user.bias + item.bias``; for a pure inner-product
    search, index ``[vector, bias, 1]`` per item and query with ``[vector, 1, bias]`` per user
    (their dot product is p). ``model.json`` states the formula. Read back with pyarrow and numpy
    alone::

        users = pq.read_table("users.parquet")
        vectors = users["vector"].combine_chunks().flatten().to_numpy().reshape(len(users), -1)

Every export is written into a staging folder beside its target and renamed into place once
complete (a failure leaves nothing at the target), with a ``manifest.json`` recording the
SHA-256 of each file, the export's format and the source model's digest:
:func:`verify_export` checks a folder against it. An existing target is replaced only with
``force``, and only when it is an earlier export (or empty).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from mtrec import __version__
from mtrec.errors import ConfigError, ModelFileError
from mtrec.io.checkpoint import model_digest
from mtrec.io.files import atomic_output, atomic_write_bytes, atomic_write_text, directory_lock, publish_directory
from mtrec.model import MultitaskModel
from mtrec.nn.network import MultitaskNet
from mtrec.runs import staging_dir

MANIFEST_FILENAME = "manifest.json"
DESCRIPTION_FILENAME = "model.json"
MANIFEST_FORMAT = "mtrec-export"
MANIFEST_VERSION = 1
#: The ONNX operator set the graphs use, and the IR version that goes with it (readable by
#: onnxruntime 1.14 and later).
OPSET, IR_VERSION = 17, 8
#: The tables each side of the model gives (see the module's docstring).
TABLES = ("watch_vectors", "watch_biases", "rating_vectors", "rating_biases")
WATCH_SCORE = "p = sum(user.watch_vectors * item.watch_vectors, axis=1) + user.watch_biases + item.watch_biases"
RATING = (
    "r_hat = rating_head(user_vectors=user.rating_vectors, item_vectors=item.rating_vectors, "
    "user_biases=user.rating_biases, item_biases=item.rating_biases); clip to rating_scale for display"
)
PARQUET_WATCH_SCORE = "p = dot(user.vector, item.vector) + user.bias + item.bias"

Writer = Callable[[MultitaskModel, Path], dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# The tables


def export_network(model: MultitaskModel) -> MultitaskNet:
    """The fitted network of ``model``, if the exports know it; :class:`ConfigError` saying why not."""
    network = model._fitted_network()
    if not isinstance(network, MultitaskNet):
        raise ConfigError(f"the exports know mtrec's MultitaskNet; this model's network is a {type(network).__name__}")
    if network.item_item:
        raise ConfigError(
            "the exports hold vectors, and this model's watch score has an item-item path (an items x items matrix) "
            "they cannot hold: export a model trained without --item-item"
        )
    if network.rating_reads_score:
        raise ConfigError(
            "the exports' rating head reads [u, q, u*q], and this model's also reads the watch score: "
            "export a model trained without --rating-reads-score"
        )
    return network


@torch.no_grad()
def head_tables(network: MultitaskNet) -> dict[str, dict[str, np.ndarray]]:
    """Per side (``"user"``, ``"item"``), the :data:`TABLES` as float32 arrays, one row per index."""
    users = torch.arange(network.user_embeddings.num_embeddings, device=network.user_embeddings.weight.device)
    items = torch.arange(network.item_embeddings.num_embeddings, device=network.item_embeddings.weight.device)
    rating_users, rating_items = network.rating_vectors(users, items)
    if network.rating_bias:
        rating_biases = (network.rating_user_biases.weight[:, 0], network.rating_item_biases.weight[:, 0])
        for side, index in (("user", 0), ("item", 1)):  # an entity without training pairs: its id part does not count
            if f"{side}s" in network.feature_sizes:
                rating_biases = tuple(b * getattr(network, f"{side}_known") if i == index else b for i, b in enumerate(rating_biases))
    else:
        rating_biases = (torch.zeros(len(users)), torch.zeros(len(items)))
    tables = {
        "user": (network.watch_users(users), network.user_bias(users), rating_users, rating_biases[0]),
        "item": (network.item_vectors(), network.item_bias(), rating_items, rating_biases[1]),
    }
    return {side: {name: value.detach().float().cpu().numpy() for name, value in zip(TABLES, values)} for side, values in tables.items()}


def _ids(ids: np.ndarray) -> list:
    """External ids as JSON values (integers stay integers)."""
    return ids.tolist() if ids.dtype.kind in "iu" else [str(v) for v in ids.tolist()]


def _facts(model: MultitaskModel, network: MultitaskNet) -> dict[str, Any]:
    """What every export's model.json says of the model."""
    data = model.data_
    return {
        "mtrec_version": __version__,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "embedding_dim": network.user_embeddings.embedding_dim,
        "sharing": network.sharing,
        "rating_bias": network.rating_bias,
        "has_ratings": bool(data.has_ratings and model.regression_weight > 0),
        "rating_scale": list(data.rating_scale) if data.rating_scale else None,
    }


# ---------------------------------------------------------------------------------------------
# ONNX


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError('the ONNX export needs onnx: pip install "mtrec[export]"') from None
    return onnx


def _model_proto(onnx, graph):
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="mtrec")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def encoder_graph(onnx, side: str, tables: dict[str, np.ndarray]):
    """The encoder of one side: indices ``<side>s`` (int64, [batch]) in, one row of each table out."""
    helper, index = onnx.helper, f"{side}s"
    initializers, nodes, outputs = [], [], []
    for name, table in tables.items():
        initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(table, dtype=np.float32), f"{name}_table"))
        nodes.append(helper.make_node("Gather", [f"{name}_table", index], [name], axis=0))
        shape = ["batch", *table.shape[1:]]
        outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
    inputs = [helper.make_tensor_value_info(index, onnx.TensorProto.INT64, ["batch"])]
    return _model_proto(onnx, helper.make_graph(nodes, f"mtrec_{side}_encoder", inputs, outputs, initializers))


def rating_head_graph(onnx, network: MultitaskNet):
    """The rating head: MLP([u, q, u*q]) + the user's and the item's rating bias, for [batch] pairs;
    :class:`ConfigError` for a layer other than Linear and ReLU."""
    unknown = [type(layer).__name__ for layer in network.rating_mlp if not isinstance(layer, (nn.Linear, nn.ReLU))]
    if unknown:
        raise ConfigError(f"the rating head holds a {unknown[0]} layer, which the ONNX export does not know (it exports Linear and ReLU layers)")
    helper, d = onnx.helper, network.user_embeddings.embedding_dim
    float_ = onnx.TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(name, float_, ["batch", d]) for name in ("user_vectors", "item_vectors")]
    inputs += [helper.make_tensor_value_info(name, float_, ["batch"]) for name in ("user_biases", "item_biases")]
    nodes = [
        helper.make_node("Mul", ["user_vectors", "item_vectors"], ["product"]),
        helper.make_node("Concat", ["user_vectors", "item_vectors", "product"], ["layer_0"], axis=1),
    ]
    initializers, current = [onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")], "layer_0"
    for number, layer in enumerate(network.rating_mlp, start=1):
        name = f"layer_{number}"
        if isinstance(layer, nn.Linear):
            weight, bias = (p.detach().float().cpu().numpy() for p in (layer.weight, layer.bias))
            initializers += [onnx.numpy_helper.from_array(weight, f"{name}_weight"), onnx.numpy_helper.from_array(bias, f"{name}_bias")]
            nodes.append(helper.make_node("Gemm", [current, f"{name}_weight", f"{name}_bias"], [name], transB=1))
        else:
            nodes.append(helper.make_node("Relu", [current], [name]))
        current = name
    nodes += [
        helper.make_node("Reshape", [current, "flat"], ["mlp"]),
        helper.make_node("Add", ["mlp", "user_biases"], ["with_user_bias"]),
        helper.make_node("Add", ["with_user_bias", "item_biases"], ["rating"]),
    ]
    outputs = [helper.make_tensor_value_info("rating", float_, ["batch"])]
    return _model_proto(onnx, helper.make_graph(nodes, "mtrec_rating_head", inputs, outputs, initializers))


def write_onnx(model: MultitaskModel, folder: Path) -> dict[str, Any]:
    """Write the encoders and the rating head into ``folder``; the description for model.json."""
    onnx = _onnx()
    network = export_network(model)
    facts = _facts(model, network)
    tables = head_tables(network)
    graphs = {"user_encoder": encoder_graph(onnx, "user", tables["user"]), "item_encoder": encoder_graph(onnx, "item", tables["item"])}
    if facts["has_ratings"]:
        graphs["rating_head"] = rating_head_graph(onnx, network)
    for name, graph in graphs.items():
        atomic_write_bytes(folder / f"{name}.onnx", graph.SerializeToString())
    return {
        "format": "mtrec-onnx",
        **facts,
        "graphs": {name: f"{name}.onnx" for name in graphs},
        "inputs": "user_encoder: users, item_encoder: items (int64 indices, shape [batch]); rating_head: "
        "user_vectors, item_vectors ([batch, embedding_dim]), user_biases, item_biases ([batch])",
        "outputs": {"encoders": list(TABLES), "rating_head": ["rating"]},
        "watch_score": WATCH_SCORE,
        "rating": RATING if facts["has_ratings"] else None,
        "user_ids": _ids(model.data_.user_ids),
        "item_ids": _ids(model.data_.item_ids),
    }


# ---------------------------------------------------------------------------------------------
# Parquet


def _vectors(table: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(table, dtype=np.float32).reshape(-1)), table.shape[1])


def write_parquet(model: MultitaskModel, folder: Path) -> dict[str, Any]:
    """Write ``users.parquet`` and ``items.parquet`` (watch vectors and biases by external id) into ``folder``;
    the description for model.json."""
    network = export_network(model)
    tables, data = head_tables(network), model.data_
    columns = {
        "users": {"user": pa.array(data.user_ids)},
        "items": {"item": pa.array(data.item_ids)},
    }
    if data.item_metadata is not None:
        columns["items"]["title"] = pa.array(data.item_metadata.titles, pa.string())
    for name, side in (("users", "user"), ("items", "item")):
        columns[name]["vector"] = _vectors(tables[side]["watch_vectors"])
        columns[name]["bias"] = pa.array(tables[side]["watch_biases"])
        with atomic_output(folder / f"{name}.parquet") as temporary:
            pq.write_table(pa.table(columns[name]), temporary)
    return {
        "format": "mtrec-parquet",
        **_facts(model, network),
        "files": {"users": "users.parquet", "items": "items.parquet"},
        "watch_score": PARQUET_WATCH_SCORE,
        "inner_product_search": "index [vector, bias, 1] per item, query [vector, 1, bias] per user: their dot is p",
    }


#: The exports by format name.
WRITERS: dict[str, Writer] = {"onnx": write_onnx, "parquet": write_parquet}
#: What each format needs installed, checked before any work.
REQUIREMENTS: dict[str, Callable[[], Any]] = {"onnx": _onnx}


# ---------------------------------------------------------------------------------------------
# Publishing and verifying


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _writer(format: str) -> Writer:
    """The writer of ``format``, its requirements checked."""
    if format not in WRITERS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(WRITERS)}")
    REQUIREMENTS.get(format, lambda: None)()
    return WRITERS[format]


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST_FILENAME).read_text()).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_target(target: str | Path, force: bool) -> None:
    """:class:`ConfigError` unless an export may be written to ``target``: it must not exist, or (with
    ``force``) be an earlier export or an empty folder, never anything else."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder: choose another --to")
    if not force:
        raise ConfigError(f"{target} already exists: give --force to replace it, or choose another --to")
    if any(target.iterdir()) and not _is_export(target):
        raise ConfigError(f"{target} holds files that are not an mtrec export, which --force never replaces: choose another --to")


def export_model(model: MultitaskModel, to: str | Path, format: str = "onnx", force: bool = False, source: str | Path | None = None) -> Path:
    """Export a fitted ``model`` to the folder ``to``, atomically; returns the folder.

    Parameters
    ----------
    model:
        A fitted or loaded :class:`~mtrec.model.MultitaskModel`.
    to:
        The folder to create. It is staged beside itself (``.<name>.staging``) and renamed into
        place once complete: a failure leaves nothing at ``to``.
    format:
        ``"onnx"`` or ``"parquet"`` (see the module's docstring).
    force:
        Replace ``to`` if it holds an earlier export (or nothing); a folder holding anything
        else is never replaced.
    source:
        The model file (or run directory) the model came from: its digest is recorded.

    Raises
    ------
    ConfigError
        An unknown format, a format whose package is missing (naming the extra to install), a
        target that exists (without ``force``) or is not an export, or a network the exports do
        not know.
    """
    writer = _writer(format)
    target = Path(to)
    with directory_lock(target):
        check_target(target, force)
        staging = staging_dir(target)
        if staging.exists():
            shutil.rmtree(staging)  # a crashed export's: we hold the lock
        staging.mkdir(parents=True)
        try:
            description = writer(model, staging)
            atomic_write_text(staging / DESCRIPTION_FILENAME, json.dumps(description, indent=2) + "\n")
            manifest = {
                "format": MANIFEST_FORMAT,
                "format_version": MANIFEST_VERSION,
                "export": format,
                "mtrec_version": __version__,
                "model_sha256": model_digest(source) if source is not None else None,
                "files": {entry.name: _sha256(entry) for entry in sorted(staging.iterdir())},
            }
            atomic_write_text(staging / MANIFEST_FILENAME, json.dumps(manifest, indent=2) + "\n")
            publish_directory(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def export_run(path: str | Path, to: str | Path, format: str = "onnx", force: bool = False) -> Path:
    """Export the model of a run directory (or model file) ``path`` to ``to``; returns the folder.

    What ``mtrec export`` does. The format's requirements and the target are checked before the
    model is read; a run directory must hold a complete, consistent run
    (:func:`mtrec.runs.check_complete`).

    Raises
    ------
    DataError
        ``path`` is an unfinished or damaged run.
    ModelFileError
        Its model file is missing or fails its integrity check.
    ConfigError
        See :func:`export_model`.
    """
    from mtrec.serving.loading import load_model

    _writer(format)
    check_target(to, force)
    model = load_model(path).model
    return export_model(model, to, format, force, source=path)


def verify_export(folder: str | Path) -> dict[str, Any]:
    """The manifest of the export in ``folder``, once every file matches it; :class:`ModelFileError`
    naming the first file that is missing, added or not the one the manifest recorded."""
    folder = Path(folder)
    path = folder / MANIFEST_FILENAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path}: no readable export manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path} is not an mtrec export manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ModelFileError(
            f"{path} is export format version {manifest.get('format_version')}; this mtrec ({__version__}) reads version {MANIFEST_VERSION}"
        )
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        raise ModelFileError(f"{path} records no files")
    present = {entry.name for entry in folder.iterdir()} - {MANIFEST_FILENAME}
    for name in sorted(present | set(recorded)):
        if name not in recorded:
            raise ModelFileError(f"{folder / name} is not part of the export its manifest describes")
        if name not in present:
            raise ModelFileError(f"{folder / name} is missing")
        if _sha256(folder / name) != recorded[name]:
            raise ModelFileError(f"{folder / name} failed its integrity check: the file was modified or damaged")
    return manifest
