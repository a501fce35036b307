"""``mtrec tune``: search hyper-parameters on the validation criterion (Optuna)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mtrec.cli._args import add_option, positive_float, positive_int
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.cli.train import add_stack_option, epoch_summary
from mtrec.errors import ConfigError
from mtrec.studies.tuning import AUTO_SLICE, SEARCH_SPACE
from mtrec.tracking import connect

DESCRIPTION = """\
Search the model's hyper-parameters (embedding size, learning rate and its decay, weight decay,
loss weights, negatives, watch loss, sharing, rating bias) for the best validation criterion
(--early-stopping, default joint), starting from the settings the other options give (default:
the quality preset). Trials are trained without the test set, and poor ones are pruned; each is
a run directory ROOT/trial-NNNN. The best settings are written to ROOT/best/config.json:
'mtrec train --config ROOT/best/config.json' trains and tests them. The study is kept in
ROOT/study.db, so running the same command again adds trials to it and continues the search
(Ctrl-C keeps the trials that finished). One search at a time works in a ROOT. Needs Optuna
(pip install -e ".[tune]").

--stack K asks the sampler for K trials at a time and trains them side by side as one batched
computation, when the first trial's model is one the stacked trainer takes (the fused step's:
id users, fixed weights, no row penalty, no features; the quality preset's model is not, so its
trials train one at a time). The K trials share the first's shape settings (embedding size,
negatives, watch loss, sharing, rating bias) and the sampler picks the rest (learning rate and
decay, loss weights, weight decay, EMA) for each; each is pruned on its own, and a pruned trial
stops costing time. --search names the settings searched, the others staying as given.
"""

EXAMPLES = """\
examples:
  mtrec tune --trials 50
  mtrec tune --trials 20 --root tune/ml1m --dataset 1m --early-stopping ndcg@10
  mtrec tune --trials 50 --preset seed --search learning_rate,lr_gamma,factorization_weight,regression_weight,ema
  mtrec train --config tune/best/config.json --logdir run/tuned
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tune",
        help="search hyper-parameters on the validation set (Optuna)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(parser, "--trials", type=positive_int, default=50, help="trials to run (default 50)")
    add_option(parser, "--timeout", type=positive_float, default=None, metavar="SECONDS", help="start no trial after this many seconds")
    add_option(parser, "--root", default="tune", help="folder of the trials, the study and best/ (default tune/)")
    add_option(parser, "--tune-seed", type=int, default=0, help="seeds the sampler (default 0)")
    add_option(parser, "--no-progress", action="store_true", help="no progress bar")
    add_option(
        parser,
        "--search",
        type=searched_settings,
        default=None,
        metavar="NAMES",
        help=f"the settings searched, comma-separated (default all: {','.join(SEARCH_SPACE)})",
    )
    add_stack_option(
        parser,
        f"ask for K trials at a time and train them stacked, as one batched computation (auto, the default: as many "
        f"as memory holds, at most {AUTO_SLICE}; 1: one at a time). Only trials of the fused step's model stack; others "
        "train one at a time",
    )
    add_run_arguments(parser, default_preset="quality")
    parser.set_defaults(handler=run)
    return parser


def searched_settings(text: str) -> list[str]:
    """``--search``: names of the default search space's settings, comma-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SEARCH_SPACE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(repr(n) for n in unknown) or 'nothing'} is not a searched setting: choose from {', '.join(SEARCH_SPACE)}"
        )
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mtrec.studies.tuning import STUDY_FILENAME, _optuna, tune

    _optuna()  # a missing extra is named before any data is read
    config = run_config(args)
    if not config.data.has_validation:
        raise ConfigError("mtrec tune chooses on a validation set: give --valid-fraction (or --valid-k)")
    tracker = connect(args.tracker, args.tracking_uri, args.root)  # before any work
    train, validation, _ = config.data.load_split(args.data_dir, progress=not args.no_progress)
    bars: list[Any] = []  # the bar, made when the first epoch is reported: a refused search shows none
    best: list[float] = []
    finished: list[int] = []

    def bar() -> Any:
        if not bars:
            bars.append(tqdm(total=args.trials, desc="tune", unit="trial", disable=args.no_progress, file=sys.stderr))
        return bars[0]

    def on_trial(number: int, value: float | None, pruned: bool) -> None:
        finished.append(number)
        if value is not None:
            best.append(value)
        bar().set_postfix_str(f"trial {number}: {'pruned' if pruned else f'{value:.4f}'}  best {max(best, default=float('nan')):.4f}")
        bar().update(1)

    def on_epoch(record) -> None:
        bar().set_description_str(f"tune (epoch {record.epoch}: {epoch_summary(record)})", refresh=False)

    try:
        result = tune(
            config, train, validation, args.root, args.trials, args.tune_seed, args.timeout,
            space=None if args.search is None else {name: SEARCH_SPACE[name] for name in args.search},
            on_trial=on_trial, on_epoch=on_epoch, tracker=tracker, stack=None if args.stack == "auto" else args.stack,
        )  # fmt: skip
    except KeyboardInterrupt:
        result = None
    finally:  # closed before anything more is printed
        for made in bars:
            made.close()
    if result is None:
        print(
            f"mtrec tune: interrupted; the trials that finished ({len(finished)} in this run) stay in "
            f"{os.path.join(args.root, STUDY_FILENAME)}: run the same command to continue",
            file=sys.stderr,
        )
        return 130
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    stacked = f"{result.stacked} of this run's trained stacked; " if result.stacked else ""
    print(
        f"{result.trials} trials in the study ({stacked}{result.pruned} pruned); best trial {result.best_trial}, validation "
        f"{config.early_stopping or 'joint'} {result.best_value:.4f}: {settings}\n"
        f"best config: {result.config_path}  (train it: mtrec train --config {result.config_path})"
    )
    if tracker is not None:
        print(f"tracked in MLflow: {tracker.uri}")
    return 0
