"""Where training and inference run: a device name resolved, with a clear error for one this machine lacks."""

from __future__ import annotations

import torch

from mtrec.errors import ConfigError
from mtrec.settings import SettingsError


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"cuda"`` without a GPU is a clear error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError([("", f"device {name!r} was asked for but no CUDA GPU is available; use {{device}} cpu or auto")])
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use cpu, cuda or auto")
    return resolved
