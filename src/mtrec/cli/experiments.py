"""``mtrec experiments``: the assignment's configurations over several seeds, then the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtrec.cli._args import add_option
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.cli.report import describe
from mtrec.cli.train import add_stack_option, epoch_summary
from mtrec.config import RunConfig
from mtrec.studies.experiments import (
    CONFIGURATIONS,
    STUDY_DIRNAME,
    SWEEP_DIRNAME,
    PlannedRun,
    configurations_named,
    plan_runs,
    run_experiment,
    study_configurations,
    sweep_configurations,
)
from mtrec.studies.report import build_report
from mtrec.tracking import Tracker, connect

DESCRIPTION = f"""\
Train the assignment's configurations, each over several seeds, and write the report.
Configurations: {", ".join(CONFIGURATIONS)} (sharing-λF-λR).
Run k of a configuration lives in ROOT/<name>/seed-<k> and is exactly what
'mtrec train --seed k' with the same options makes; a run already finished with the same
settings is reused (--force trains it again), a damaged one is trained again (saying why),
and an interrupted experiment resumes where it stopped. One experiment at a time runs in a
ROOT: a second is an error naming the process that holds it. Finished runs made with other settings
are an error that names the settings (--force replaces them; or choose another --root).
--sweep runs λF = 0, step, ..., 1 (λR = 1 − λF), shared and separate, in ROOT/{SWEEP_DIRNAME}/.
The report (--out) is then rebuilt from every finished run under ROOT, as 'mtrec report ROOT' does.
"""

EXAMPLES = """\
examples:
  mtrec experiments --seeds 3 --epochs 200
  mtrec experiments --configs shared-0.5-0.5 separate-0.5-0.5 --seeds 5
  mtrec experiments --sweep --sweep-step 0.25 --seeds 2 --epochs 50
  mtrec experiments --study multitask --seeds 3
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "experiments",
        help="train the assignment's configurations over several seeds and write the report",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    add_option(
        which,
        "--configs",
        nargs="+",
        default=list(CONFIGURATIONS),
        metavar="NAME",
        help="configurations to run (default: all four)",
    )
    add_option(which, "--sweep", action="store_true", help="run the λ sweep instead of the configurations")
    add_option(
        which,
        "--study",
        choices=("multitask",),
        default=None,
        help="multitask: every sharing architecture (hard, separate, residual, cross-stitch) with a fixed-λ "
        "sweep and the weightings uncertainty, gradnorm, pcgrad and mgda, from the quality preset "
        "(validation and early stopping), in ROOT/multitask/",
    )
    add_option(parser, "--sweep-step", type=float, default=0.1, help="λF step of the sweep, in (0, 1) (default 0.1)")
    add_option(parser, "--seeds", type=int, default=3, help="seeds per configuration, from --seed on (default 3)")
    add_option(parser, "--root", default="run", help="folder of the runs (default run/)")
    add_option(parser, "--out", default="report", help="report folder (default report/)")
    add_option(
        parser,
        "--force",
        action="store_true",
        help="train again runs that are already finished (also those made with other settings, which are otherwise an error)",
    )
    add_option(parser, "--no-progress", action="store_true", help="no progress bar")
    add_stack_option(
        parser,
        "train up to K runs at once as one batched computation (auto, the default: as many as memory holds; 1: one at a "
        "time). Runs of different shapes (shared and separate sharing), or whose step is not the fused one, train in "
        "separate groups, and a note says so; each run's directory and metrics are what it gives alone",
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    default_preset = None
    if args.sweep:
        configurations, root = sweep_configurations(args.sweep_step), Path(args.root) / SWEEP_DIRNAME
    elif args.study:
        configurations, root = study_configurations(), Path(args.root) / STUDY_DIRNAME
        default_preset = "quality"  # the study compares validation-chosen models
    else:
        configurations, root = configurations_named(args.configs), Path(args.root)
    base = run_config(args, default_preset=default_preset)
    runs = plan_runs(configurations, args.seeds, root, first_seed=base.seed)
    tracker = connect(args.tracker, args.tracking_uri, args.root)  # before any work
    trained = _train_runs(args, base, runs, tracker)
    print(f"{len(trained)} runs trained, {len(runs) - len(trained)} reused, in {root}")
    print(describe(build_report([args.root], args.out)))
    return 0


def _train_runs(args: argparse.Namespace, base: RunConfig, runs: list[PlannedRun], tracker: Tracker | None) -> list[PlannedRun]:
    """Train the planned runs that are not finished already, showing the progress; the runs trained."""
    from tqdm import tqdm

    # delay: an experiment refused before its first run (its root in use, say) shows no empty bar.
    bar = tqdm(total=len(runs) * base.epochs, unit="epoch", disable=args.no_progress, file=sys.stderr, delay=0.5)

    def on_run(planned, action) -> None:
        position = f"[{runs.index(planned) + 1}/{len(runs)}]"
        bar.n = max(bar.n, runs.index(planned) * base.epochs)  # early-stopped runs end before their budget
        bar.set_description_str(f"{position} {planned.configuration.name} seed {planned.seed}")
        if action.reason:
            bar.write(f"mtrec experiments: {action.reason}", file=sys.stderr)
        if action.reuse:
            bar.set_postfix_str("finished before: reused")
            bar.update(base.epochs)

    def on_epoch(record) -> None:
        bar.set_postfix_str(f"epoch {record.epoch}/{base.epochs}  {epoch_summary(record)}", refresh=False)
        bar.update(1)

    def config_of(planned) -> RunConfig:
        return base.replace(seed=planned.seed, **planned.configuration.model_params())

    try:
        return run_experiment(
            runs,
            config_of,
            base.data.split_loader(args.data_dir),
            force=args.force,
            on_run=on_run,
            on_epoch=on_epoch,
            tracker=tracker,
            stack=None if args.stack == "auto" else args.stack,
            on_note=lambda note: bar.write(f"mtrec experiments: {note}", file=sys.stderr),
        )
    finally:
        bar.close()
