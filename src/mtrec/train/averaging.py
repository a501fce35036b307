"""Weight averaging: an exponential moving average of the network's parameters over training steps.

After every step the average moves towards the parameters, ``a ← β·a + (1 − β)·θ``. Evaluation,
early stopping's choice and the saved model read the average rather than the last step's
parameters: it smooths the noise of the last steps (Polyak averaging), and on ML-100K it gains
both tasks (README, "Presets"). The average is part of a training checkpoint, so a resumed run
averages on as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from mtrec.errors import ConfigError


class WeightAverage:
    """The exponential moving average of ``network``'s parameters, with ``decay`` β in [0, 1)."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"the weight average's decay must be a number from 0 to below 1, got {decay!r}")
        self.decay = float(decay)
        self.parameters = [param for param in network.parameters()]
        self.average = [param.detach().clone() for param in self.parameters]

    def update(self) -> None:
        """Move the average a step towards the parameters."""
        with torch.no_grad():
            torch._foreach_lerp_(self.average, [param.detach() for param in self.parameters], 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The network holds the average inside the block, its own parameters again after it."""
        with torch.no_grad():
            own = [param.detach().clone() for param in self.parameters]
            self.copy_to_network()
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.parameters, own):
                    param.copy_(value)

    def copy_to_network(self) -> None:
        """Put the average into the network's parameters (training is over)."""
        with torch.no_grad():
            for param, value in zip(self.parameters, self.average):
                param.copy_(value)

    def state(self) -> dict[str, torch.Tensor]:
        """The average, as checkpoint tensors."""
        return {f"average.{index}": value.clone() for index, value in enumerate(self.average)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state`'s tensors."""
        with torch.no_grad():
            for index, value in enumerate(self.average):
                value.copy_(tensors[f"average.{index}"])
