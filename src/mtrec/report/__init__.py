"""The experiment report, rebuilt from finished runs: figures, a results table and the answers.

The runs found below the given folders are grouped by configuration (sharing, λF, λR); runs
under ``sweep/`` form the λ sweep. For each configuration the per-epoch curves are averaged
over seeds, with the min–max band; the table gives mean ± standard deviation over seeds.
Seed k gives every configuration the same split, so two configurations are compared seed by
seed (:class:`~mtrec.report.stats.Comparison`). Every number in the text and the table is read
from the runs' metrics.json, and ``report.json`` holds them unrounded.

Written to the output folder, each file atomically: ``report.md``, ``report.html``
(self-contained, the figures embedded), ``report.json`` and one PNG per figure.

The package: :mod:`~mtrec.report.collect` reads and groups runs, :mod:`~mtrec.report.stats`
aggregates over seeds and compares, :mod:`~mtrec.report.assignment` writes the assignment's
answers, :mod:`~mtrec.report.figures` draws, :mod:`~mtrec.report.document` renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mtrec.fileio import atomic_write_text
from mtrec.report.assignment import TABLE_HEADER, answer_sharing, answer_weights, answers, results_table, setup, sweep_reading
from mtrec.report.collect import Collection, RunResult, collect
from mtrec.report.document import Block, BulletList, Figure, Heading, Paragraph, to_html, to_markdown
from mtrec.report.figures import (
    CURVES,
    FIGURES,
    SUMMARY_FIGURE,
    TRADEOFF_FIGURE,
    curve_figure,
    summary_figure,
    tradeoff_figure,
)
from mtrec.report.stats import GroupSummary
from mtrec.report.study import STUDY_FIGURE, choices, study_blocks, study_figure

__all__ = [
    "CURVES",
    "FIGURES",
    "SUMMARY_FIGURE",
    "TABLE_HEADER",
    "TRADEOFF_FIGURE",
    "GroupSummary",
    "ReportFiles",
    "RunResult",
    "answer_sharing",
    "answer_weights",
    "build_report",
    "summary_figure",
    "write_report",
]


def document(collection: Collection, figures: dict[str, str]) -> list[Block]:
    """The report's blocks; ``figures`` maps each figure written to its caption."""
    groups, sweep = collection.groups, collection.sweep
    blocks: list[Block] = [Heading(1, "Multi-task recommender: experiments")]
    if groups:
        blocks += setup(groups)
        blocks += answers(groups)
        blocks += [Heading(2, "Results"), results_table(groups)]
        blocks += [Figure(name, caption) for name, caption in figures.items() if name not in (TRADEOFF_FIGURE, STUDY_FIGURE)]
    if sweep:
        blocks += [Heading(2, "λ sweep"), *setup(sweep, sweep=True)]
        blocks += [Paragraph(line) for line in sweep_reading(sweep)]
        blocks += [results_table(sweep), Figure(TRADEOFF_FIGURE, figures[TRADEOFF_FIGURE])]
    if collection.study:
        blocks += study_blocks(collection.study, figures.get(STUDY_FIGURE))
        blocks += setup(collection.study, study=True)
    runs = [str(run.path) for group in (*groups, *sweep, *collection.study) for run in group.runs]
    blocks += [
        Heading(2, "Runs"),
        Paragraph(f"{len(runs)} runs, each with its TensorBoard curves (`tensorboard --logdir DIR`):"),
        BulletList(tuple(runs)),
    ]
    if collection.left_out:
        blocks += [Heading(2, "Runs left out"), BulletList(tuple(collection.left_out))]
    return blocks


def write_figures(collection: Collection, out: Path) -> dict[str, str]:
    """The PNG figures, written to ``out``; returns file name -> caption."""
    figures = {}
    groups = collection.groups
    if groups:
        for field, (name, title, _) in CURVES.items():
            curve_figure(groups, field, out / name)
            figures[name] = f"{title} per epoch, per configuration"
        summary_figure(groups, out / SUMMARY_FIGURE)
        figures[SUMMARY_FIGURE] = "Test MSE and MRR at the selected epoch and at the best test epoch (an oracle)"
    if collection.study:
        study_figure(collection.study, choices(collection.study), out / STUDY_FIGURE)
        figures[STUDY_FIGURE] = (
            "Test MSE against MRR: each architecture's fixed-λ sweep as a line, each weighting's validation-chosen "
            "variant as a marker"
        )
    if collection.sweep:
        tradeoff_figure(collection.sweep, out / TRADEOFF_FIGURE)
        figures[TRADEOFF_FIGURE] = (
            "Test MSE against MRR for each λF, shared and separate embeddings; λF = 0 and 1, which leave a head "
            "untrained, are in the table only"
        )
    return figures


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote, and the runs it read."""

    markdown: Path
    html: Path
    data: Path
    figures: list[Path]
    runs: int
    left_out: list[str]


def write_report(collection: Collection, out: str | Path) -> ReportFiles:
    """Write report.md, report.html, report.json and the figures to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*FIGURES, STUDY_FIGURE):
        (out / stale).unlink(missing_ok=True)
    figures = write_figures(collection, out)
    blocks = document(collection, figures)
    title = "Multi-task recommender: experiments"
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks, out, title))
    data = {
        "groups": [group.to_json() for group in collection.groups],
        "sweep": [group.to_json() for group in collection.sweep],
        "study": [group.to_json() for group in collection.study],
        "left_out": collection.left_out,
    }
    atomic_write_text(out / "report.json", json.dumps(data, indent=2) + "\n")
    return ReportFiles(
        out / "report.md",
        out / "report.html",
        out / "report.json",
        [out / name for name in figures],
        sum(len(group.runs) for group in (*collection.groups, *collection.sweep)),
        collection.left_out,
    )


def build_report(paths: Sequence[str | Path], out: str | Path) -> ReportFiles:
    """Rebuild the report from the finished runs in or below ``paths``, into folder ``out``."""
    return write_report(collect(paths), out)
