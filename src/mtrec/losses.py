"""The two task losses. Each takes its own head's output and its own target."""

from __future__ import annotations

import torch


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L_F = mean(1 - sigmoid(p+ - p-)): pushes a watched item's score above an unwatched one's."""
    return (1.0 - torch.sigmoid(positive - negative)).mean()


def regression_loss(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """L_R = mean((r_hat - r)^2)."""
    return torch.mean((predicted - observed) ** 2)
