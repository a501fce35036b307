"""The estimator: :class:`MultitaskModel` trains, predicts, saves and loads a multi-task network."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from mtrec.config.model import ModelConfig
from mtrec.data.formats import Column
from mtrec.data.frames import to_frame
from mtrec.data.interactions import Interactions, as_interactions, check_same_ids
from mtrec.errors import ConfigError, DataError, ModelFileError
from mtrec.eval.baselines import PopularityNet
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, Evaluator, metric_names
from mtrec.io.checkpoint import ModelRecord, load_record, model_path, save_record
from mtrec.io.fitted import EpochRecord, FittedData, history_table
from mtrec.nn.losses import JointObjective
from mtrec.nn.network import MultitaskNet
from mtrec.train.distributed import Distributed
from mtrec.train.loop import (
    JOINT,
    EarlyStopping,
    Trainer,
    check_early_stopping,
    make_scheduler,
    torch_threads,
)
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import Step, make_step, resolve_step


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
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use cpu, cuda or auto")
    return resolved


def _is_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


class MultitaskModel:
    """Learns whether a user watches an item (p) and the rating they would give it (r_hat).

    The constructor only stores hyper-parameters (scikit-learn style: :meth:`get_params`,
    :meth:`set_params`), checked by making a :class:`~mtrec.config.model.ModelConfig` of them (whose
    fields declare each one's default, type and range); :meth:`fit` learns.

    Parameters
    ----------
    embedding_dim:
        Dimension d of the user and item latent vectors.
    layer_sizes:
        Input size of each dense layer of the rating MLP; the first must be 3 * d.
        Default (None) ``[3d, 64]``.
    sharing:
        How the heads share the user and item embeddings: ``"hard"`` (the same U and Q, the
        seed's ``--shared_embeddings``), ``"separate"`` (``--no_shared_embeddings``),
        ``"residual"`` or ``"cross-stitch"`` (see :class:`~mtrec.nn.network.MultitaskNet`).
    factorization_weight, regression_weight:
        λF and λR in the joint loss λF·L_F + λR·L_R: each in [0, 1000], not both zero.
    weighting:
        How the two losses become one update: ``"fixed"`` (the λs), ``"uncertainty"``,
        ``"gradnorm"``, ``"pcgrad"`` or ``"mgda"`` (:mod:`mtrec.nn.weighting`). All but ``fixed``
        train with the autograd step.
    gradnorm_alpha:
        GradNorm's asymmetry α.
    batch_size:
        Positive training triples per optimiser step.
    learning_rate:
        Adam's learning rate. For large batches scale it linearly with the batch
        (:func:`scaled_learning_rate`), and add a little ``l2``.
    l2:
        Adam's weight decay, for every parameter group that has none of its own.
    l2_embeddings, l2_residuals, l2_biases, l2_mlp:
        Weight decay of the user and item embeddings, of the task-specific parts of residual
        sharing, of the biases, and of the rating MLP (and cross-stitch maps) (None: ``l2``).
    cross_stitch_init:
        The diagonal of the cross-stitch maps at the start (1 is the identity: separate embeddings).
    lr_schedule:
        ``"constant"``, ``"exponential"`` (× ``lr_gamma`` after every epoch), ``"step"``
        (× ``lr_gamma`` every ``lr_step`` epochs) or ``"cosine"`` (down to 0 over the epochs).
    lr_gamma, lr_step:
        The schedules' decay factor and step length in epochs.
    watch_loss:
        ``"bpr"``, mean(1 − σ(p⁺ − p⁻)) (the seed's), or ``"logsigmoid"``, mean(−log σ(p⁺ − p⁻)).
    negatives:
        Negatives sampled per positive pair; the watch loss averages over all of them.
    exclude_positives:
        Redraw a sampled negative that is one of the user's training items.
    rating_bias:
        Add a learned per-user and per-item bias to the rating head's output.
    seed:
        Seeds initialisation, shuffling and negative sampling: the same seed gives the same
        results, bit for bit, on CPU. 0 to 2**64 - 1.
    device:
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    num_threads:
        Intra-op threads used while training; None keeps PyTorch's setting.
    step:
        The training step: ``"fused"`` (hand-written gradients, fastest; the seed's network and
        objective only), ``"autograd"`` (any network and objective), or ``"auto"`` (fused
        where it is supported). Only speed depends on it.
    """

    def __init__(
        self,
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] | None = None,
        sharing: str = "hard",
        factorization_weight: float = 0.5,
        regression_weight: float = 0.5,
        weighting: str = "fixed",
        gradnorm_alpha: float = 1.5,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        l2: float = 0.0,
        l2_embeddings: float | None = None,
        l2_residuals: float | None = None,
        l2_biases: float | None = None,
        l2_mlp: float | None = None,
        lr_schedule: str = "constant",
        lr_gamma: float = 0.95,
        lr_step: int = 10,
        watch_loss: str = "bpr",
        negatives: int = 1,
        exclude_positives: bool = False,
        rating_bias: bool = False,
        cross_stitch_init: float = 0.9,
        seed: int = 0,
        device: str = "cpu",
        num_threads: int | None = None,
        step: str = "auto",
    ) -> None:
        self.embedding_dim = embedding_dim
        self.layer_sizes = layer_sizes
        self.sharing = sharing
        self.factorization_weight = factorization_weight
        self.regression_weight = regression_weight
        self.weighting = weighting
        self.gradnorm_alpha = gradnorm_alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.l2 = l2
        self.l2_embeddings = l2_embeddings
        self.l2_residuals = l2_residuals
        self.l2_biases = l2_biases
        self.l2_mlp = l2_mlp
        self.lr_schedule = lr_schedule
        self.lr_gamma = lr_gamma
        self.lr_step = lr_step
        self.watch_loss = watch_loss
        self.negatives = negatives
        self.exclude_positives = exclude_positives
        self.rating_bias = rating_bias
        self.cross_stitch_init = cross_stitch_init
        self.seed = seed
        self.device = device
        self.num_threads = num_threads
        self.step = step
        self._check_params()
        self._unfitted()

    def _unfitted(self) -> None:
        """No fitted state yet: :meth:`fit` (or :meth:`from_record`) sets it."""
        self.network_: MultitaskNet | None = None
        self.data_: FittedData | None = None
        self.history_: list[EpochRecord] = []
        self.step_: str | None = None
        self.selected_epoch_: int | None = None
        self.selection_: dict[str, Any] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters and their values, as plain data (scikit-learn's contract)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> MultitaskModel:
        """Set constructor parameters by name (scikit-learn's contract); checks them; returns self."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ConfigError(f"unknown parameter {', '.join(unknown)}; the parameters are {', '.join(self._param_names())}")
        previous = self.get_params()
        for name, value in params.items():
            setattr(self, name, value)
        try:
            self._check_params()
        except ConfigError:
            for name, value in previous.items():
                setattr(self, name, value)
            raise
        return self

    @property
    def layer_sizes_(self) -> list[int]:
        """The rating MLP's layer sizes in effect (the default filled in)."""
        if self.layer_sizes is None:
            return [3 * self.embedding_dim, 64]
        return list(self.layer_sizes)

    def _check_params(self) -> ModelConfig:
        """The parameters, checked: a :class:`~mtrec.errors.ConfigError` naming each one out of its type or range."""
        return ModelConfig(**self.get_params())

    @property
    def device_(self) -> torch.device:
        return next(self._fitted_network().parameters()).device

    def _fitted_network(self) -> MultitaskNet:
        if self.network_ is None:
            raise ConfigError("the model is not fitted yet: call fit() or load()")
        return self.network_

    def objective(self) -> JointObjective:
        """The training objective these hyper-parameters define."""
        return JointObjective(self.factorization_weight, self.regression_weight, self.watch_loss, self.weighting, self.gradnorm_alpha)

    def weight_decay(self) -> dict[str, float]:
        """Adam's weight decay per parameter group."""
        own = {"embeddings": self.l2_embeddings, "residuals": self.l2_residuals, "biases": self.l2_biases, "mlp": self.l2_mlp}
        return {group: self.l2 if value is None else value for group, value in own.items()}

    def build_network(self, num_users: int, num_items: int, device: torch.device | str = "cpu") -> MultitaskNet:
        """A fresh network for this many users and items, initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = MultitaskNet(
                num_users, num_items, self.embedding_dim, self.layer_sizes_, self.sharing, self.rating_bias,
                self.cross_stitch_init,
            )  # fmt: skip
        return network.to(device)

    def make_step(self, network: MultitaskNet) -> Step:
        """The training step for ``network``, as :attr:`step` asks."""
        return make_step(self.step, network, self.objective(), self.learning_rate, self.weight_decay())

    def resolved_step(self) -> str:
        """The step :meth:`fit` will take: ``"fused"`` or ``"autograd"`` (what ``step="auto"`` resolves to)."""
        with torch.device("meta"):  # the network's shape only: nothing is allocated
            network = self.build_network(1, 1, "meta")
        return resolve_step(self.step, network, self.objective())

    def memory_needed(self, num_users: int, num_items: int) -> dict[str, float]:
        """Bytes training would take, by the option that makes them: the embeddings' and the
        inputs' width (``embedding_dim``), the hidden layers (``layer_sizes``), the batch (``batch_size``).

        Each parameter is held four times (value, gradient and Adam's two moments) in float32;
        a batch's activations about three times per layer.
        """
        d, hidden = self.embedding_dim, [*self.layer_sizes_[1:], 1]
        with torch.device("meta"):  # the tables the network declares, their widths summed; nothing is allocated
            network = self.build_network(1, 1, "meta")
        tables = sum(getattr(network, table.name).embedding_dim for table in network.tables())
        sizes = [3 * d, *hidden]
        mlp = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        rows = self.batch_size * (1 + self.negatives)
        needed = {"embedding_dim": 16.0 * (num_users + num_items) * tables, "layer_sizes": 0.0, "batch_size": 0.0}
        # The MLP and the activations grow with whichever is wider: the inputs [u, q, u*q] or the hidden layers.
        width = "layer_sizes" if sum(hidden) > 3 * d else "embedding_dim"
        needed[width] += 16.0 * mlp
        needed["batch_size" if rows > 10**7 else width] += 12.0 * rows * sum(sizes)
        return needed

    def check_fit(
        self,
        train: Interactions,
        epochs: int,
        test: Interactions | None = None,
        validation: Interactions | None = None,
        early_stopping: str | None = None,
        patience: int = 10,
        metrics: Sequence[str] = DEFAULT_METRICS,
        k: Sequence[int] = DEFAULT_K,
    ) -> torch.device:
        """Raise what :meth:`fit` would raise on these arguments, before any work; return the device."""
        self._check_params()
        if not _is_whole(epochs) or epochs < 0:
            raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
        metric_names(metrics, k)
        if early_stopping is not None:
            check_early_stopping(early_stopping, patience, k)
            if validation is None:
                raise ConfigError("early stopping needs a validation set (--valid-fraction or --valid-k)")
        if len(train) == 0:
            raise DataError("the training set is empty")
        device = resolve_device(self.device)
        check_memory(self.memory_needed(train.num_users, train.num_items), device)
        if not train.has_ratings and self.regression_weight > 0:
            raise ConfigError("the data has no ratings, so the rating head cannot train: set regression_weight to 0")
        for other in (test, validation):
            if other is not None:
                check_same_ids(train, other)
        return device

    def fit(
        self,
        train: Interactions | Any,
        epochs: int = 1,
        *,
        columns: Mapping[str, Column] | None = None,
        validation: Interactions | None = None,
        test: Interactions | None = None,
        eval_every: int = 1,
        early_stopping: str | None = None,
        patience: int = 10,
        metrics: Sequence[str] = DEFAULT_METRICS,
        k: Sequence[int] = DEFAULT_K,
        callback: Callable[[EpochRecord], None] | None = None,
        distributed: Distributed | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        checkpoint_every: int = 0,
        resume: tuple[dict[str, torch.Tensor], dict] | None = None,
    ) -> MultitaskModel:
        """Train from scratch on ``train`` for up to ``epochs`` epochs (or on from a checkpoint).

        Parameters
        ----------
        train:
            Training interactions, or a pandas or polars DataFrame or pyarrow Table of them, read
            by :meth:`Interactions.from_frame <mtrec.data.interactions.Interactions.from_frame>`.
            Without ratings, regression_weight must be 0.
        epochs:
            Passes over the training data (fewer if early stopping ends training).
        columns:
            For a frame ``train``, the columns that are not recognised by their names:
            ``{"user": "customer", "rating": "stars"}`` (keys ``user``, ``item``, ``rating``,
            ``timestamp``).
        validation:
            If given, measured every ``eval_every`` epochs and on the last (``valid_<metric>``),
            with ``train``'s items removed from the rankings; early stopping reads it.
        test:
            If given, measured likewise for the record only (``test_<metric>``), with the
            items of ``train`` and ``validation`` removed from the rankings. Nothing is
            chosen on it.
        eval_every:
            Evaluate every N epochs (and after the last).
        early_stopping:
            None, ``"joint"`` (the mean relative improvement of validation MSE and MRR over
            the mean rating and the most popular items, see :func:`mtrec.train.loop.joint_score`),
            or a validation metric (``"mse"``, ``"ndcg@10"``...). Training stops once it has not
            improved for ``patience`` evaluations, and the model keeps the weights of the best
            validation epoch (:attr:`selected_epoch_`); without it, those of the last epoch.
        patience:
            Evaluations without improvement before early stopping ends training.
        metrics, k:
            The metrics measured and the cut-offs of the top-k ones (:mod:`mtrec.eval.evaluation`).
        callback:
            Called with each epoch's :class:`EpochRecord` (progress bars, logging).
        distributed:
            This process's place in a distributed run (:mod:`mtrec.train.distributed`): it trains its
            slice of each global batch of ``batch_size`` and evaluates its share of the users.
        on_checkpoint, checkpoint_every:
            Called with the :class:`~mtrec.train.loop.Trainer` every ``checkpoint_every`` epochs
            (to save :meth:`~mtrec.train.loop.Trainer.state`).
        resume:
            A :meth:`~mtrec.train.loop.Trainer.state` to continue from instead of starting over.

        Raises
        ------
        TrainingDiverged
            When a loss or a parameter becomes NaN or infinite.
        DataError
            For a frame that cannot be read (see :meth:`~mtrec.data.interactions.Interactions.from_frame`).
        """
        train = as_interactions(train, columns)
        device = self.check_fit(train, epochs, test, validation, early_stopping, patience, metrics, k)
        evaluators = {}
        stopping = None
        if validation is not None:
            # The validation set also measures what the criterion reads.
            wanted, valid_k = list(metrics), list(k)
            if early_stopping == JOINT:
                wanted += ["mse", "mrr"] if train.has_ratings and self.regression_weight > 0 else ["mrr"]
            elif early_stopping is not None:
                metric, _, cutoff = early_stopping.partition("@")
                wanted.append(metric)
                valid_k += [int(cutoff)] if cutoff else []
            evaluators["valid"] = Evaluator(validation, train, device, list(dict.fromkeys(wanted)), list(dict.fromkeys(valid_k)), distributed)
            if early_stopping is not None:
                stopping = EarlyStopping(early_stopping, patience, reference_metrics(train, evaluators["valid"]))
        if test is not None:
            known = [train] if validation is None else [train, validation]
            evaluators["test"] = Evaluator(test, known, device, metrics, k, distributed)
        self.data_ = FittedData.from_interactions(train)
        self.network_ = self.build_network(train.num_users, train.num_items, device)
        self.history_ = []
        eval_threads = torch.get_num_threads()
        with torch_threads(self.num_threads):
            step = self.make_step(self.network_)
            self.step_ = step.kind
            scheduler = make_scheduler(step.optimizer, self.lr_schedule, epochs, self.lr_gamma, self.lr_step)
            with_ratings = train.has_ratings and self.regression_weight > 0
            sampler = EpochSampler(train, self.seed, device, with_ratings, self.negatives, self.exclude_positives)
            trainer = Trainer(
                step, sampler, self.batch_size, epochs, evaluators, eval_every, eval_threads, callback, stopping,
                scheduler, distributed, on_checkpoint, checkpoint_every,
            )  # fmt: skip
            if resume is not None:
                trainer.restore(*resume)
            self.history_ = trainer.run()
        last = self.history_[-1].epoch if self.history_ else None
        self.selected_epoch_ = stopping.best_epoch if stopping is not None and stopping.best_epoch else last
        self.selection_ = (
            {}
            if stopping is None
            else {
                "criterion": early_stopping,
                "score": stopping.best_score,
                **{f"reference_{k}": v for k, v in stopping.reference.items()},
            }
        )
        return self

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

    def to_record(self) -> ModelRecord:
        """What a model file holds of this fitted model."""
        network = self._fitted_network()
        info = {"selected_epoch": self.selected_epoch_}
        return ModelRecord(self.get_params(), network.state_dict(), self.data_, self.history_, info)

    @classmethod
    def from_record(cls, record: ModelRecord, device: str = "cpu") -> MultitaskModel:
        """The fitted model a :class:`~mtrec.io.checkpoint.ModelRecord` describes, on ``device``."""
        target = resolve_device(device)
        params = {**record.params, "device": device}
        if "embedding_sharing" in params:  # a model file of mtrec 0.1
            params.setdefault("sharing", "hard" if params.pop("embedding_sharing") else "separate")
        known = set(cls._param_names())
        model = cls(**{k: v for k, v in params.items() if k in known})
        model.data_ = record.data
        network = model.build_network(record.data.num_users, record.data.num_items)
        network.load_state_dict(record.state)
        model.network_ = network.to(target)
        model.history_ = list(record.history)
        last = model.history_[-1].epoch if model.history_ else None
        model.selected_epoch_ = record.info.get("selected_epoch", last)
        return model

    def save(self, path: str | Path) -> Path:
        """Write the model atomically to ``path`` (a file, or a directory to hold model.safetensors)."""
        return save_record(self.to_record(), path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> MultitaskModel:
        """Read a model written by :meth:`save`; never executes code from the file."""
        resolve_device(device)  # a device this machine lacks is the caller's error, not the file's
        record = load_record(path)
        try:
            return cls.from_record(record, device)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ModelFileError(f"{model_path(path)} has inconsistent contents: {error}") from None


def machine_memory(device: torch.device) -> int:
    """Bytes of memory of the device: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: dict[str, float], device: torch.device) -> None:
    """:class:`ConfigError` naming the option to lower when training would need more memory than the device has."""
    total, available = sum(needed.values()), machine_memory(device)
    if total > available:
        option = max(needed, key=needed.get)
        raise ConfigError(
            f"training would need about {total / 1e9:,.1f} GB of memory, more than the {available / 1e9:,.1f} GB "
            f"this {'GPU' if device.type == 'cuda' else 'machine'} has; most of it for --{option.replace('_', '-')}: lower it"
        )


def reference_metrics(train: Interactions, validation: Evaluator) -> dict[str, float]:
    """Validation MSE of the mean training rating and MRR of the most popular items: the joint criterion's reference."""
    reference = validation.evaluate(PopularityNet(train))
    return {"mse": reference.get("mse", float("nan")), "mrr": reference["mrr"]}


def scaled_learning_rate(batch_size: int, base_rate: float = 1e-3, base_batch: int = 256, max_batch: int = 16384) -> float:
    """Adam's learning rate for ``batch_size``: linear scaling from 1e-3 at batch 256, held
    constant beyond batch 16384 (0.064).

    Measured on ML-100K (shared, 0.99/0.01): batch 4096 at 0.016 with ``l2=5e-6`` reaches the
    MRR of 200 epochs at batch 256 (0.13) in 66 epochs; the square-root rule (0.004) learns
    too slowly, and 0.016 without weight decay peaks just below it. Batch 16384 at 0.064 reaches
    MRR 0.12 in 30 epochs. Past that the linear rule overshoots: at batch 65536, 0.256 sends
    the training MSE to 7 in the first epochs, while 0.064 learns best of 0.032, 0.064 and 0.128.
    """
    return base_rate * min(batch_size, max_batch) / base_batch
