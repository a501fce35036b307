"""Embedding layers with the initialisations the model needs."""

from __future__ import annotations

import torch
from torch import nn


class ScaledEmbedding(nn.Embedding):
    """An embedding initialised from N(0, 1/d), where d is the embedding dimension.

    The variance 1/d keeps the dot product of two random embeddings of order 1 whatever d is.
    """

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / self.embedding_dim**0.5)


class ZeroEmbedding(nn.Embedding):
    """An embedding initialised to zero: per-user and per-item biases start neutral."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
