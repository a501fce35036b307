"""The experiment report, rebuilt from finished runs: figures, a results table and the answers.

The runs found below the given folders are grouped by configuration (sharing, λF, λR); runs
under ``sweep/`` form the λ sweep. For each configuration the per-epoch curves are averaged
over seeds, with the min–max band; the table gives mean ± standard deviation over seeds.
Seed k gives every configuration the same split, so two configurations are compared seed by
seed (:class:`~mtrec.studies.report.stats.Comparison`). Every number in the text and the table is read
from the runs' metrics.json, and ``report.json`` holds them unrounded.

Written to the output folder all at once: ``report.md``, ``report.html`` (self-contained, the
figures embedded), ``report.json`` and one PNG per figure are built in a staging folder beside
it, which is then renamed into place. On any error the staging folder is removed and the output
folder keeps the report it held; a folder holding other files than a report's is never replaced.
An output folder that is a symbolic link keeps its link; one process at a time writes a folder.

The package: :mod:`~mtrec.studies.report.collect` reads and groups runs, :mod:`~mtrec.studies.report.stats`
aggregates over seeds and compares, :mod:`~mtrec.studies.report.assignment` writes the assignment's
answers, :mod:`~mtrec.studies.report.figures` draws, :mod:`~mtrec.studies.report.document` renders.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mtrec.errors import DataError
from mtrec.io.files import atomic_write_text, directory_lock, link_target, publish_directory
from mtrec.studies.report.assignment import TABLE_HEADER, answer_sharing, answer_weights, answers, results_table, setup, sweep_reading
from mtrec.studies.report.collect import Collection, RunResult, collect
from mtrec.studies.report.document import Block, BulletList, Figure, Heading, Paragraph, to_html, to_markdown
from mtrec.studies.report.figures import (
    CURVES,
    FIGURES,
    SUMMARY_FIGURE,
    TRADEOFF_FIGURE,
    curve_figure,
    summary_figure,
    tradeoff_figure,
)
from mtrec.studies.report.stats import GroupSummary
from mtrec.studies.report.study import STUDY_FIGURE, choices, study_blocks, study_figure

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
    "check_out",
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
            "Test MSE against MRR: each architecture's fixed-λ sweep as a line, each weighting's validation-chosen variant as a marker"
        )
    if collection.sweep:
        tradeoff_figure(collection.sweep, out / TRADEOFF_FIGURE)
        figures[TRADEOFF_FIGURE] = (
            "Test MSE against MRR for each λF, shared and separate embeddings; λF = 0 and 1, which leave a head untrained, are in the table only"
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


#: The files of a report folder: a folder holding anything else is not a report to replace.
REPORT_FILES = ("report.md", "report.html", "report.json", *FIGURES, STUDY_FIGURE)


def check_out(out: str | Path) -> None:
    """:class:`DataError` unless ``out`` is a folder a report may be written to: absent, or holding a report only."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} is not a folder: choose another --out")
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in REPORT_FILES)
    if foreign:
        raise DataError(f"{out} holds files that are not a report's ({', '.join(foreign[:5])}): choose another --out")


def write_report(collection: Collection, out: str | Path) -> ReportFiles:
    """Write report.md, report.html, report.json and the figures to folder ``out``, all or nothing:
    they are built beside it and replace it by a rename, so ``out`` never holds half a report.

    ``out`` may be a symbolic link: the folder it points at is replaced, the link stays. One
    process at a time writes a report folder: it holds the folder's lock
    (:func:`~mtrec.io.files.directory_lock`), and another writer is refused with
    :class:`~mtrec.io.files.LockHeldError` naming it.
    """
    out = Path(out)
    target = _target(out)
    with directory_lock(target):
        check_out(out)
        staging = target.parent / f".{target.name}.{os.getpid()}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            figures = write_figures(collection, staging)
            _write_documents(collection, figures, staging)
            publish_directory(staging, target, target.parent / f".{target.name}.{os.getpid()}.old")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ReportFiles(
        out / "report.md",
        out / "report.html",
        out / "report.json",
        [out / name for name in figures],
        sum(len(group.runs) for group in (*collection.groups, *collection.sweep)),
        collection.left_out,
    )


def _write_documents(collection: Collection, figures: dict[str, str], folder: Path) -> None:
    """report.md, report.html (the figures in ``folder`` embedded) and report.json, into ``folder``."""
    blocks = document(collection, figures)
    atomic_write_text(folder / "report.md", to_markdown(blocks))
    atomic_write_text(folder / "report.html", to_html(blocks, folder, "Multi-task recommender: experiments"))
    data = {
        "groups": [group.to_json() for group in collection.groups],
        "sweep": [group.to_json() for group in collection.sweep],
        "study": [group.to_json() for group in collection.study],
        "left_out": collection.left_out,
    }
    atomic_write_text(folder / "report.json", json.dumps(data, indent=2) + "\n")


def build_report(paths: Sequence[str | Path], out: str | Path) -> ReportFiles:
    """Rebuild the report from the finished runs in or below ``paths``, into folder ``out`` (see :func:`write_report`)."""
    with directory_lock(_target(out)):  # before the runs are read, and held until the report is written
        check_out(out)
        return write_report(collect(paths), out)


def _target(out: str | Path) -> Path:
    """The folder a report for ``out`` replaces: ``out``, or the folder the link ``out`` points at (absolute)."""
    return Path(os.path.abspath(link_target(out)))
