"""What a fitted estimator answers: watch scores and ratings of pairs, metrics on held-out data, its history.

:class:`Predictions` is the part of :class:`~mtrec.model.MultitaskModel` that reads a fitted
network (``network_``) and never trains it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mtrec.data.frames import to_frame
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, Evaluator
from mtrec.io.fitted import history_table


class Predictions:
    """Inference on a fitted model: :meth:`predict`, :meth:`evaluate`, :meth:`history_frame`."""

    @property
    def device_(self) -> torch.device:
        """The device the fitted network is on."""
        return next(self._fitted_network().parameters()).device

    def _fitted_network(self) -> Any:
        if self.network_ is None:
            raise ConfigError("the model is not fitted yet: call fit() or load()")
        return self.network_

    @torch.no_grad()
    def predict(self, users: Sequence[int] | np.ndarray, items: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Watch scores p and predicted ratings r_hat for (user index, item index) pairs."""
        network = self._fitted_network()
        data = self.data_
        users_t = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device_)
        items_t = torch.as_tensor(np.asarray(items, dtype=np.int64), device=self.device_)
        if users_t.shape != items_t.shape or users_t.dim() != 1:
            raise ConfigError("users and items must be 1-D sequences of the same length")
        if len(users_t) and (int(users_t.min()) < 0 or int(users_t.max()) >= data.num_users):
            raise ConfigError(f"user index out of range 0..{data.num_users - 1}")
        if len(items_t) and (int(items_t.min()) < 0 or int(items_t.max()) >= data.num_items):
            raise ConfigError(f"item index out of range 0..{data.num_items - 1}")
        was_training = network.training
        network.eval()
        p, r_hat = network.watch_score(users_t, items_t), network.rating(users_t, items_t)
        network.train(was_training)
        return p.cpu().numpy(), r_hat.cpu().numpy()

    def evaluate(
        self,
        test: Interactions,
        train: Interactions | Sequence[Interactions] | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        k: Sequence[int] = DEFAULT_K,
    ) -> dict[str, float]:
        """The metrics of the fitted model on ``test``, with ``train``'s items removed from the rankings."""
        return Evaluator(test, train, self.device_, metrics, k).evaluate(self._fitted_network())

    def history_frame(self, backend: str = "pandas") -> Any:
        """The per-epoch losses and metrics, one row per epoch (see :func:`~mtrec.io.fitted.history_table`).

        Parameters
        ----------
        backend:
            ``"pandas"`` (a DataFrame), ``"polars"`` or ``"arrow"`` (a pyarrow Table).

        Raises
        ------
        ConfigError
            When the model is not fitted, or for a backend whose library is not installed.

        Examples
        --------
        >>> history = model.history_frame()
        >>> history.plot(x="epoch", y=["valid_mse", "test_mse"])
        """
        self._fitted_network()
        return to_frame(history_table(self.history_), backend)
