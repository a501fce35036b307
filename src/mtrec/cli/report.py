"""``mtrec report``: rebuild the experiment report from finished runs, without training."""

from __future__ import annotations

import argparse

from mtrec.cli._args import add_option
from mtrec.studies.report import ReportFiles, build_report

DESCRIPTION = """\
Rebuild the experiment report from finished runs: report.md, a self-contained report.html,
report.json (every number, unrounded) and the PNG figures. Give the experiment root (run/)
or individual run directories; runs under sweep/ form the λ sweep. A run whose metrics.json
is missing or corrupt is named and left out; the others still report.
"""

EXAMPLES = """\
examples:
  mtrec report run/
  mtrec report run/shared-0.5-0.5 run/separate-0.5-0.5 --out report-sharing/
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="rebuild the experiment report from finished runs",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="experiment root or run directories")
    add_option(parser, "--out", default="report", help="report folder (default report/)")
    parser.set_defaults(handler=run)
    return parser


def describe(files: ReportFiles) -> str:
    """One line saying what the report holds and where it is."""
    text = f"report of {files.runs} runs: {files.markdown}, {files.html}"
    if files.left_out:
        text += f" ({len(files.left_out)} left out, named above)"
    return text


def run(args: argparse.Namespace) -> int:
    print(describe(build_report(args.runs, args.out)))
    return 0
