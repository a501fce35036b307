"""The estimator: :class:`MultitaskModel` trains, predicts, saves and loads a multi-task network."""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from mtrec.config.model import ModelConfig
from mtrec.data.formats import Column
from mtrec.data.interactions import Interactions, as_interactions, check_same_ids
from mtrec.errors import ConfigError, DataError
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, metric_names
from mtrec.io.fitted import EpochRecord, FittedData
from mtrec.model_files import ModelFiles
from mtrec.nn.network import MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.prediction import Predictions
from mtrec.train.callbacks import CallbackLike
from mtrec.train.devices import resolve_device
from mtrec.train.distributed import Distributed
from mtrec.train.loop import check_early_stopping
from mtrec.train.memory import check_memory, memory_needed
from mtrec.train.session import TrainingSession, evaluation_plan
from mtrec.train.steps import Step, make_step, resolve_step


def _is_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


class MultitaskModel(Predictions, ModelFiles):
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

    def objective(self) -> JointObjective:
        """The training objective these hyper-parameters define."""
        return JointObjective(
            {"watch": self.factorization_weight, "rating": self.regression_weight},
            watch_loss=self.watch_loss,
            weighting=self.weighting,
            gradnorm_alpha=self.gradnorm_alpha,
        )

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
        """Bytes training would take, by the option that makes them (:func:`mtrec.train.memory.memory_needed`)."""
        with torch.device("meta"):  # the network's declared tables: nothing is allocated
            network = self.build_network(1, 1, "meta")
        return memory_needed(network, self.layer_sizes_, self.batch_size, self.negatives, num_users, num_items)

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
        callbacks: Iterable[CallbackLike] | CallbackLike | None = None,
        distributed: Distributed | None = None,
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
        callbacks:
            Called as training goes (:mod:`mtrec.train.callbacks`): functions of each epoch's
            :class:`EpochRecord` (progress bars, logging), or :class:`~mtrec.train.callbacks.Callback`
            objects: :class:`~mtrec.train.callbacks.Checkpoints`, :class:`~mtrec.train.callbacks.Resume`
            (continue from a checkpoint instead of starting over), :class:`~mtrec.train.callbacks.TensorBoard`.
        distributed:
            This process's place in a distributed run (:mod:`mtrec.train.distributed`): it trains its
            slice of each global batch of ``batch_size`` and evaluates its share of the users.

        Raises
        ------
        TrainingDiverged
            When a loss or a parameter becomes NaN or infinite.
        DataError
            For a frame that cannot be read (see :meth:`~mtrec.data.interactions.Interactions.from_frame`).
        """
        train = as_interactions(train, columns)
        device = self.check_fit(train, epochs, test, validation, early_stopping, patience, metrics, k)
        rates = train.has_ratings and self.regression_weight > 0
        plan = evaluation_plan(train, validation, test, device, metrics, k, early_stopping, patience, rates, distributed)
        self.data_ = FittedData.from_interactions(train)
        session = TrainingSession(self, train, epochs, device, plan, eval_every, distributed, callbacks)
        self.network_, self.history_ = session.network, []
        result = session.run()
        self.history_, self.step_ = result.history, result.step
        self.selected_epoch_, self.selection_ = result.selected_epoch, result.selection
        return self


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
