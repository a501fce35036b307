"""The estimator's hyper-parameters as typed settings: :class:`ModelConfig`.

Each parameter of :class:`~mtrec.model.MultitaskModel` is a field here, with its default, its type
and range, and the description the command line shows as its help; a choice of component is checked
against its registry (:data:`~mtrec.nn.losses.WATCH_LOSSES`, :data:`~mtrec.nn.network.SHARINGS`,
:data:`~mtrec.nn.weighting.WEIGHTINGS`, :data:`~mtrec.train.loop.SCHEDULES`,
:data:`~mtrec.train.steps.STEPS`), and the rules over several parameters are its validators. The
estimator keeps its keyword parameters (scikit-learn's contract) and checks them by making one.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from mtrec.nn.losses import WATCH_LOSSES
from mtrec.nn.network import SHARINGS
from mtrec.nn.objective import MAX_LOSS_WEIGHT
from mtrec.nn.weighting import WEIGHTINGS
from mtrec.settings import Flag, Number, Settings, Text, Whole, one_of, rule
from mtrec.train.loop import SCHEDULES
from mtrec.train.steps import STEPS

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
StepKind = one_of(STEPS, "training step")


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
    regression_weight: LossWeight = Field(0.5, description="lambda_R, weight of the rating (MSE) loss")
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
    lr_schedule: Schedule = Field(
        "constant",
        description="learning rate per epoch: constant, exponential (x {lr_gamma} each epoch), step (x {lr_gamma} "
        "every {lr_step} epochs), cosine (to 0 over the epochs)",
    )
    lr_gamma: Number = Field(0.95, gt=0, le=1, description="decay factor of the schedule")
    lr_step: Whole = Field(10, ge=1, description="epochs per step of the step schedule")
    watch_loss: WatchLoss = Field("bpr", description="the watch-score head's loss")
    negatives: Whole = Field(1, ge=1, le=MAX_NEGATIVES, description="negatives sampled per positive pair")
    exclude_positives: Flag = Field(False, description="redraw a sampled negative that the user rated")
    rating_bias: Flag = Field(False, description="a learned per-user and per-item bias in the rating head")
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

    # ------------------------------------------------------------------ read by name, as a dict

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in type(self).model_fields

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in type(self).model_fields else default
