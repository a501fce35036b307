"""The options that make a run, shared by ``mtrec train`` and ``mtrec experiments``.

Each option's destination is the name of the setting it gives in :class:`mtrec.config.RunConfig`
(``embedding_dim``, ``split``, ``epochs``...), and an option that is not given is absent from the
parsed arguments (its default is ``argparse.SUPPRESS``): :func:`run_config` lays what was
given over a base config (the defaults, or a config.json), so that a run says exactly which
settings were chosen on the command line.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from mtrec.cli._args import add_option, non_negative_float, non_negative_int, positive_float, positive_int
from mtrec.config import PRESETS, QUALITY_MODEL, QUALITY_TRAINING, RunConfig, preset
from mtrec.data.datasets import RELEASES
from mtrec.data.spec import DEFAULT_TEST_FRACTION, SPLITS
from mtrec.eval.evaluation import all_metrics
from mtrec.model import MAX_NEGATIVES, MAX_SEED, scaled_learning_rate
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.nn.network import SHARINGS
from mtrec.nn.weighting import WEIGHTINGS
from mtrec.tracking import TRACKERS
from mtrec.train.loop import SCHEDULES
from mtrec.train.steps import STEPS

SUPPRESS = argparse.SUPPRESS


def seed_number(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2**64 - 1 (what the random generators take), got {value}")
    return value


def _presets(name: str, seed: str, default_preset: str) -> str:
    """The default of ``name``: ``default X`` where the presets agree, else the default preset's value
    first and the other's after it (``default 200, quality preset 150``)."""
    quality = {**QUALITY_MODEL, **QUALITY_TRAINING}.get(name)
    if quality is None:
        return f"default {seed}"
    values = {"seed": seed, "quality": quality}
    other = next(preset for preset in values if preset != default_preset)
    return f"default {values[default_preset]}, {other} preset {values[other]}"


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """The model and its training."""
    presets = functools.partial(_presets, default_preset=default_preset)
    group = parser.add_argument_group("model and training")
    add_option(
        group,
        "--preset",
        choices=PRESETS,
        default=SUPPRESS,
        help=f"the settings the other options change: seed (the assignment's) or quality (the best measured, "
        f"with validation and early stopping) (default {default_preset})",
    )
    add_option(
        group,
        "--factorization-weight",
        type=non_negative_float,
        default=SUPPRESS,
        help=f"lambda_F, weight of the watch (BPR) loss, 0 to 1000 ({presets('factorization_weight', '0.5')})",
    )
    add_option(
        group,
        "--regression-weight",
        type=non_negative_float,
        default=SUPPRESS,
        help=f"lambda_R, weight of the rating (MSE) loss, 0 to 1000 ({presets('regression_weight', '0.5')})",
    )
    sharing = group.add_mutually_exclusive_group()
    add_option(
        sharing,
        "--sharing",
        choices=SHARINGS.names(),
        default=SUPPRESS,
        help="how the heads share U and Q: " + ", ".join(f"{name} ({SHARINGS[name].summary})" for name in SHARINGS),
    )
    add_option(
        sharing,
        "--shared-embeddings",
        dest="sharing",
        action="store_const",
        const="hard",
        default=SUPPRESS,
        help="the seed's spelling of --sharing hard",
    )
    add_option(
        sharing,
        "--no-shared-embeddings",
        dest="sharing",
        action="store_const",
        const="separate",
        default=SUPPRESS,
        help="the seed's spelling of --sharing separate",
    )
    add_option(
        group,
        "--weighting",
        choices=WEIGHTINGS.names(),
        default=SUPPRESS,
        help="how the two losses make one update: fixed (the lambdas, default), uncertainty (learned, Kendall "
        "et al.), gradnorm, pcgrad (conflicting gradients projected), mgda (the min-norm combination)",
    )
    add_option(group, "--gradnorm-alpha", type=non_negative_float, default=SUPPRESS, help="GradNorm's asymmetry (default 1.5)")
    add_option(
        group,
        "--cross-stitch-init",
        type=non_negative_float,
        default=SUPPRESS,
        help="diagonal of the cross-stitch maps at the start, 1 being the identity (default 0.9)",
    )
    add_option(group, "--embedding-dim", type=positive_int, default=SUPPRESS, help="latent dimension d (default 32)")
    add_option(
        group,
        "--layer-sizes",
        type=positive_int,
        nargs="+",
        default=SUPPRESS,
        metavar="N",
        help="input size of each dense layer of the rating MLP; the first must be 3*d (default: 3d 64)",
    )
    add_option(group, "--batch-size", type=positive_int, default=SUPPRESS, help=f"positive triples per step ({presets('batch_size', '256')})")
    add_option(
        group,
        "--learning-rate",
        type=positive_float,
        default=SUPPRESS,
        help=f"Adam learning rate ({presets('learning_rate', '1e-3')}; with --batch-size B alone, 1e-3 x B/256, at most 0.064)",
    )
    add_option(
        group,
        "--l2",
        type=non_negative_float,
        default=SUPPRESS,
        help=f"Adam weight decay of every parameter group without its own ({presets('l2', '0')})",
    )
    for part, what in (
        ("embeddings", "user and item embeddings"),
        ("residuals", "task-specific parts of residual sharing"),
        ("biases", "biases"),
        ("mlp", "rating MLP and cross-stitch maps"),
    ):
        add_option(group, f"--l2-{part}", type=non_negative_float, default=SUPPRESS, help=f"weight decay of the {what} (default: --l2)")
    add_option(
        group,
        "--lr-schedule",
        choices=SCHEDULES.names(),
        default=SUPPRESS,
        help="learning rate per epoch: constant, exponential (x lr-gamma each epoch), "
        f"step (x lr-gamma every lr-step epochs), cosine (to 0 over the epochs) ({presets('lr_schedule', 'constant')})",
    )
    add_option(group, "--lr-gamma", type=positive_float, default=SUPPRESS, help="decay factor of the schedule, in (0, 1] (default 0.95)")
    add_option(group, "--lr-step", type=positive_int, default=SUPPRESS, help="epochs per step of --lr-schedule step (default 10)")
    add_option(
        group,
        "--watch-loss",
        choices=WATCH_LOSSES.names(),
        default=SUPPRESS,
        help="; ".join(f"{name}: {WATCH_LOSSES[name].summary}" for name in WATCH_LOSSES),
    )
    add_option(
        group,
        "--negatives",
        type=positive_int,
        default=SUPPRESS,
        metavar="K",
        help=f"negatives sampled per positive pair, 1 to {MAX_NEGATIVES} ({presets('negatives', '1')})",
    )
    add_option(
        group,
        "--exclude-positives",
        action=argparse.BooleanOptionalAction,
        default=SUPPRESS,
        help="redraw a sampled negative that the user rated (default: no)",
    )
    add_option(
        group,
        "--rating-bias",
        action=argparse.BooleanOptionalAction,
        default=SUPPRESS,
        help="a learned per-user and per-item bias in the rating head (default: no)",
    )
    add_option(group, "--seed", type=seed_number, default=SUPPRESS, help="seeds split, initialisation and sampling (default 0)")
    add_option(
        group,
        "--epochs",
        type=positive_int,
        default=SUPPRESS,
        help=f"training epochs, at least 1 ({presets('epochs', '200')}; early stopping may end training sooner)",
    )
    add_option(group, "--eval-every", type=positive_int, default=SUPPRESS, help="evaluate every N epochs (default 1)")
    add_option(
        group,
        "--early-stopping",
        default=SUPPRESS,
        metavar="CRITERION",
        help="stop when this validation criterion has not improved for --patience evaluations, and keep the "
        "best epoch's weights: joint (mean relative improvement of MSE and MRR over the mean rating and the "
        "most popular items), or a metric (mse, mrr, ndcg@10...) (default: none; quality preset: joint)",
    )
    add_option(group, "--patience", type=positive_int, default=SUPPRESS, help=f"evaluations without improvement ({presets('patience', '10')})")
    add_option(
        group,
        "--metrics",
        nargs="+",
        choices=all_metrics(),
        default=SUPPRESS,
        metavar="METRIC",
        help=f"metrics recorded: {', '.join(all_metrics())} (default all)",
    )
    add_option(group, "--k", type=positive_int, nargs="+", default=SUPPRESS, metavar="K", help="cut-offs of ndcg, recall, hr and map (default 10)")
    speed = parser.add_argument_group("speed (never changes the results)")
    add_option(speed, "--device", default=SUPPRESS, help="cpu, cuda, cuda:N or auto (CUDA when available; default auto)")
    add_option(speed, "--threads", dest="num_threads", type=positive_int, default=SUPPRESS, help="CPU threads while training (default: PyTorch's)")
    add_option(
        speed,
        "--step",
        choices=STEPS,
        default=SUPPRESS,
        help="training step: fused (hand-written gradients, the seed's network), autograd (any), auto (fused where it applies; default)",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``data`` option group: the data set or a ratings file, and the split."""
    group = parser.add_argument_group(
        "data",
        "MovieLens (--dataset, downloaded on first use) or your own ratings (--ratings), and the train/test split.",
    )
    add_option(group, "--dataset", default=SUPPRESS, choices=list(RELEASES), help="MovieLens release (default 100k); see 'mtrec datasets list'")
    add_option(group, "--data-dir", default=None, metavar="DIR", help="where MovieLens releases live (default $MTREC_DATA_DIR, else ~/.cache/mtrec)")
    add_option(
        group,
        "--ratings",
        default=SUPPRESS,
        metavar="FILE",
        help="your own ratings (CSV, TSV, '::' or Parquet) instead of --dataset; without a rating column only the watch-score head trains",
    )
    add_option(group, "--items", default=SUPPRESS, metavar="FILE", help="item titles (and genres) for --ratings")
    for role, names in (
        ("user", "user/userId/user_id/uid"),
        ("item", "item/itemId/item_id/movieId/movie_id/iid"),
        ("rating", "rating/score/stars"),
        ("time", "timestamp/time/ts/date"),
    ):
        add_option(
            group,
            f"--{role}-col",
            default=SUPPRESS,
            metavar="NAME",
            help=f"{role} column of --ratings, a name or 0-based position (default: found by name: {names})",
        )
    add_option(group, "--sep", default=SUPPRESS, help="field separator of --ratings (default: from extension or sniffed)")
    add_option(
        group,
        "--rating-scale",
        type=float,
        nargs=2,
        default=SUPPRESS,
        metavar=("LOW", "HIGH"),
        help="allowed ratings of --ratings; any outside is an error (default: the range in the file)",
    )
    add_option(
        group,
        "--split",
        default=SUPPRESS,
        choices=SPLITS,
        help="random: uniformly drawn test ratings (default); user: per user (--test-fraction or --leave-k); "
        "temporal: the latest (--test-fraction, --cutoff or --last-k); u1..u5, ua, ub: MovieLens 100K's own",
    )
    add_option(group, "--test-fraction", type=float, default=SUPPRESS, help=f"share of ratings held out, in (0, 1) (default {DEFAULT_TEST_FRACTION})")
    add_option(group, "--leave-k", type=positive_int, default=SUPPRESS, metavar="K", help="--split user: K per user")
    add_option(
        group,
        "--cutoff",
        default=SUPPRESS,
        metavar="TIME",
        help="--split temporal: test from this time on (seconds since 1970 or an ISO date, e.g. 1998-03-01)",
    )
    add_option(group, "--last-k", type=positive_int, default=SUPPRESS, metavar="K", help="--split temporal: each user's latest K")
    add_option(
        group,
        "--valid-fraction",
        type=float,
        default=SUPPRESS,
        help="share of the training part held out for validation, by the split's own rule (default none)",
    )
    add_option(
        group,
        "--valid-k",
        type=positive_int,
        default=SUPPRESS,
        metavar="K",
        help="validation for --leave-k / --last-k splits: K more per user from the training part",
    )
    return group


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tracker`` and ``--tracking-uri``: where runs are recorded besides their directories (:mod:`mtrec.tracking`)."""
    group = parser.add_argument_group("experiment tracking")
    add_option(
        group,
        "--tracker",
        choices=TRACKERS,
        default=None,
        help='also record the runs in MLflow: parameters, every epoch, the selected epoch, the run files (needs pip install "mtrec[mlflow]")',
    )
    add_option(
        group,
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="the tracking store (default $MLFLOW_TRACKING_URI, else sqlite under the run root: ROOT/.mlflow/mlflow.db)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, default_preset: str = "seed") -> None:
    add_model_arguments(parser, default_preset)
    add_data_arguments(parser)
    add_tracking_arguments(parser)
    parser.set_defaults(default_preset=default_preset)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given on the command line, by their :class:`RunConfig` names."""
    names = RunConfig.option_names()
    return {name: value for name, value in vars(args).items() if name in names}


def run_config(args: argparse.Namespace, base: RunConfig | None = None, **fixed: Any) -> RunConfig:
    """``base`` (default: the ``--preset``'s config) with the options given, and ``fixed`` on top.

    The learning rate follows the batch size (:func:`mtrec.model.scaled_learning_rate`) when a
    batch size is given without a learning rate. A ``--dataset`` beside ``--ratings``, and a
    ``--preset`` beside a base config (``--config``), are errors.
    """
    from mtrec.errors import ConfigError

    given = {**given_settings(args), **fixed}
    if base is not None and hasattr(args, "preset"):
        raise ConfigError("--config and --preset are two starting points: give one")
    if base is None:
        base = preset(getattr(args, "preset", getattr(args, "default_preset", "seed")), given)
    if "dataset" in given and "ratings" in given:
        raise ConfigError("--dataset and --ratings are two data sources: give one")
    if "ratings" in given:
        given.setdefault("dataset", None)
    if "dataset" in given and base.data.ratings is not None:
        given.setdefault("ratings", None)
    if "batch_size" in given and "learning_rate" not in given:
        given["learning_rate"] = scaled_learning_rate(given["batch_size"])
    if "layer_sizes" not in given and "embedding_dim" in given:
        given["layer_sizes"] = None  # follows the new dimension
    if "rating_scale" in given:
        given["rating_scale"] = tuple(given["rating_scale"])
    for name in ("metrics", "k"):
        if name in given:
            given[name] = tuple(given[name])
    return base.replace(**given).check()
