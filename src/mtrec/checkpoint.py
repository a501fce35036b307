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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from mtrec import __version__
from mtrec.data.interactions import ItemMetadata, ids_from_json
from mtrec.errors import ModelFileError
from mtrec.fileio import atomic_write_bytes
from mtrec.fitted import EpochRecord, FittedData

FORMAT = "mtrec-model"
FORMAT_VERSION = 1
MODEL_FILENAME = "model.safetensors"
#: A training checkpoint: everything needed to continue a run where it was.
CHECKPOINT_FILENAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "mtrec-checkpoint"


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


@dataclass
class ModelRecord:
    """What a model file holds: plain data, independent of the estimator that made it.

    Parameters
    ----------
    params:
        The estimator's hyper-parameters (JSON values).
    state:
        The network's state dict.
    data:
        What the model keeps of its training data.
    history:
        One record per trained epoch.
    info:
        Further JSON facts (which epoch the weights are from, for example).
    """

    params: dict[str, Any]
    state: dict[str, torch.Tensor]
    data: FittedData
    history: list[EpochRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def save_record(record: ModelRecord, path: str | Path) -> Path:
    """Write ``record`` to ``path`` atomically; returns the file written."""
    data = record.data
    target = model_path(path)
    tensors = {f"network.{k}": v.detach().cpu().clone().contiguous() for k, v in record.state.items()}
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
        "config": json.dumps(record.params),
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
        "history": json.dumps([epoch.to_json() for epoch in record.history]),
        "info": json.dumps(record.info),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    atomic_write_bytes(target, safetensors_save(tensors, metadata=metadata))
    return target


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a model file, verified; :class:`ModelFileError` if anything is off."""
    target = model_path(path)
    if not target.is_file():
        raise ModelFileError(f"no model file at {target}")
    try:
        payload = target.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{target}: cannot be read: {error.strerror or error}") from None
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


def model_digest(path: str | Path) -> str | None:
    """The SHA-256 a model file's header records for its contents (read from the header alone), or None."""
    target = model_path(path)
    try:
        with open(target, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size > 100 * 2**20:
                return None
            metadata = json.loads(handle.read(size)).get("__metadata__") or {}
    except (OSError, ValueError):
        return None
    return metadata.get("sha256")


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


def load_record(path: str | Path) -> ModelRecord:
    """The :class:`ModelRecord` in the model file at ``path``, verified; :class:`ModelFileError` if anything is off."""
    tensors, metadata = read_model_file(path)
    try:
        info = json.loads(metadata["data"])
        user_ids = tensors["user_ids"].numpy() if "user_ids" in tensors else ids_from_json(info["user_ids"])
        item_ids = tensors["item_ids"].numpy() if "item_ids" in tensors else ids_from_json(info["item_ids"])
        data = FittedData(
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
        return ModelRecord(
            params=json.loads(metadata["config"]),
            state={k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")},
            data=data,
            history=[EpochRecord.from_json(epoch) for epoch in json.loads(metadata["history"])],
            info=json.loads(metadata.get("info", "{}")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"{model_path(path)} has inconsistent contents: {error}") from None


def save_training_state(path: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write a training checkpoint (tensors and JSON facts) atomically, with its SHA-256; returns the file."""
    target = Path(path)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "mtrec_version": __version__,
        "info": json.dumps(info),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    atomic_write_bytes(target, safetensors_save(tensors, metadata=metadata))
    return target


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and facts of a training checkpoint, verified; :class:`ModelFileError` if anything is off."""
    target = Path(path)
    try:
        payload = target.read_bytes()
        tensors = safetensors_load(payload)
        metadata = _read_header_metadata(payload)
    except (SafetensorError, ValueError, OSError) as error:
        raise ModelFileError(f"{target} is not a readable mtrec checkpoint: {error}") from None
    expected = metadata.pop("sha256", None)
    if metadata.get("format") != CHECKPOINT_FORMAT or expected != _digest(tensors, metadata):
        raise ModelFileError(f"{target} failed its integrity check: not a complete mtrec checkpoint")
    return tensors, json.loads(metadata["info"])
