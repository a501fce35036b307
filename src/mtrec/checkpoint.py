"""Model files: one safetensors file holding weights, id maps, seen items and JSON metadata.

Loading never executes code from the file (safetensors holds only raw tensors and a JSON
header). A SHA-256 over the tensors and metadata, stored in the header, detects a file
that was truncated or tampered with; a format number detects other versions. Saving
writes a temporary file beside the target and renames it into place, so a crash mid-save
leaves the previous model intact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from mtrec import __version__
from mtrec.data.interactions import ItemMetadata, ids_from_json
from mtrec.errors import ModelFileError
from mtrec.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from mtrec.model import MultitaskModel

FORMAT = "mtrec-model"
FORMAT_VERSION = 1
MODEL_FILENAME = "model.safetensors"


def model_path(path: str | Path) -> Path:
    """The model file for ``path``: a ``.safetensors`` file itself, else ``model.safetensors`` in that run directory."""
    path = Path(path)
    return path if path.suffix == ".safetensors" and not path.is_dir() else path / MODEL_FILENAME


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    for key in sorted(metadata):
        sha.update(f"{key}={metadata[key]}".encode())
    return sha.hexdigest()


def _ids_payload(ids: np.ndarray) -> tuple[torch.Tensor | None, list | None]:
    """Integer ids travel as a tensor, string ids as JSON."""
    if ids.dtype.kind in "iu":
        return torch.as_tensor(ids.astype(np.int64)), None
    return None, [str(v) for v in ids.tolist()]


def save_model(model: MultitaskModel, path: str | Path) -> Path:
    """Write a fitted model to ``path`` atomically; returns the file written."""
    network = model._fitted_network()
    data = model.data_
    target = model_path(path)
    tensors = {f"network.{k}": v.detach().cpu().clone().contiguous() for k, v in network.state_dict().items()}
    tensors["seen.indptr"] = torch.as_tensor(data.seen_indptr.astype(np.int64))
    tensors["seen.indices"] = torch.as_tensor(data.seen_indices.astype(np.int64))
    extra: dict[str, Any] = {}
    for label, ids in (("user_ids", data.user_ids), ("item_ids", data.item_ids)):
        tensor, as_json = _ids_payload(ids)
        if tensor is not None:
            tensors[label] = tensor
        else:
            extra[label] = as_json
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "mtrec_version": __version__,
        "config": json.dumps(model.get_params()),
        "data": json.dumps(
            {
                "num_users": data.num_users,
                "num_items": data.num_items,
                "rating_scale": list(data.rating_scale) if data.rating_scale else None,
                "has_ratings": data.has_ratings,
                "name": data.name,
                "item_metadata": data.item_metadata.to_json() if data.item_metadata else None,
                **extra,
            }
        ),
        "history": json.dumps([record.to_json() for record in model.history_]),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    atomic_write_bytes(target, safetensors_save(tensors, metadata=metadata))
    return target


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a model file, verified; :class:`ModelFileError` if anything is off."""
    target = model_path(path)
    if not target.is_file():
        raise ModelFileError(f"no model file at {target}")
    payload = target.read_bytes()
    try:
        tensors = safetensors_load(payload)
        metadata = _read_header_metadata(payload)
    except (SafetensorError, ValueError, OSError) as error:
        raise ModelFileError(f"{target} is not a readable mtrec model (truncated or corrupt): {error}") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{target} is not an mtrec model file")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{target} is model format version {metadata.get('format_version')}; this mtrec "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    expected = metadata.pop("sha256", None)
    if expected != _digest(tensors, metadata):
        raise ModelFileError(f"{target} failed its integrity check: the file was modified or damaged")
    return tensors, metadata


def _read_header_metadata(payload: bytes) -> dict[str, str]:
    if len(payload) < 8:
        raise ValueError("file shorter than a safetensors header")
    size = int.from_bytes(payload[:8], "little")
    if size > len(payload) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(payload[8 : 8 + size])
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise ValueError("no metadata in the header")
    return dict(metadata)


def load_model(path: str | Path, device: str = "cpu") -> MultitaskModel:
    """Rebuild a :class:`MultitaskModel` saved by :func:`save_model`."""
    from mtrec.model import EpochRecord, FittedData, MultitaskModel, resolve_device

    target_device = resolve_device(device)
    tensors, metadata = read_model_file(path)
    try:
        config = json.loads(metadata["config"])
        info = json.loads(metadata["data"])
        history = json.loads(metadata["history"])
        config["device"] = device
        model = MultitaskModel(**config)
        user_ids = tensors["user_ids"].numpy() if "user_ids" in tensors else ids_from_json(info["user_ids"])
        item_ids = tensors["item_ids"].numpy() if "item_ids" in tensors else ids_from_json(info["item_ids"])
        model.data_ = FittedData(
            num_users=info["num_users"],
            num_items=info["num_items"],
            user_ids=user_ids,
            item_ids=item_ids,
            seen_indptr=tensors["seen.indptr"].numpy(),
            seen_indices=tensors["seen.indices"].numpy(),
            item_metadata=ItemMetadata.from_json(info["item_metadata"]) if info["item_metadata"] else None,
            rating_scale=tuple(info["rating_scale"]) if info["rating_scale"] else None,
            has_ratings=info["has_ratings"],
            name=info["name"],
        )
        network = model._build(model.data_, torch.device("cpu"))
        state = {k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")}
        network.load_state_dict(state)
        model.network_ = network.to(target_device)
        model.history_ = [EpochRecord(**_split_extra(record)) for record in history]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{model_path(path)} has inconsistent contents: {error}") from None
    return model


def _split_extra(record: dict[str, Any]) -> dict[str, Any]:
    known = {"epoch", "train_bpr", "train_mse", "train_loss", "test_mse", "test_mrr", "seconds"}
    fields = {k: v for k, v in record.items() if k in known}
    fields["extra"] = {k: v for k, v in record.items() if k not in known}
    return fields
