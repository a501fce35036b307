"""Model files: one safetensors file holding weights, id maps, seen items and JSON metadata.

Loading never executes code from the file (safetensors holds only raw tensors and a JSON
header). Before any tensor is read, the header is checked against the file: its length is
bounded, each tensor's dtype and shape must give exactly its byte span, the spans must tile
the data, the data must be exactly the rest of the file, and it must fit the memory available
now; so a file that claims more (or holds more) than it should, or than the machine can hold,
is refused in one line, never read whole. The tensors are then copied, one at a time, out of
the memory-mapped file (never the whole file read and parsed from a second copy). A SHA-256
over the tensors and metadata, stored in the header and computed over the tensors' own memory,
detects a file that was truncated or tampered with; a format number detects other versions.
Saving writes a temporary file beside the target and renames it into place, so a crash
mid-save leaves the previous model intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from mtrec import __version__
from mtrec.data.feature_maps import FeatureBags, FeatureMap, FittedFeatures
from mtrec.data.files import is_file
from mtrec.data.interactions import ids_from_json
from mtrec.data.metadata import ItemMetadata
from mtrec.errors import DataError, ModelFileError
from mtrec.io.files import atomic_write_bytes, parse_json
from mtrec.io.fitted import EpochRecord, FittedData
from mtrec.io.schemas import TrainingStateSchema, validate

FORMAT = "mtrec-model"
FORMAT_VERSION = 1
MODEL_FILENAME = "model.safetensors"
#: A training checkpoint: everything needed to continue a run where it was.
CHECKPOINT_FILENAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "mtrec-checkpoint"
#: The longest safetensors header read (the safetensors library's own limit).
MAX_HEADER_BYTES = 100 * 2**20
#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def model_path(path: str | Path) -> Path:
    """The model file for ``path``: a ``.safetensors`` file itself, else ``model.safetensors`` in that run directory."""
    path = Path(path)
    return path if path.suffix == ".safetensors" and not path.is_dir() else path / MODEL_FILENAME


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else b"")  # its memory, not a copy
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
    if data.seen_ratings is not None:
        tensors["seen.ratings"] = torch.as_tensor(data.seen_ratings.astype(np.float32))
    for side, fitted in data.features.items():
        for name in ("indptr", "indices", "weights"):
            tensors[f"features.{side}.{name}"] = torch.as_tensor(getattr(fitted.bags, name))
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
                "features": {side: fitted.map.to_json() for side, fitted in data.features.items()},
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
    try:
        found = is_file(target)
    except DataError as error:  # a symbolic link loop, no permission: in the OS's words
        raise ModelFileError(str(error)) from None
    if not found:
        raise ModelFileError(f"no model file at {target}")
    tensors, metadata = _read_safetensors(target, "is not a readable mtrec model (truncated or corrupt)")
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{target} is not an mtrec model file")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{target} is model format version {metadata.get('format_version')}; this mtrec ({__version__}) reads version {FORMAT_VERSION}"
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
            header = _read_header(handle, os.fstat(handle.fileno()).st_size)[1]
    except (OSError, ValueError):
        return None
    return header.get("__metadata__", {}).get("sha256")


def _read_safetensors(target: Path, unreadable: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of safetensors file ``target``; its layout is checked, and its data must fit
    the memory available, before any tensor is copied out of the memory-mapped file.
    :class:`ModelFileError` saying ``target`` ``unreadable`` and why otherwise."""
    try:
        with open(target, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header_bytes, header = _read_header(handle, size)
            declared = _check_layout(header, size - 8 - header_bytes)
        _check_memory(target, declared)
        with safe_open(target, framework="pt") as mapped:
            # Copied out of the mapping: a tensor still backed by it would crash the process (SIGBUS)
            # once the file is overwritten in place, as `cp new.safetensors model.safetensors` does.
            return {name: mapped.get_tensor(name).clone() for name in mapped.keys()}, dict(header["__metadata__"])
    except OSError as error:
        raise ModelFileError(f"{target}: cannot be read: {error.strerror or error}") from None
    except (SafetensorError, ValueError) as error:
        raise ModelFileError(f"{target} {unreadable}: {error}") from None
    except MemoryError:
        raise ModelFileError(f"{target}: too large for this machine's memory") from None


def available_memory() -> int | None:
    """Bytes of memory this machine can give now without swapping (Linux's MemAvailable, which counts
    the page cache it can drop; else the free pages), or None where the platform cannot tell."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(target: Path, declared: int) -> None:
    """A :class:`ModelFileError` if the ``declared`` bytes of tensors of ``target`` exceed the memory available."""
    available = available_memory()
    if available is not None and declared > available:
        raise ModelFileError(
            f"{target}: its header declares {declared:,} bytes of tensors, more than the {available:,} bytes of memory available on this machine now"
        )


def _read_header(handle: BinaryIO, size: int) -> tuple[int, dict[str, Any]]:
    """The length of the JSON header of the safetensors file open in ``handle`` (``size`` bytes), and the header;
    ValueError if it is not a bounded JSON object inside the file."""
    if size < 8:
        raise ValueError("file shorter than a safetensors header")
    length = int.from_bytes(handle.read(8), "little")
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"its header claims {length:,} bytes, more than the file or the limit of {MAX_HEADER_BYTES:,} allows")
    header = parse_json(handle.read(length))
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise ValueError("no metadata in the header")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in header["__metadata__"].items()):
        raise ValueError("the header's metadata is not text")
    return length, header


def _check_layout(header: dict[str, Any], data_bytes: int) -> int:
    """The bytes of tensor data ``header`` declares; ValueError unless each tensor's dtype and shape give
    exactly its span, the spans tile the data, and the data is the ``data_bytes`` the file holds after its header."""
    spans = sorted((*_span(name, entry), name) for name, entry in header.items() if name != "__metadata__")
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise ValueError(f"tensor {name} starts at byte {begin:,} of the data, not at {end:,} where the one before ends")
        end = stop
    if end != data_bytes:
        raise ValueError(f"its header declares {end:,} bytes of tensors, but the file holds {data_bytes:,} after its header")
    return end


def _span(name: str, entry: Any) -> tuple[int, int]:
    """The byte span ``[begin, end)`` of tensor ``name`` in the data, checked against its dtype and shape."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name}: not a tensor entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name}: unknown dtype {dtype!r}")
    numbers = [*shape, *offsets] if isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 else [None]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        raise ValueError(f"tensor {name}: its shape and offsets are not whole numbers")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError(
            f"tensor {name}: {dtype} of shape {tuple(shape)} is {math.prod(shape) * DTYPE_BYTES[dtype]:,} bytes, but its span is {end - begin:,}"
        )
    return begin, end


def load_record(path: str | Path) -> ModelRecord:
    """The :class:`ModelRecord` in the model file at ``path``, verified; :class:`ModelFileError` if anything is off."""
    tensors, metadata = read_model_file(path)
    try:
        info = parse_json(metadata["data"])
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
            seen_ratings=tensors["seen.ratings"].numpy() if "seen.ratings" in tensors else None,
            features={
                side: FittedFeatures(
                    FeatureMap.from_json(spec),
                    FeatureBags(*(tensors[f"features.{side}.{name}"].numpy() for name in ("indptr", "indices", "weights"))),
                )
                for side, spec in info.get("features", {}).items()
            },
        )
        return ModelRecord(
            params=parse_json(metadata["config"]),
            state={k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")},
            data=data,
            history=[EpochRecord.from_json(epoch) for epoch in parse_json(metadata["history"])],
            info=parse_json(metadata.get("info", "{}")),
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
    tensors, metadata = _read_safetensors(target, "is not a readable mtrec checkpoint")
    expected = metadata.pop("sha256", None)
    if metadata.get("format") != CHECKPOINT_FORMAT or expected != _digest(tensors, metadata):
        raise ModelFileError(f"{target} failed its integrity check: not a complete mtrec checkpoint")
    try:
        info = parse_json(metadata["info"])
    except (KeyError, ValueError) as error:
        raise ModelFileError(f"{target}: its facts are not JSON ({error})") from None
    validate(TrainingStateSchema, info, ModelFileError, f"{target}: info")
    return tensors, info
