"""The estimator's hyper-parameters as typed settings: :class:`ModelConfig`.

Each parameter of :class:`~mtrec.model.MultitaskModel` is a field here, with its default, its type
and range, and the description the command line shows as its help; a choice of component is checked
against its registry (:data:`~mtrec.nn.losses.WATCH_LOSSES`, :data:`~mtrec.nn.network.SHARINGS`,
:data:`~mtrec.nn.weighting.WEIGHTINGS`, :data:`~mtrec.train.loop.SCHEDULES`,
:data:`~mtrec.train.steps.STEPS`), and the rules over several parameters are its validators. The
estimator keeps its keyword parameters (scikit-learn's contract) and checks them by making one.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator

from mtrec.data.feature_maps import parse_columns, parse_sides
from mtrec.errors import ConfigError
from mtrec.nn.encoders import DEFAULT_CAP
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.nn.network import SHARINGS, USER_ENCODERS, MultitaskNet
from mtrec.nn.objective import MAX_LOSS_WEIGHT, WATCH_WEIGHTS, JointObjective
from mtrec.nn.tasks import RATING_LOSSES
from mtrec.nn.weighting import WEIGHTINGS
from mtrec.settings import Flag, Number, Settings, Text, Whole, one_of, rule
from mtrec.train.loop import SCHEDULES
from mtrec.train.memory import memory_needed
from mtrec.train.sampling import BATCH_ORDERS, NEGATIVE_SAMPLINGS
from mtrec.train.steps import STEPS, Step, make_step, resolve_step

#: The largest seed: what ``torch.Generator.manual_seed`` accepts.
MAX_SEED = 2**64 - 1
#: Most negatives per positive pair.
MAX_NEGATIVES = 1000

LossWeight = Annotated[Number, Field(ge=0, le=MAX_LOSS_WEIGHT)]
Decay = Annotated[Number, Field(ge=0)]
Sharing = one_of(SHARINGS)
Weighting = one_of(WEIGHTINGS)
Schedule = one_of(SCHEDULES)
WatchLoss = one_of(WATCH_LOSSES)
RatingLoss = one_of(RATING_LOSSES)
UserEncoder = one_of(USER_ENCODERS)
StepKind = one_of(STEPS, "training step")
BatchOrder = one_of(BATCH_ORDERS, "batch order")
NegativeSampling = one_of(NEGATIVE_SAMPLINGS, "negative sampling")
WatchWeights = one_of(WATCH_WEIGHTS, "watch weights")


def _decay_of(what: str) -> Any:
    return Field(None, ge=0, description=f"weight decay of the {what}", json_schema_extra={"none": "{l2}"})


class ModelConfig(Settings):
    """The hyper-parameters of a :class:`~mtrec.model.MultitaskModel`, checked; see its parameters.

    Read as attributes (``config.learning_rate``) or, as the plain dict a run config held before,
    by name (``config["learning_rate"]``).
    """

    embedding_dim: Whole = Field(32, ge=1, description="latent dimension d")
    layer_sizes: list[Annotated[Whole, Field(ge=1)]] | None = Field(
        None,
        min_length=1,
        description="input size of each dense layer of the rating MLP; the first is 3 * {embedding_dim}",
        json_schema_extra={"none": "3d 64"},
    )
    sharing: Sharing = Field("hard", description="how the heads share U and Q")
    factorization_weight: LossWeight = Field(0.5, description="lambda_F, weight of the watch loss")
    regression_weight: LossWeight = Field(0.5, description="lambda_R, weight of the rating loss")
    weighting: Weighting = Field(
        "fixed",
        description="how the two losses make one update: fixed (the lambdas), uncertainty (learned, Kendall et al.), "
        "gradnorm, pcgrad (conflicting gradients projected), mgda (the min-norm combination)",
    )
    gradnorm_alpha: Number = Field(1.5, ge=0, le=10, description="GradNorm's asymmetry")
    batch_size: Whole = Field(256, ge=1, description="positive triples per step")
    learning_rate: Number = Field(1e-3, gt=0, description="Adam learning rate")
    l2: Decay = Field(0.0, description="Adam weight decay of every parameter group without its own")
    l2_embeddings: Decay | None = _decay_of("user and item embeddings")
    l2_residuals: Decay | None = _decay_of("task-specific parts of residual sharing")
    l2_biases: Decay | None = _decay_of("biases")
    l2_mlp: Decay | None = _decay_of("rating MLP and cross-stitch maps")
    row_l2: Decay = Field(0.0, description="L2 penalty on the embedding rows each batch reads, per pair (autograd step)")
    lr_schedule: Schedule = Field(
        "constant",
        description="learning rate per epoch: constant, exponential (x {lr_gamma} each epoch), step (x {lr_gamma} "
        "every {lr_step} epochs), cosine (to 0 over the epochs)",
    )
    lr_gamma: Number = Field(0.95, gt=0, le=1, description="decay factor of the schedule")
    lr_step: Whole = Field(10, ge=1, description="epochs per step of the step schedule")
    watch_loss: WatchLoss = Field("bpr", description="the watch-score head's loss")
    rating_loss: RatingLoss = Field("mse", description="the rating head's loss")
    user_encoder: UserEncoder = Field("id", description="how users become vectors")
    history_alpha: Number = Field(0.5, ge=0, le=1, description="the history encoder's normalisation |N(u)|^-alpha: 0 a sum, 1 a mean")
    history_dropout: Number = Field(0.0, ge=0, lt=1, description="share of a user's history items left out of each pool while training")
    history_cap: Whole = Field(DEFAULT_CAP, ge=1, description="most history items pooled per user (the lowest item indices)")
    negatives: Whole = Field(1, ge=1, le=MAX_NEGATIVES, description="negatives sampled per positive pair")
    exclude_positives: Flag = Field(False, description="redraw a sampled negative that the user rated")
    negative_sampling: NegativeSampling = Field(
        "uniform", description="how negatives are drawn: uniform, or popularity (by training count; sampled-softmax corrects for it, log Q)"
    )
    watch_weights: WatchWeights = Field("none", description="weigh each pair's watch loss: none, or rating (its rating over the mean)")
    batch_by: BatchOrder = Field("pairs", description="what an epoch shuffles: pairs, or users (each user's pairs in one run, histories pooled once)")
    ema: Number = Field(
        0.0, ge=0, lt=1, description="decay per step of a moving average of the weights, which evaluation and the model keep (0: none)"
    )
    rating_bias: Flag = Field(False, description="a learned per-user and per-item bias in the rating head")
    rating_reads_score: Flag = Field(False, description="the rating MLP also reads the pair's watch score")
    start_at_mean: Flag = Field(False, description="the rating head's output starts at the training mean rating (its last bias)")
    item_item: Flag = Field(False, description="add an item-item path (EASE, closed form) to the watch score, its l2 and weight chosen on validation")
    item_item_l2: Number | None = Field(
        None, gt=0, description="the item-item path's ridge penalty lambda", json_schema_extra={"none": "chosen on validation"}
    )
    item_item_weight: Number | None = Field(
        None, ge=0, description="the item-item path's weight in the watch score", json_schema_extra={"none": "chosen on validation"}
    )
    features: Text = Field(
        "none",
        description="side features the model reads: none, items, users or items,users (a user or item is its id vector "
        "plus the sum of its feature vectors; one without training pairs is its features alone)",
    )
    item_feature_columns: Text | None = Field(
        None,
        description="the item feature columns the model reads, separated by commas (e.g. genres,year,released)",
        json_schema_extra={"none": "every column but the optional ones, such as MovieLens 100K's release month, released"},
    )
    user_feature_columns: Text | None = Field(
        None, description="the user feature columns the model reads, as {item_feature_columns}", json_schema_extra={"none": "every column"}
    )
    id_dropout: Number = Field(
        0.0, ge=0, lt=1, description="while training, share of the users and items with features read by their features alone (DropoutNet)"
    )
    cross_stitch_init: Number = Field(0.9, ge=0, le=1, description="diagonal of the cross-stitch maps at the start, 1 being the identity")
    seed: Whole = Field(0, ge=0, le=MAX_SEED, description="seeds split, initialisation and sampling")
    device: Text = Field("cpu", description="cpu, cuda, cuda:N or auto (CUDA when available)")
    num_threads: Whole | None = Field(None, ge=1, description="CPU threads while training", json_schema_extra={"none": "PyTorch's"})
    step: StepKind = Field(
        "auto",
        description="training step: fused (hand-written gradients, the seed's network), autograd (any), auto (fused where it applies)",
    )

    @model_validator(mode="after")
    def _the_mlp_reads_u_q_and_their_product(self) -> ModelConfig:
        if self.layer_sizes is not None and self.layer_sizes[0] != 3 * self.embedding_dim:
            raise rule(
                f"must start with {3 * self.embedding_dim}, three times {{embedding_dim}} (the MLP reads [u, q, u*q]), got {self.layer_sizes}",
                "layer_sizes",
            )
        return self

    @model_validator(mode="after")
    def _item_item_settings_need_the_path(self) -> ModelConfig:
        for name in ("item_item_l2", "item_item_weight"):
            if getattr(self, name) is not None and not self.item_item:
                raise rule(f"{{{name}}} is the item-item path's, which is off: set {{item_item}} too, or leave {{{name}}} out", name)
        return self

    @model_validator(mode="after")
    def _features_are_sides(self) -> ModelConfig:
        try:
            sides = parse_sides(self.features)
        except ConfigError:
            raise rule(f"must be none, items, users or items,users; got {self.features!r}", "features") from None
        object.__setattr__(self, "features", ",".join(sides) or "none")
        return self

    @model_validator(mode="after")
    def _feature_columns_of_a_side_read(self) -> ModelConfig:
        for side in ("item", "user"):
            name = f"{side}_feature_columns"
            try:
                columns = parse_columns(getattr(self, name))
            except ConfigError as error:
                raise rule(str(error), name) from None
            if columns is None:
                continue
            if f"{side}s" not in self.feature_sides:
                raise rule(f"{{{name}}} picks the columns of the {side} features, which the model does not read: add {side}s to {{features}}", name)
            object.__setattr__(self, name, ",".join(columns))
        return self

    def feature_columns(self) -> dict[str, tuple[str, ...] | None]:
        """The columns each side reads (None: the table's default columns)."""
        return {"items": parse_columns(self.item_feature_columns), "users": parse_columns(self.user_feature_columns)}

    @property
    def feature_sides(self) -> tuple[str, ...]:
        """The sides with features: ``()``, ``("items",)``, ``("users",)`` or both."""
        return parse_sides(self.features)

    @model_validator(mode="after")
    def _one_task_at_least(self) -> ModelConfig:
        if self.factorization_weight == 0 and self.regression_weight == 0:
            raise rule("{factorization_weight} and {regression_weight} cannot both be 0")
        return self

    @property
    def effective_layer_sizes(self) -> list[int]:
        """The rating MLP's layer sizes in effect: ``layer_sizes``, or ``[3d, 64]``."""
        return [3 * self.embedding_dim, 64] if self.layer_sizes is None else list(self.layer_sizes)

    def written_out(self) -> ModelConfig:
        """The same parameters with the layer sizes in effect written out (so that default and explicit sizes compare equal)."""
        return self if self.layer_sizes is not None else self.model_copy(update={"layer_sizes": self.effective_layer_sizes})

    def params(self) -> dict[str, Any]:
        """The parameters as :class:`~mtrec.model.MultitaskModel` takes them, in its order."""
        return self.model_dump()

    # ------------------------------------------------------------------ what the parameters make

    def objective(self) -> JointObjective:
        """The training objective: the tasks ``watch`` and ``rating``, weighted λF and λR."""
        return JointObjective(
            {"watch": self.factorization_weight, "rating": self.regression_weight},
            watch_loss=self.watch_loss,
            rating_loss=self.rating_loss,
            weighting=self.weighting,
            gradnorm_alpha=self.gradnorm_alpha,
            watch_weights=self.watch_weights,
            row_l2=self.row_l2,
        )

    def weight_decay(self) -> dict[str, float]:
        """Adam's weight decay per parameter group."""
        own = {"embeddings": self.l2_embeddings, "residuals": self.l2_residuals, "biases": self.l2_biases, "mlp": self.l2_mlp}
        return {group: self.l2 if value is None else value for group, value in own.items()}

    def encoder_settings(self) -> dict[str, Any]:
        """The user encoder's options: the settings ``<encoder>_<option>`` of its declared ``options``, and the seed."""
        encoder = USER_ENCODERS[self.user_encoder]
        options = {option: getattr(self, f"{self.user_encoder}_{option}") for option in getattr(encoder, "options", ())}
        return {**options, "seed": self.seed} if options else {}

    def build_network(
        self, num_users: int, num_items: int, device: torch.device | str = "cpu", feature_rows: dict[str, int] | None = None
    ) -> MultitaskNet:
        """A fresh network for this many users and items (and feature rows of each side with
        features: ``{"items": F}``), initialised from ``seed``."""
        sides = self.feature_sides
        rows = {side: int((feature_rows or {}).get(side, 1)) for side in sides}
        from mtrec.train.stacked import build_lock

        with build_lock(), torch.random.fork_rng(devices=[]):  # runs of a stacked group build in threads
            torch.manual_seed(self.seed)
            network = MultitaskNet(
                num_users, num_items, self.embedding_dim, self.effective_layer_sizes, self.sharing, self.rating_bias,
                self.cross_stitch_init, self.user_encoder, self.encoder_settings(), self.rating_reads_score, self.item_item,
                rows or None, self.id_dropout if sides else 0.0, self.seed if sides else 0,
            )  # fmt: skip
        return network.to(device)

    def make_step(self, network: MultitaskNet) -> Step:
        """The training step for ``network``, as ``step`` asks."""
        return make_step(self.step, network, self.objective(), self.learning_rate, self.weight_decay())

    def resolved_step(self) -> str:
        """The step training takes: ``"fused"`` or ``"autograd"`` (what ``step="auto"`` resolves to)."""
        with torch.device("meta"):  # the network's shape only: nothing is allocated
            network = self.build_network(1, 1, "meta")
        return resolve_step(self.step, network, self.objective())

    def memory_needed(self, num_users: int, num_items: int) -> dict[str, float]:
        """Bytes training would take, by the setting that makes them (:func:`mtrec.train.memory.memory_needed`)."""
        with torch.device("meta"):  # the network's declared tables: nothing is allocated
            network = self.build_network(1, 1, "meta")
        return memory_needed(network, self.effective_layer_sizes, self.batch_size, self.negatives, num_users, num_items)

    # ------------------------------------------------------------------ read by name, as a dict

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in type(self).model_fields

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in type(self).model_fields else default

    def keys(self) -> list[str]:
        """The parameters' names: with ``__getitem__``, what ``MultitaskModel(**config.model)`` unpacks."""
        return list(type(self).model_fields)


class Hyperparameters:
    """The estimator's parameters as scikit-learn keeps them (:meth:`get_params`, :meth:`set_params`),
    checked by making a :class:`ModelConfig` of them, which the estimator then reads."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters and their values, as plain data (scikit-learn's contract)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Hyperparameters:
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

    def _check_params(self) -> ModelConfig:
        """The parameters, checked: a :class:`~mtrec.errors.ConfigError` naming each one out of its type or range."""
        return ModelConfig(**self.get_params())
