"""How much memory training takes, and the check that the device has it, before any work."""

from __future__ import annotations

import os
from typing import Sequence

import torch

from mtrec.settings import SettingsError


def memory_needed(network, layer_sizes: Sequence[int], batch_size: int, negatives: int, num_users: int, num_items: int) -> dict[str, float]:
    """Bytes training would take, by the option that makes them: the embeddings' and the
    inputs' width (``embedding_dim``), the hidden layers (``layer_sizes``), the batch (``batch_size``).

    ``network`` is the model's network of any size (a "meta" one allocates nothing): its declared
    tables (:meth:`~mtrec.nn.network.MultitaskNet.tables`) say how many values each user and item
    holds. Each parameter is held four times (value, gradient and Adam's two moments) in float32;
    a batch's activations about three times per layer. The item-item path adds its items × items
    matrix, and EASE's float64 ones while it is made.
    """
    d, hidden = layer_sizes[0] // 3, [*layer_sizes[1:], 1]
    tables = sum(getattr(network, table.name).embedding_dim for table in network.tables() if table.rows in ("users", "items"))
    sizes = [3 * d, *hidden]
    mlp = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    rows = batch_size * (1 + negatives)
    needed = {"embedding_dim": 16.0 * (num_users + num_items) * tables, "layer_sizes": 0.0, "batch_size": 0.0}
    # The MLP and the activations grow with whichever is wider: the inputs [u, q, u*q] or the hidden layers.
    width = "layer_sizes" if sum(hidden) > 3 * d else "embedding_dim"
    needed[width] += 16.0 * mlp
    needed["batch_size" if rows > 10**7 else width] += 12.0 * rows * sum(sizes)
    if getattr(network, "item_item", False):
        # the path's float32 matrix, and EASE's float64 Gram matrix, its inverse and B while it is made
        needed["item_item"] = 28.0 * num_items**2
    return needed


def machine_memory(device: torch.device) -> int:
    """Bytes of memory of the device: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: dict[str, float], device: torch.device) -> None:
    """A :class:`~mtrec.settings.SettingsError` naming the setting to lower (the command line: its flag)
    when training would need more memory than the device has."""
    total, available = sum(needed.values()), machine_memory(device)
    if total > available:
        option = max(needed, key=needed.get)
        where = "GPU" if device.type == "cuda" else "machine"
        text = f"training would need about {total / 1e9:,.1f} GB of memory, more than the {available / 1e9:,.1f} GB this {where} has"
        raise SettingsError([("", text + f"; most of it for {{{option}}}: lower it")])
