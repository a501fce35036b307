"""``mtrec train``: train one multi-task model and record the run."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mtrec.cli._args import add_option, non_negative_float, non_negative_int, positive_float, positive_int
from mtrec.cli.data_args import add_data_arguments, load_split
from mtrec.model import MultitaskModel
from mtrec.runs import train_run

DESCRIPTION = """\
Train the multi-task model: matrix factorisation (watch score p, pairwise BPR-style loss)
and a rating MLP on [u, q, u*q] (MSE), joined as
factorization_weight * L_F + regression_weight * L_R.
Test MSE and MRR are measured every epoch. The run directory (--logdir) receives
TensorBoard curves, config.json, metrics.json and the model (model.safetensors).
"""

EXAMPLES = """\
examples:
  mtrec train --factorization_weight 0.99 --regression_weight 0.01 --logdir run/shared=True_LF=0.99_LR=0.01
  mtrec train --no_shared_embeddings --epochs 50 --device auto
  mtrec train --ratings my_ratings.csv --split user --leave-k 1
"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the model and its training, shared by ``train`` and ``experiments``."""
    group = parser.add_argument_group("model and training")
    add_option(group, "--embedding-dim", type=positive_int, default=32, help="latent dimension d (default 32)")
    add_option(
        group,
        "--layer-sizes",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="N",
        help="input size of each dense layer of the rating MLP; the first must be 3*d (default: 3d 64)",
    )
    add_option(group, "--batch-size", type=positive_int, default=256, help="positive triples per step (default 256)")
    add_option(
        group,
        "--learning-rate",
        type=positive_float,
        default=None,
        help="Adam learning rate (default 1e-3 x batch/256, at most 0.064: 1e-3 at batch 256; for batch 4096 add --l2 5e-6)",
    )
    add_option(group, "--l2", type=non_negative_float, default=0.0, help="Adam weight decay (default 0)")
    add_option(group, "--seed", type=non_negative_int, default=0, help="seeds split, initialisation and sampling")
    add_option(
        group,
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when available; default auto)",
    )
    add_option(group, "--threads", type=positive_int, default=None, help="CPU threads while training")


def model_from_args(args: argparse.Namespace, **overrides) -> MultitaskModel:
    """Build the model from parsed options (``overrides`` win)."""
    from mtrec.model import scaled_learning_rate

    params = {
        "embedding_dim": args.embedding_dim,
        "layer_sizes": args.layer_sizes,
        "embedding_sharing": getattr(args, "shared_embeddings", True),
        "factorization_weight": getattr(args, "factorization_weight", 0.5),
        "regression_weight": getattr(args, "regression_weight", 0.5),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate or scaled_learning_rate(args.batch_size),
        "l2": args.l2,
        "seed": args.seed,
        "device": args.device,
        "num_threads": args.threads,
    }
    params.update(overrides)
    return MultitaskModel(**params)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one model and record the run",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--epochs", type=non_negative_int, default=200, help="training epochs (default 200)")
    add_option(
        parser,
        "--factorization-weight",
        type=non_negative_float,
        default=0.5,
        help="lambda_F, weight of the likelihood (BPR) loss (default 0.5)",
    )
    add_option(
        parser,
        "--regression-weight",
        type=non_negative_float,
        default=0.5,
        help="lambda_R, weight of the rating (MSE) loss (default 0.5)",
    )
    sharing = parser.add_mutually_exclusive_group()
    add_option(
        sharing,
        "--shared-embeddings",
        dest="shared_embeddings",
        action="store_true",
        default=True,
        help="both heads read the same U and Q (default)",
    )
    add_option(
        sharing,
        "--no-shared-embeddings",
        dest="shared_embeddings",
        action="store_false",
        help="the rating head has its own U and Q",
    )
    add_option(parser, "--logdir", default=None, help="run directory (default run/shared=<..>_LF=<..>_LR=<..>)")
    add_option(parser, "--eval-every", type=positive_int, default=1, help="evaluate every N epochs (default 1)")
    add_option(parser, "--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    add_data_arguments(parser)


def default_logdir(shared: bool, factorization_weight: float, regression_weight: float) -> Path:
    """The assignment's naming: run/shared=True_LF=0.99_LR=0.01."""
    return Path("run") / f"shared={shared}_LF={factorization_weight:g}_LR={regression_weight:g}"


def epoch_summary(record) -> str:
    text = f"bpr {record.train_bpr:.4f}"
    if not math.isnan(record.train_mse):
        text += f"  mse {record.train_mse:.4f}"
    if record.test_mse is not None:
        if not math.isnan(record.test_mse):
            text += f"  test mse {record.test_mse:.4f}"
        text += f"  mrr {record.test_mrr:.4f}"
    return text


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    train, test, data_info = load_split(args, seed=args.seed, progress=not args.no_progress)
    overrides = {}
    if not train.has_ratings:
        print(
            "mtrec train: the data has no rating column, so the rating head cannot train: "
            "training the likelihood head alone (regression_weight = 0)",
            file=sys.stderr,
        )
        overrides = {"regression_weight": 0.0, "factorization_weight": args.factorization_weight or 1.0}
    model = model_from_args(args, **overrides)
    logdir = Path(args.logdir) if args.logdir else default_logdir(
        model.embedding_sharing, model.factorization_weight, model.regression_weight
    )
    # delay: a run refused before its first epoch (a bad --device, say) shows no empty bar.
    bar = tqdm(total=args.epochs, desc="train", unit="epoch", disable=args.no_progress, file=sys.stderr, delay=0.5)

    def on_epoch(record) -> None:
        bar.set_postfix_str(epoch_summary(record), refresh=False)
        bar.update(1)

    try:
        metrics = train_run(model, train, test, args.epochs, logdir, data_info, args.eval_every, on_epoch)
    finally:
        bar.close()
    final = metrics["final"]
    if final is None:
        print(f"no epochs trained; model saved in {logdir}")
        return 0
    mse = "n/a" if final["test_mse"] is None else f"{final['test_mse']:.4f}"
    print(f"epoch {final['epoch']}: test MSE {mse}  MRR {final['test_mrr']:.4f}  (run saved in {logdir})")
    return 0
