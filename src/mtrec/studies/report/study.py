"""The multi-task study: does any multi-task method or sharing architecture make sharing beat
separate models on both tasks?

Each (architecture, weighting) pair is represented by its variant with the best validation
criterion (the fixed-λ sweep's λF, for instance), chosen on the validation sets, never on test.
The reference is separate embeddings with their validation-chosen fixed λ. A pair *wins* when its
test MSE is lower **and** its test MRR higher than the reference's, each by a seed-paired t-test
with p < 0.05; a weighting other than ``fixed`` counts as a win only if it also beats its own
architecture's tuned fixed-λ sweep on both tasks (Kurin et al. 2022, Xin et al. 2022: tuned fixed
weights are hard to beat). Parity is reported as parity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mtrec.io.files import atomic_output
from mtrec.studies.experiments import SHARING_NAMES
from mtrec.studies.report.assignment import compare_test_metrics
from mtrec.studies.report.document import Block, Heading, Paragraph, Table
from mtrec.studies.report.stats import (
    Comparison,
    GroupSummary,
    Stat,
    fmt,
    fmt_p,
    fmt_stat,
    join,
)

STUDY_FIGURE = "multitask_plane.png"


def validation_score(group: GroupSummary) -> Stat:
    """Each run's validation criterion at its selected epoch (higher is better)."""
    return group.stat(
        math.nan if (run.metrics.get("selection") or {}).get("score") is None else float(run.metrics["selection"]["score"]) for run in group.runs
    )


def seconds_per_epoch(group: GroupSummary) -> float:
    """Mean wall seconds of an epoch over the group's runs (training and both evaluations)."""
    values = [record.get("seconds") or 0.0 for run in group.runs for record in run.metrics["epochs"]]
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Choice:
    """An (architecture, weighting) pair and its variant chosen on validation, with its comparisons."""

    sharing: str
    weighting: str
    group: GroupSummary
    candidates: int
    against_separate: dict[str, Comparison]
    against_fixed: dict[str, Comparison] | None

    @property
    def name(self) -> str:
        return f"{SHARING_NAMES[self.sharing]}, {self.weighting}"

    @staticmethod
    def _both(comparisons: dict[str, Comparison] | None) -> bool:
        return comparisons is not None and all(c.clear and c.a_better for c in comparisons.values())

    @property
    def wins(self) -> bool:
        """Lower test MSE and higher test MRR than separate embeddings, both clear; and, for a
        weighting other than fixed, than its architecture's tuned fixed λ too."""
        if self.sharing == "separate":
            return False
        return self._both(self.against_separate) and (self.weighting == "fixed" or self._both(self.against_fixed))


def choices(groups: Sequence[GroupSummary]) -> list[Choice]:
    """Per (architecture, weighting), the variant with the best mean validation criterion."""
    best: dict[tuple[str, str], tuple[GroupSummary, int]] = {}
    for group in groups:
        key = (group.configuration.sharing, group.configuration.weighting)
        score = validation_score(group).mean
        current = best.get(key)
        if current is None or (math.isfinite(score) and not score <= validation_score(current[0]).mean):
            best[key] = (group, (current[1] if current else 0) + 1)
        else:
            best[key] = (current[0], current[1] + 1)
    reference = best.get(("separate", "fixed"))
    found = []
    for (sharing, weighting), (group, count) in best.items():
        against_separate = compare_test_metrics(group, reference[0]) if reference else {}
        fixed = best.get((sharing, "fixed"))
        against_fixed = compare_test_metrics(group, fixed[0]) if fixed and weighting != "fixed" else None
        found.append(Choice(sharing, weighting, group, count, against_separate, against_fixed))
    order = list(SHARING_NAMES)
    return sorted(found, key=lambda c: (order.index(c.sharing), c.weighting != "fixed", c.weighting))


def _difference(comparison: Comparison | None) -> str:
    if comparison is None or not math.isfinite(comparison.difference):
        return "–"
    return f"{comparison.difference:+.4f} ({fmt_p(comparison.p_value)})"


STUDY_HEADER = (
    "architecture, weighting",
    "chosen on validation",
    "validation criterion",
    "test MSE",
    "test MRR",
    "MSE − separate",
    "MRR − separate",
    "s / epoch",
    "epochs",
)


def study_table(found: Sequence[Choice]) -> Table:
    rows = []
    for choice in found:
        c = choice.group.configuration
        chosen = f"λF={c.factorization_weight:g}, λR={c.regression_weight:g}" + (f" (best of {choice.candidates})" if choice.candidates > 1 else "")
        rows.append(
            (
                choice.name,
                chosen,
                fmt_stat(validation_score(choice.group)),
                fmt_stat(choice.group.selected("test_mse")),
                fmt_stat(choice.group.selected("test_mrr")),
                _difference(choice.against_separate.get("test_mse")),
                _difference(choice.against_separate.get("test_mrr")),
                f"{seconds_per_epoch(choice.group):.2f}",
                f"{choice.group.selected_epoch().mean:.0f}",
            )
        )
    return Table(STUDY_HEADER, tuple(rows))


def _outcome(choice: Choice) -> str:
    """What a choice does against separate embeddings, task by task, in words."""
    parts = []
    for field, task in (("test_mse", "rating MSE"), ("test_mrr", "MRR")):
        comparison = choice.against_separate[field]
        if comparison.clear:
            parts.append(f"{'better' if comparison.a_better else 'worse'} {task} ({comparison.describe()})")
        else:
            parts.append(f"{task} within noise ({comparison.describe()})")
    return f"{choice.name}: {' and '.join(parts)}"


def study_answer(found: Sequence[Choice]) -> list[str]:
    """Does any method make sharing beat separate models on both tasks, and why (or why not)."""
    reference = next((c for c in found if c.sharing == "separate" and c.weighting == "fixed"), None)
    if reference is None:
        return ["Not answered: the study needs finished runs of separate embeddings with the fixed weighting."]
    r = reference.group
    opening = (
        f"The reference is separate embeddings with the fixed λ chosen on validation "
        f"(λF={r.configuration.factorization_weight:g}): test MSE {fmt_stat(r.selected('test_mse'))}, MRR "
        f"{fmt_stat(r.selected('test_mrr'))}."
    )
    winners = [c for c in found if c.wins]
    others = [c for c in found if c.sharing != "separate"]
    if winners:
        verdict = (
            f"Yes: {join([c.name for c in winners])} "
            f"{'beats' if len(winners) == 1 else 'beat'} separate embeddings on both tasks (p < 0.05 on each)"
            + (
                ", and each learned weighting among them also beats its architecture's tuned fixed λ."
                if any(c.weighting != "fixed" for c in winners)
                else "."
            )
        )
    else:
        verdict = "No method or architecture makes sharing beat separate models on both tasks here."
    readings = " ".join(_outcome(c) + "." for c in others)
    methods = [c for c in found if c.weighting != "fixed" and c.against_fixed]
    against_sweep = []
    for c in methods:
        tasks = (("test_mse", "rating"), ("test_mrr", "ranking"))
        wins = [task for field, task in tasks if c.against_fixed[field].clear and c.against_fixed[field].a_better]
        losses = [task for field, task in tasks if c.against_fixed[field].clear and not c.against_fixed[field].a_better]
        text = f"{c.name} against its tuned fixed λ: "
        text += (f"better on {join(wins)}" if wins else "") + ("; " if wins and losses else "") + (f"worse on {join(losses)}" if losses else "")
        text += "" if wins or losses else "within noise on both tasks"
        against_sweep.append(text)
    why = (
        "Why: a task that shares embeddings competes for them; where a shared model matches separate "
        "embeddings on one task it pays on the other, and the weightings that rescale or project the "
        "gradients move the model along that trade-off rather than past it, as the figure shows against "
        "the fixed-λ front."
        if not winners
        else "Why: in the winning configurations the shared parameters carry information that helps both heads."
    )
    costs = ", ".join(f"{c.name} {seconds_per_epoch(c.group):.2f} s" for c in found)
    return [
        f"{opening} {verdict}",
        readings,
        ("The weightings against each architecture's tuned fixed λ: " + "; ".join(against_sweep) + ".") if against_sweep else "",
        why,
        f"Training cost, seconds per epoch (training and both evaluations; the gradient methods take one backward pass per task): {costs}.",
    ]


def study_figure(groups: Sequence[GroupSummary], found: Sequence[Choice], path: Path) -> None:
    """Test MSE against MRR: each architecture's fixed-λ front as a line, each chosen method as a marker."""
    from mtrec.studies.report.figures import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = {"fixed": "o", "uncertainty": "s", "gradnorm": "^", "pcgrad": "D", "mgda": "v"}
    for index, sharing in enumerate(SHARING_NAMES):
        front = sorted(
            (g for g in groups if g.configuration.sharing == sharing and g.configuration.weighting == "fixed"),
            key=lambda g: g.configuration.factorization_weight,
        )
        if front:
            axes.plot(
                [g.selected("test_mse").mean for g in front],
                [g.selected("test_mrr").mean for g in front],
                color=f"C{index}",
                linestyle="-",
                alpha=0.5,
                label=f"{SHARING_NAMES[sharing]}: fixed-λ front",
            )
        for choice in (c for c in found if c.sharing == sharing):
            axes.scatter(
                choice.group.selected("test_mse").mean,
                choice.group.selected("test_mrr").mean,
                color=f"C{index}",
                marker=markers.get(choice.weighting, "o"),
                s=50,
                zorder=3,
            )
            axes.annotate(
                choice.weighting,
                (choice.group.selected("test_mse").mean, choice.group.selected("test_mrr").mean),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    axes.set_xlabel("test MSE at the selected epoch (lower is better)")
    axes.set_ylabel("test MRR at the selected epoch (higher is better)")
    axes.set_title("Multi-task study: each method's validation-chosen point and the fixed-λ fronts")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def study_blocks(groups: Sequence[GroupSummary], figure: str | None) -> list[Block]:
    from mtrec.studies.report.document import Figure

    found = choices(groups)
    blocks: list[Block] = [
        Heading(2, "Multi-task methods and sharing architectures"),
        Paragraph(
            "Each architecture and weighting is shown at its variant with the best validation criterion "
            "(never chosen on test); differences against separate embeddings are mean per-seed differences "
            "with the p-value of a paired t-test. A win on both tasks needs lower test MSE and higher MRR, "
            "each with p < 0.05."
        ),
        *[Paragraph(text) for text in study_answer(found) if text],
        study_table(found),
    ]
    if figure:
        blocks.append(Figure(STUDY_FIGURE, figure))
    return blocks


__all__ = ["STUDY_FIGURE", "choices", "study_answer", "study_blocks", "study_figure", "study_table", "fmt"]
