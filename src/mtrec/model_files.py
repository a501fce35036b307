"""A fitted estimator on disk: what a model file holds of it, and the estimator read back from one.

:class:`ModelFiles` is the part of :class:`~mtrec.model.MultitaskModel` that saves and loads
(:mod:`mtrec.io.checkpoint` writes and reads the safetensors file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtrec.errors import ModelFileError
from mtrec.io.checkpoint import ModelRecord, load_record, model_path, save_record
from mtrec.train.devices import resolve_device


class ModelFiles:
    """Persistence of a fitted model: :meth:`save`, :meth:`load` and the record between them."""

    def to_record(self) -> ModelRecord:
        """What a model file holds of this fitted model."""
        network = self._fitted_network()
        info = {"selected_epoch": self.selected_epoch_}
        return ModelRecord(self.get_params(), network.state_dict(), self.data_, self.history_, info)

    @classmethod
    def from_record(cls, record: ModelRecord, device: str = "cpu") -> Any:
        """The fitted model a :class:`~mtrec.io.checkpoint.ModelRecord` describes, on ``device``."""
        target = resolve_device(device)
        params = {**record.params, "device": device}
        if "embedding_sharing" in params:  # a model file of mtrec 0.1
            params.setdefault("sharing", "hard" if params.pop("embedding_sharing") else "separate")
        known = set(cls._param_names())
        model = cls(**{k: v for k, v in params.items() if k in known})
        model.data_ = record.data
        features = record.data.features
        rows = {side: fitted.map.size for side, fitted in features.items()}
        network = model.build_network(record.data.num_users, record.data.num_items, feature_rows=rows or None)
        network.load_state_dict(record.state)
        network.use_histories(record.data.seen_indptr, record.data.seen_indices)
        for side, fitted in features.items():
            network.use_features(side, fitted.bags.indptr, fitted.bags.indices, fitted.bags.weights)
        network.eval()
        model.network_ = network.to(target)
        model.history_ = list(record.history)
        last = model.history_[-1].epoch if model.history_ else None
        model.selected_epoch_ = record.info.get("selected_epoch", last)
        return model

    def save(self, path: str | Path) -> Path:
        """Write the model atomically to ``path`` (a file, or a directory to hold model.safetensors)."""
        return save_record(self.to_record(), path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Any:
        """Read a model written by :meth:`save`; never executes code from the file."""
        resolve_device(device)  # a device this machine lacks is the caller's error, not the file's
        record = load_record(path)
        try:
            return cls.from_record(record, device)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ModelFileError(f"{model_path(path)} has inconsistent contents: {error}") from None
