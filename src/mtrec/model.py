"""The estimator: :class:`MultitaskModel` trains, predicts, saves and loads a multi-task network."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from mtrec.config.model import Hyperparameters
from mtrec.data.formats import Column
from mtrec.data.interactions import Interactions, as_interactions
from mtrec.errors import ConfigError
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS
from mtrec.io.fitted import EpochRecord, FittedData
from mtrec.model_files import ModelFiles
from mtrec.nn.network import MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.prediction import Predictions
from mtrec.train.callbacks import CallbackLike
from mtrec.train.distributed import Distributed
from mtrec.train.session import TrainingSession, evaluation_plan, preflight
from mtrec.train.steps import Step


def _is_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


class MultitaskModel(Hyperparameters, Predictions, ModelFiles):
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
    row_l2:
        λ of an L2 penalty on the embedding rows each batch reads (the users' and the positive
        items'), per pair: frequent users and items are regularised more, as in SVD. Trains with
        the autograd step.
    cross_stitch_init:
        The diagonal of the cross-stitch maps at the start (1 is the identity: separate embeddings).
    lr_schedule:
        ``"constant"``, ``"exponential"`` (× ``lr_gamma`` after every epoch), ``"step"``
        (× ``lr_gamma`` every ``lr_step`` epochs) or ``"cosine"`` (down to 0 over the epochs).
    lr_gamma, lr_step:
        The schedules' decay factor and step length in epochs.
    watch_loss, rating_loss:
        The ``watch`` task's loss (:data:`~mtrec.nn.losses.WATCH_LOSSES`: ``"bpr"``, the seed's,
        ``"logsigmoid"``, ``"sampled-softmax"``, ``"softmax"``) and the ``rating`` task's
        (:data:`~mtrec.nn.tasks.RATING_LOSSES`: ``"mse"``, the seed's, or ``"huber"``).
    user_encoder, history_alpha, history_dropout, history_cap:
        How users become vectors (:data:`~mtrec.nn.network.USER_ENCODERS`): ``"id"`` (the seed's
        U), or ``"history"``, U[u] + |N(u)|^-α Σ Y[j] over the user's training items
        (:class:`~mtrec.nn.encoders.HistoryEncoder`: α, the share of the history dropped while
        training, the most items pooled).
    negatives:
        Negatives sampled per positive pair; the watch loss averages over all of them.
    exclude_positives:
        Redraw a sampled negative that is one of the user's training items.
    negative_sampling:
        ``"uniform"``, or ``"popularity"`` (an item drawn in proportion to its training pairs;
        ``sampled-softmax`` then subtracts log Q from each candidate's score).
    watch_weights:
        ``"none"``, or ``"rating"``: each pair's watch loss weighted by its rating over the mean.
    batch_by:
        What each epoch shuffles: ``"pairs"``, or ``"users"`` (users shuffled, each user's pairs
        kept together: a history encoder pools each history once per batch, and ``softmax``
        scores each user once).
    ema:
        Decay β per step of an exponential moving average of the weights
        (:class:`~mtrec.train.averaging.WeightAverage`); evaluation, early stopping and the
        fitted model read the average. 0 keeps the weights as trained.
    rating_bias:
        Add a learned per-user and per-item bias to the rating head's output.
    rating_reads_score:
        The rating MLP also reads the pair's watch score (``[u, q, u*q, p]``).
    start_at_mean:
        Start the rating head's output at the training mean rating (the MLP's last bias), as
        SVD's μ does, rather than at 0: at a small learning rate the head otherwise spends its
        first epochs climbing to the mean.
    item_item, item_item_l2, item_item_weight:
        Add an item-item path to the watch score (:mod:`mtrec.nn.itemitem`): EASE's closed-form
        items × items matrix, with ridge penalty ``item_item_l2``, applied to the user's training
        items and weighted by ``item_item_weight``. Either left None is chosen on the validation
        set after training (:attr:`selection_` records both); without one, both must be given.
    features:
        The side features the model reads: ``"none"``, ``"items"``, ``"users"`` or
        ``"items,users"``, from the training data's feature tables (``Interactions.item_features``,
        ``user_features``: a MovieLens release's genres, years and demographics, or your own files).
        A user or item is its id vector plus the weighted sum of its feature vectors (LightFM's), in
        both heads; one without training pairs is its features alone, so that a new item or user
        with features is scored without retraining (:mod:`mtrec.data.feature_maps`).
    item_feature_columns, user_feature_columns:
        The feature columns the model reads, by name (``"genres,year,released"``); None reads every
        column of the table but its optional ones (MovieLens 100K's release month, ``released``,
        is read only when named). The fitted map remembers the columns left out, so that a file
        that has them may still be given to score new items or users.
    id_dropout:
        While training, the share of the users and items (of a side with features) whose id part is
        left out at each step, so that they are read by their features alone (DropoutNet's id
        dropout): the feature vectors then learn to stand for a user or item by themselves, as
        they must for a cold one. 0 to below 1.
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
        row_l2: float = 0.0,
        lr_schedule: str = "constant",
        lr_gamma: float = 0.95,
        lr_step: int = 10,
        watch_loss: str = "bpr",
        rating_loss: str = "mse",
        user_encoder: str = "id",
        history_alpha: float = 0.5,
        history_dropout: float = 0.0,
        history_cap: int = 1000,
        negatives: int = 1,
        exclude_positives: bool = False,
        negative_sampling: str = "uniform",
        watch_weights: str = "none",
        batch_by: str = "pairs",
        ema: float = 0.0,
        rating_bias: bool = False,
        rating_reads_score: bool = False,
        start_at_mean: bool = False,
        item_item: bool = False,
        item_item_l2: float | None = None,
        item_item_weight: float | None = None,
        features: str = "none",
        item_feature_columns: str | None = None,
        user_feature_columns: str | None = None,
        id_dropout: float = 0.0,
        cross_stitch_init: float = 0.9,
        seed: int = 0,
        device: str = "cpu",
        num_threads: int | None = None,
        step: str = "auto",
    ) -> None:
        # scikit-learn's contract: each parameter is an attribute of its own name, stored as given.
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)
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
        self.final_metrics_: dict[str, float] = {}

    @property
    def layer_sizes_(self) -> list[int]:
        """The rating MLP's layer sizes in effect (the default filled in)."""
        if self.layer_sizes is None:
            return [3 * self.embedding_dim, 64]
        return list(self.layer_sizes)

    def objective(self) -> JointObjective:
        """The training objective these hyper-parameters define (:meth:`ModelConfig.objective <mtrec.config.model.ModelConfig.objective>`)."""
        return self._check_params().objective()

    def weight_decay(self) -> dict[str, float]:
        """Adam's weight decay per parameter group."""
        return self._check_params().weight_decay()

    def build_network(
        self, num_users: int, num_items: int, device: torch.device | str = "cpu", feature_rows: dict[str, int] | None = None
    ) -> MultitaskNet:
        """A fresh network for this many users and items (and feature rows), initialised from ``seed``."""
        return self._check_params().build_network(num_users, num_items, device, feature_rows)

    def make_step(self, network: MultitaskNet) -> Step:
        """The training step for ``network``, as :attr:`step` asks."""
        return self._check_params().make_step(network)

    def resolved_step(self) -> str:
        """The step :meth:`fit` will take: ``"fused"`` or ``"autograd"`` (what ``step="auto"`` resolves to)."""
        return self._check_params().resolved_step()

    def memory_needed(self, num_users: int, num_items: int) -> dict[str, float]:
        """Bytes training would take, by the option that makes them (:func:`mtrec.train.memory.memory_needed`)."""
        return self._check_params().memory_needed(num_users, num_items)

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
        """Raise what :meth:`fit` would raise on these arguments, before any work; return the device
        (:func:`mtrec.train.session.preflight`)."""
        return preflight(self._check_params(), train, epochs, test, validation, early_stopping, patience, metrics, k)

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
        """Train from scratch on ``train`` for up to ``epochs`` epochs (or on from a checkpoint: a
        :class:`~mtrec.train.callbacks.Resume` callback).

        Parameters
        ----------
        train, columns:
            Training interactions, or a pandas or polars DataFrame or pyarrow Table of them
            (:meth:`Interactions.from_frame <mtrec.data.interactions.Interactions.from_frame>`, with
            ``columns`` naming those it does not recognise: ``{"user": "customer"}``). Without
            ratings, regression_weight must be 0.
        epochs, eval_every:
            Passes over the training data (fewer if early stopping ends training); evaluate every N.
        validation, test:
            Measured every ``eval_every`` epochs and on the last (``valid_<metric>``,
            ``test_<metric>``), with the items of ``train`` (and, for test, of ``validation``)
            removed from the rankings. Early stopping reads validation; test is for the record only.
        early_stopping, patience:
            None, ``"joint"`` (the mean relative improvement of validation MSE and MRR over the
            mean rating and the most popular items: :func:`mtrec.train.loop.joint_score`), or a
            validation metric (``"mse"``, ``"ndcg@10"``...). Training stops after ``patience``
            evaluations without improvement and keeps the best validation epoch's weights
            (:attr:`selected_epoch_`); without it, the last epoch's.
        metrics, k:
            The metrics measured and the cut-offs of the top-k ones (:mod:`mtrec.eval.evaluation`).
        callbacks:
            Functions of each epoch's :class:`EpochRecord` (progress, logging), or
            :class:`~mtrec.train.callbacks.Callback` objects (checkpoints, resuming, TensorBoard).
        distributed:
            This process's place in a distributed run (:mod:`mtrec.train.distributed`): it trains its
            slice of each global batch of ``batch_size`` and evaluates its share of the users.

        Raises :class:`~mtrec.errors.TrainingDiverged` when a loss or a parameter becomes NaN or
        infinite, and :class:`~mtrec.errors.DataError` for a frame that cannot be read.
        """
        train = as_interactions(train, columns)
        settings = self._check_params()
        device = preflight(settings, train, epochs, test, validation, early_stopping, patience, metrics, k)
        rates = train.has_ratings and self.regression_weight > 0
        plan = evaluation_plan(train, validation, test, device, metrics, k, early_stopping, patience, rates, distributed)
        session = TrainingSession(settings, train, epochs, device, plan, eval_every, distributed, callbacks)
        self.data_ = FittedData.from_interactions(train, session.features)
        self.network_, self.history_ = session.network, []
        result = session.run()
        self.history_, self.step_ = result.history, result.step
        self.network_.eval()  # trained: what reads it (export, serving) sees no training-time dropout
        self.selected_epoch_, self.selection_ = result.selected_epoch, result.selection
        self.final_metrics_ = result.final_metrics
        return self

    def refit(
        self,
        train: Interactions | Any,
        epochs: int | None = None,
        *,
        columns: Mapping[str, Column] | None = None,
        callbacks: Iterable[CallbackLike] | CallbackLike | None = None,
    ) -> MultitaskModel:
        """Train again, from scratch, on ``train`` (the training part and its validation set together:
        :meth:`Interactions.joined <mtrec.data.interactions.Interactions.joined>`) for the number of
        epochs the last :meth:`fit` chose on validation (:attr:`selected_epoch_`), or ``epochs``.

        Nothing is evaluated and nothing chosen: the item-item path keeps the λ and weight the fit
        chose (made again from ``train``). :attr:`history_` and :attr:`selected_epoch_` stay the
        fit's, what the choice rests on; :attr:`selection_` adds ``refit_epochs`` and ``refit_rows``.
        """
        network = self._fitted_network()
        count = self.selected_epoch_ if epochs is None else epochs
        if count is None or count < 1:
            raise ConfigError("refit needs a number of epochs: the fit chose none (it trained 0 epochs); give epochs")
        train = as_interactions(train, columns)
        settings = self._check_params()
        if getattr(network, "item_item", False):
            # the λ and weight chosen on validation, which the network keeps (a loaded model too)
            chosen = {"item_item_l2": float(network.item_item_l2), "item_item_weight": float(network.item_item_weight)}
            if not chosen["item_item_l2"] > 0:
                raise ConfigError("refit needs the item-item path's chosen l2, and this model's path was never made")
            settings = settings.model_copy(update=chosen)
        device = preflight(settings, train, count, None, None, None, 1, DEFAULT_METRICS, DEFAULT_K)
        rates = train.has_ratings and self.regression_weight > 0
        plan = evaluation_plan(train, None, None, device, DEFAULT_METRICS, DEFAULT_K, None, 1, rates)
        session = TrainingSession(settings, train, count, device, plan, 1, None, callbacks)
        result = session.run()
        self.data_ = FittedData.from_interactions(train, session.features)
        self.network_ = result.network.eval()
        self.selection_ = {**self.selection_, "refit_epochs": int(count), "refit_rows": len(train)}
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
