"""``mtrec train``: train one multi-task model and record the run."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from mtrec.cli._args import add_option, non_negative_int, positive_float
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.config import RunConfig
from mtrec.errors import ConfigError
from mtrec.runs import train_run
from mtrec.tracking import connect, tracked_training
from mtrec.train.devices import resolve_device
from mtrec.train.distributed import BACKENDS, DEFAULT_TIMEOUT, EXCHANGES, Distributed, launched_by_torchrun, local_device, restarted

DESCRIPTION = """\
Train the multi-task model: matrix factorisation (watch score p, pairwise BPR-style loss)
and a rating MLP on [u, q, u*q] (MSE), joined as
factorization_weight * L_F + regression_weight * L_R.
The default --preset quality carves a validation set from the training part, stops early on
it and keeps the chosen epoch's model; --preset seed is the assignment's (200 epochs, the last
epoch's model). The test set is measured every epoch for the record only: nothing is chosen on
it. The run directory (--logdir) receives TensorBoard curves, config.json, metrics.json and the
model (model.safetensors). --config RUN/config.json trains the run that config describes again;
options given beside it change those settings. Under torchrun it trains on every process.
"""

EXAMPLES = """\
examples:
  mtrec train --factorization_weight 0.5 --regression_weight 0.5 --logdir run/quality_shared=True_LF=0.5_LR=0.5
  mtrec train --no_shared_embeddings --epochs 50 --device auto
  mtrec train --ratings my_ratings.csv --split user --leave-k 1
  mtrec train --config run/shared=True_LF=0.99_LR=0.01/config.json --logdir run/again
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one model and record the run",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, default_preset="quality")
    return parser


def add_arguments(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """The options of ``mtrec train`` (and of ``main.py``, whose preset is seed), and its handler."""
    add_option(parser, "--config", default=None, metavar="CONFIG", help="a run's config.json (or its run directory): train that run again")
    add_option(
        parser,
        "--logdir",
        default=None,
        help=f"run directory (default run/{_named_after(default_preset)}shared=<..>_LF=<..>_LR=<..>; a symbolic link is followed, "
        "and the run replaces its target)",
    )
    add_option(
        parser,
        "--force",
        action="store_true",
        help="train into a --logdir that holds a finished run (it stays until the new run is complete), "
        "discarding the checkpoint of an unfinished run there",
    )
    add_option(parser, "--no-progress", action="store_true", help="no progress bar")
    many = parser.add_argument_group("several seeds as one job")
    add_option(
        many,
        "--seeds",
        type=seed_list,
        default=None,
        metavar="SEEDS",
        help="train one run per seed (0-4, 0,2,7 or 3; each seeds the split, the initialisation and the draws, as "
        "--seed does), in LOGDIR/seed-<k>, and print each test metric's mean ± sd over the seeds",
    )
    add_stack_option(
        many,
        "with --seeds: train up to K runs at once as one batched computation (auto: as many as memory holds; 1: one "
        "at a time). Runs whose shapes differ, or whose step is not the fused one, train in separate groups, and a note says so",
    )
    runs = parser.add_argument_group("checkpoints and distributed training (torchrun)")
    add_option(
        runs,
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="save a checkpoint (model, optimiser, random state, epoch) every K epochs (default: none)",
    )
    add_option(
        runs,
        "--resume",
        action="store_true",
        help="continue an unfinished run from its last checkpoint (a worker that torchrun restarts does so by "
        "itself); other settings than the checkpoint's are an error naming them",
    )
    add_option(
        runs, "--dist-backend", choices=BACKENDS, default="auto", help="under torchrun: auto (nccl on CUDA, gloo on CPU; default), gloo or nccl"
    )
    add_option(
        runs,
        "--dist-exchange",
        choices=EXCHANGES,
        default="dense",
        help="under torchrun: how gradients travel: dense (one all_reduce of every gradient; default) or "
        "rows (only the embedding rows each batch touched, gathered from every process: less traffic for "
        "batches much smaller than the tables; the fused step only, the autograd step stays dense)",
    )
    add_option(
        runs,
        "--dist-timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"under torchrun: how long a process waits for the others before failing (default {DEFAULT_TIMEOUT:g})",
    )
    add_run_arguments(parser, default_preset=default_preset)
    parser.set_defaults(handler=run)


def seed_list(text: str) -> list[int]:
    """``--seeds``: ``0-4``, ``0,2,7`` or ``3`` as the distinct seeds, in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            first, last = int(low), int(high) if dash else int(low)
            if first < 0 or last < first:
                raise ValueError
            seeds += range(first, last + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds: write 0-4, 0,2,7 or 3 (whole numbers, 0 or more)") from None
    if len(seeds) > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} asks for {len(seeds)} seeds: at most 1000")
    return list(dict.fromkeys(seeds))


def add_stack_option(parser, help: str) -> None:
    """``--stack K|auto`` (default auto, read by :func:`stack_size`) on ``parser``, with ``help``."""
    add_option(parser, "--stack", type=stack_size, default="auto", metavar="K", help=help)


def stack_size(text: str) -> str | int:
    """``--stack``: ``auto`` or a positive whole number."""
    if text == "auto":
        return text
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs: give a whole number of 1 or more, or auto") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{size} runs per group: give at least 1 (1 trains one run at a time), or auto")
    return size


def default_logdir(preset: str | None, sharing: str, factorization_weight: float, regression_weight: float) -> Path:
    """The assignment's naming, run/shared=True_LF=0.99_LR=0.01 (other sharings by name:
    run/sharing=residual_...), after the preset's name unless the run starts from the seed preset
    (run/quality_shared=True_...), so that the presets' runs never take each other's directory."""
    where = {"hard": "shared=True", "separate": "shared=False"}.get(sharing, f"sharing={sharing}")
    return Path("run") / f"{_named_after(preset)}{where}_LF={factorization_weight:g}_LR={regression_weight:g}"


def _named_after(preset: str | None) -> str:
    """The start of a default run directory's name: nothing for the seed preset (or none), else ``<preset>_``."""
    return "" if preset in (None, "seed") else f"{preset}_"


def epoch_summary(record) -> str:
    text = "  ".join(f"{task} {value:.4f}" for task, value in record.train_losses.items() if not math.isnan(value))
    for prefix in ("valid", "test"):
        mse, mrr = record.metrics.get(f"{prefix}_mse"), record.metrics.get(f"{prefix}_mrr")
        if mse is not None and not math.isnan(mse):
            text += f"  {prefix} mse {mse:.4f}"
        if mrr is not None:
            text += f"  {prefix} mrr {mrr:.4f}"
    return text


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    base = RunConfig.load(args.config) if args.config else None
    config = run_config(args, base)
    distributed = None
    if args.seeds is not None:
        if launched_by_torchrun():
            raise ConfigError("--seeds trains several runs in one process: under torchrun train one seed at a time (--seed)")
        from mtrec.cli.seeds import train_seeds

        return train_seeds(args, config, _logdir(args, config), tqdm)
    if launched_by_torchrun():
        device = local_device(resolve_device(config.model.device))
        distributed = Distributed.start(args.dist_backend, device, args.dist_timeout, args.dist_exchange)
        config = config.replace(device=str(device))
    finished = False
    try:
        code = _train(args, config, distributed, tqdm)
        finished = True
        return code
    finally:
        if distributed is not None:
            distributed.close(wait=finished)


def _train(args: argparse.Namespace, config: RunConfig, distributed: Distributed | None, tqdm) -> int:
    main = distributed is None or distributed.is_main
    quiet = args.no_progress or not main
    tracker = connect(args.tracker, args.tracking_uri, _logdir(args, config).parent, distributed)  # before any work
    train, validation, test = config.data.load_split(args.data_dir, progress=not quiet)
    with warnings.catch_warnings():
        if not main:  # one process says it
            warnings.simplefilter("ignore")
        config = config.for_data(train)
    logdir = _logdir(args, config)
    # delay: a run refused before its first epoch (a bad --device, say) shows no empty bar.
    bar = tqdm(total=config.epochs, desc="train", unit="epoch", disable=quiet, file=sys.stderr, delay=0.5)

    def on_epoch(record) -> None:
        bar.set_postfix_str(epoch_summary(record), refresh=False)
        bar.update(1)

    summary = config.data.describe(train, validation, test)
    try:
        speed = {"world_size": 1 if distributed is None else distributed.world_size}
        if distributed is not None:
            speed["dist_backend"] = distributed.backend
            speed["dist_exchange"] = distributed.exchange
        resume = args.resume or restarted()
        with tracked_training(tracker, config, logdir, on_epoch) as callback:
            metrics = train_run(
                config, train, validation, test, logdir, summary, callback, force=args.force, distributed=distributed,
                checkpoint_every=args.checkpoint_every, resume=resume, speed=speed,
            )  # fmt: skip
    finally:
        bar.close()
    if not main:
        return 0
    selected = metrics["selected"]
    how = "chosen on validation" if config.early_stopping else "the last"
    print(f"epoch {selected['epoch']} ({how}): {_test_scores(selected)}  (run saved in {logdir})")
    kept = metrics.get("model")
    if kept:
        print(f"the saved model, with its item-item path: {_test_scores(kept)}")
    for part, values in (metrics.get("cold_start") or {}).items():
        scores = "  ".join(f"{name.upper()} {values[name]:.4f}" for name in ("mse", "mrr", "ndcg@10") if values.get(name) is not None)
        among = f" among the {values['candidates']} cold items" if "candidates" in values else ""
        print(f"  {part.replace('_', ' ')} ({values['pairs']:,} test pairs{among}): {scores}")
    refit = metrics.get("refit")
    if refit:
        print(f"refit on train + validation for {refit['epochs']} epochs, the saved model: {_test_scores(refit)}")
    if tracker is not None:
        print(f"tracked in MLflow: {tracker.uri}")
    return 0


def _test_scores(measured: dict) -> str:
    """``test MSE 0.8058  MRR 0.1516`` of a metrics.json block (n/a where one was not measured)."""
    shown = {name: "n/a" if measured.get(f"test_{name}") is None else f"{measured[f'test_{name}']:.4f}" for name in ("mse", "mrr")}
    return f"test MSE {shown['mse']}  MRR {shown['mrr']}"


def _logdir(args: argparse.Namespace, config: RunConfig) -> Path:
    """``--logdir``, else the default run directory of ``config`` (see :func:`default_logdir`)."""
    if args.logdir:
        return Path(args.logdir)
    preset = None if args.config else getattr(args, "preset", args.default_preset)
    model = config.model
    return default_logdir(preset, model.sharing, model.factorization_weight, model.regression_weight)
