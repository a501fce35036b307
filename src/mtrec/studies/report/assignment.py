"""The assignment's write-up: the results table, how the runs were made, and the answers to its
two questions, written from the numbers.

The readings are data first: a :class:`Verdict` says which configuration does better on which
task and whether each difference is clear (a seed-paired t-test, p < 0.05); an
:class:`Overfitting` says whether a test curve turned after its best epoch and whether the
training fit kept improving; a :class:`FitReading` says what the training and test numbers of
two configurations say together. Each renders its own sentence. The headline numbers are each
run's *selected* epoch (chosen on validation, or the last); best-test-epoch numbers are oracles
and are labelled so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtrec.studies.experiments import CONFIGURATIONS
from mtrec.studies.report.collect import VARYING
from mtrec.studies.report.document import Block, Code, Heading, Paragraph, Table
from mtrec.studies.report.stats import (
    BEST_FIELDS,
    NAMES,
    SIGNIFICANCE,
    TRAIN_COUNTERPART,
    Comparison,
    GroupSummary,
    Stat,
    by_sharing,
    fmt_epoch,
    fmt_stat,
    join,
)

#: What each test metric measures, for the verdicts.
TASKS = {"test_mse": "rating prediction (test MSE)", "test_mrr": "ranking (test MRR)"}


def _upper_first(text: str) -> str:
    """``text`` starting with a capital, unless it starts with a symbol such as λ."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


def label(group: GroupSummary) -> str:
    return group.configuration.label


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """Which of ``a`` and ``b`` does better on each test metric, by seed-paired tests."""

    a_name: str
    b_name: str
    comparisons: dict[str, Comparison]

    @property
    def wins_a(self) -> list[str]:
        return [field for field, c in self.comparisons.items() if c.clear and c.a_better]

    @property
    def wins_b(self) -> list[str]:
        return [field for field, c in self.comparisons.items() if c.clear and not c.a_better]

    @property
    def noise(self) -> list[str]:
        return [field for field, c in self.comparisons.items() if not c.clear]

    @property
    def outcome(self) -> str:
        """``a`` or ``b`` (better on every metric), ``a-partly`` / ``b-partly`` (better on some, the rest
        within noise), ``mixed`` (each better on something) or ``noise``."""
        if self.wins_a and self.wins_b:
            return "mixed"
        if not self.wins_a and not self.wins_b:
            return "noise"
        side = "a" if self.wins_a else "b"
        return side if not self.noise else f"{side}-partly"

    def sentence(self) -> str:
        parts = []
        if self.wins_a:
            parts.append(f"{self.a_name} do better on {join([TASKS[f] for f in self.wins_a])}")
        if self.wins_b:
            parts.append(f"{self.b_name} do better on {join([TASKS[f] for f in self.wins_b])}")
        parts += [f"on {TASKS[field]} the difference ({self.comparisons[field].describe()}) is within noise" for field in self.noise]
        details = [f"{TASKS[field].split(' (')[0]} {self.comparisons[field].describe()}" for field in (*self.wins_a, *self.wins_b)]
        sentence = _upper_first("; ".join(parts) + ".")
        if details:
            sentence += f" ({self.a_name} minus {self.b_name}: {'; '.join(details)}.)"
        return sentence


def compare_test_metrics(a: GroupSummary, b: GroupSummary, stat: str = "selected") -> dict[str, Comparison]:
    """Test MSE and MRR of ``a`` against ``b``, at the selected epochs (or ``"final"``, ``"best"``)."""
    return {field: Comparison(getattr(a, stat)(field), getattr(b, stat)(field), lower) for field, lower in BEST_FIELDS.items()}


def verdict(a_name: str, b_name: str, comparisons: dict[str, Comparison]) -> Verdict:
    return Verdict(a_name, b_name, comparisons)


# ---------------------------------------------------------------------------------------------
# Overfitting and what the training fit says


@dataclass(frozen=True)
class Overfitting:
    """A test curve that is clearly worse at the last epoch than at its best (a description of the
    curve: its best epoch is read off the test set, never used to choose a model)."""

    group: GroupSummary
    field: str
    best: Stat
    final: Stat
    train_at_best: Stat
    train_final: Stat

    @property
    def best_epoch(self) -> str:
        return fmt_epoch(self.group.best_epoch(self.field))

    @property
    def train_improves(self) -> bool:
        """Whether the training loss kept falling after the test metric's best epoch (overfitting proper)."""
        return self.train_final.mean < self.train_at_best.mean

    @property
    def change(self) -> float:
        return abs(self.final.mean / self.best.mean - 1)

    def sentence(self) -> str:
        lower = BEST_FIELDS[self.field]
        train_field = TRAIN_COUNTERPART[self.field]
        epoch = self.best_epoch
        reading = (
            f"it overfits after about epoch {epoch}"
            if self.train_improves
            else f"the training fit worsens too, so this is not overfitting: after about epoch {epoch} training moves away from this task"
        )
        return (
            f"{label(self.group)}: {NAMES[self.field]} is best at epoch {epoch}, at {fmt_stat(self.best)}, and ends "
            f"{self.change:.0%} {'higher' if lower else 'lower'}, at {fmt_stat(self.final)} (epoch {self.group.epochs}), "
            f"while {NAMES[train_field]} {'falls' if self.train_improves else 'rises'} from "
            f"{fmt_stat(self.train_at_best)} to {fmt_stat(self.train_final)}: {reading}."
        )


def overfitting(group: GroupSummary, field: str) -> Overfitting | None:
    """The test curve's turn, if its last value is clearly worse than its best."""
    best, final = group.best(field), group.final(field)
    worse = Comparison(final, best, BEST_FIELDS[field])
    if not worse.clear or worse.a_better:
        return None
    train_field = TRAIN_COUNTERPART[field]
    return Overfitting(group, field, best, final, group.at_best_epoch(train_field, field), group.final(train_field))


def overfitting_reading(groups: Sequence[GroupSummary]) -> str:
    """Which configurations overfit on which test metric, and that the others show no sign of it."""
    found = [o.sentence() for field in BEST_FIELDS for group in groups if (o := overfitting(group, field))]
    if len(found) == len(BEST_FIELDS) * len(groups):
        return " ".join(found)
    rest = "Elsewhere" if found else "For both configurations and both test metrics,"
    return " ".join(
        [
            *found,
            f"{rest} the last-epoch value is within noise of the curve's best: no test curve has turned by epoch {groups[0].epochs}.",
        ]
    )


def _gap(group: GroupSummary) -> Stat:
    """Test MSE minus train MSE at the selected epoch, per seed."""
    return group.stat(t - r for t, r in zip(group.selected("test_mse").values, group.selected("train_rating").values))


@dataclass(frozen=True)
class FitReading:
    """What the training loss and a test metric of two configurations say together.

    ``kind`` is ``noise`` (neither differs), ``fit-does-not-carry`` (one fits training more closely,
    test within noise), ``overfits-more`` (the loser's train–test gap is clearly wider),
    ``better-fit`` (the winner also fits training better), ``loser-overfits`` (the loser fits
    training better yet tests worse) or ``generalisation`` (training within noise, test not).
    """

    a: GroupSummary
    a_name: str
    b: GroupSummary
    b_name: str
    field: str
    kind: str
    winner: str | None = None
    loser: str | None = None
    detail: str = ""

    def sentence(self) -> str:
        train_field = TRAIN_COUNTERPART[self.field]
        a, b = self.a, self.b
        text = (
            f"At the selected epoch, {NAMES[train_field]} is {fmt_stat(a.selected(train_field))} for {self.a_name} and "
            f"{fmt_stat(b.selected(train_field))} for {self.b_name}; {NAMES[self.field]} "
            f"{fmt_stat(a.selected(self.field))} and {fmt_stat(b.selected(self.field))}."
        )
        if self.field == "test_mse" and self.kind not in ("noise", "fit-does-not-carry"):
            text += f" The train–test gap is {fmt_stat(_gap(a))} for {self.a_name} and {fmt_stat(_gap(b))} for {self.b_name}."
        endings = {
            "noise": " Both are within noise of each other.",
            "fit-does-not-carry": (
                f" {_upper_first(self.winner or '')} fit the training data more closely, but on {NAMES[self.field]} "
                "the two are within noise: the extra fit does not carry over to unseen data."
            ),
            "overfits-more": f" {_upper_first(self.loser or '')} predict held-out ratings worse because they overfit more{self.detail}.",
            "better-fit": (
                f" {_upper_first(self.winner or '')} also have the lower {NAMES[train_field]}: their advantage is a "
                "better fit of the training data, not less overfitting."
            ),
            "loser-overfits": (f" {_upper_first(self.loser or '')} fit the training data more closely yet do worse on test data: they overfit."),
            "generalisation": f" Their {NAMES[train_field]} is within noise of each other: the difference is one of generalisation.",
        }
        return text + endings[self.kind]


def train_test_reading(a: GroupSummary, a_name: str, b: GroupSummary, b_name: str, field: str) -> FitReading:
    """Read the training loss and the test metric ``field`` of two configurations together."""
    train_field = TRAIN_COUNTERPART[field]
    train = Comparison(a.selected(train_field), b.selected(train_field), True)
    test = Comparison(a.selected(field), b.selected(field), BEST_FIELDS[field])
    reading = lambda kind, **more: FitReading(a, a_name, b, b_name, field, kind, **more)  # noqa: E731
    if not test.clear:
        if train.clear:
            return reading("fit-does-not-carry", winner=a_name if train.a_better else b_name)
        return reading("noise")
    winner, loser = (a_name, b_name) if test.a_better else (b_name, a_name)
    winner_fits = train.clear and train.a_better == test.a_better
    loser_fits = train.clear and not winner_fits
    if field == "test_mse":
        gap = Comparison(_gap(a), _gap(b), True)
        if gap.clear and gap.a_better == test.a_better:  # the loser's gap is the wider
            detail = (
                ", although they fit the training ratings more closely"
                if loser_fits
                else ", and they fit the training ratings less closely too"
                if winner_fits
                else ""
            )
            return reading("overfits-more", winner=winner, loser=loser, detail=detail)
    if winner_fits:
        return reading("better-fit", winner=winner, loser=loser)
    if loser_fits:
        return reading("loser-overfits", winner=winner, loser=loser)
    return reading("generalisation", winner=winner, loser=loser)


# ---------------------------------------------------------------------------------------------
# The two questions


#: The opening word of the answer to question 1, by the verdict's outcome.
SHARING_OPENINGS = {
    "a": "Yes.",
    "a-partly": "Partly.",
    "mixed": "Not overall: it is a trade-off.",
    "b": "No.",
    "b-partly": "No.",
    "noise": "Not shown by these runs.",
}
SHARED, SEPARATE = "shared embeddings", "separate embeddings"


def sharing_verdict(shared: GroupSummary, separate: GroupSummary, stat: str = "selected") -> Verdict:
    """Question 1's verdict: shared against separate embeddings."""
    return verdict(SHARED, SEPARATE, compare_test_metrics(shared, separate, stat))


def _when(group: GroupSummary) -> str:
    return "at the epoch chosen on validation" if group.early_stopped else f"after {group.epochs} epochs"


def answer_sharing(shared: GroupSummary, separate: GroupSummary) -> list[str]:
    """Question 1: does parameter sharing outperform separate models? Paragraphs, from the numbers."""
    found = sharing_verdict(shared, separate)
    c = shared.configuration
    numbers = (
        f"With λF={c.factorization_weight:g} and λR={c.regression_weight:g}, {_when(shared)}, "
        f"shared embeddings reach test MSE {fmt_stat(shared.selected('test_mse'))} and MRR "
        f"{fmt_stat(shared.selected('test_mrr'))}; separate embeddings {fmt_stat(separate.selected('test_mse'))} "
        f"and {fmt_stat(separate.selected('test_mrr'))}."
    )
    oracle = sharing_verdict(shared, separate, "best")
    best = (
        "Oracle check (each run's best test epoch, chosen on the test set, so no model one could have picked): "
        f"test MSE {fmt_stat(shared.best('test_mse'))} against {fmt_stat(separate.best('test_mse'))} and MRR "
        f"{fmt_stat(shared.best('test_mrr'))} against {fmt_stat(separate.best('test_mrr'))}. {oracle.sentence()}"
    )
    return [
        f"{SHARING_OPENINGS[found.outcome]} {numbers} {found.sentence()}",
        " ".join(train_test_reading(shared, SHARED, separate, SEPARATE, field).sentence() for field in BEST_FIELDS),
        overfitting_reading((shared, separate)),
        best,
    ]


def weight_names(high: GroupSummary, balanced: GroupSummary) -> tuple[str, str]:
    return tuple(  # type: ignore[return-value]
        f"the λF={g.configuration.factorization_weight:g}/λR={g.configuration.regression_weight:g} runs" for g in (high, balanced)
    )


def weights_verdict(high: GroupSummary, balanced: GroupSummary) -> Verdict:
    """Question 2's verdict: the high λF against the balanced weights."""
    return verdict(*weight_names(high, balanced), compare_test_metrics(high, balanced))


def answer_weights(high: GroupSummary, balanced: GroupSummary, separate: tuple[GroupSummary, GroupSummary] | None = None) -> list[str]:
    """Question 2: with sharing, λF=0.99/λR=0.01 against 0.5/0.5. ``separate``: the same pair unshared."""
    a_name, b_name = weight_names(high, balanced)
    found = weights_verdict(high, balanced)
    readings = " ".join(train_test_reading(high, a_name, balanced, b_name, field).sentence() for field in BEST_FIELDS)
    why = "Why: the weights set how much each task shapes the shared embeddings."
    if found.outcome == "noise":
        why = f"Within {high.epochs} epochs the weights did not move the test metrics beyond noise."
    paragraphs = [
        f"With shared embeddings, {a_name} reach test MSE {fmt_stat(high.selected('test_mse'))} and MRR "
        f"{fmt_stat(high.selected('test_mrr'))}; {b_name} reach {fmt_stat(balanced.selected('test_mse'))} and "
        f"{fmt_stat(balanced.selected('test_mrr'))}. {found.sentence()}",
        f"{why} {readings}",
        overfitting_reading((high, balanced)),
    ]
    if separate is not None:
        control = verdict(a_name, b_name, compare_test_metrics(*separate))
        mse, mrr = control.comparisons["test_mse"], control.comparisons["test_mrr"]
        text = (
            f"Control without sharing: the same change of weights moves test MSE by {mse.describe()} and "
            f"MRR by {mrr.describe()} (λF={high.configuration.factorization_weight:g} minus "
            f"λF={balanced.configuration.factorization_weight:g}). "
        )
        if control.outcome == "noise":
            text += (
                "Both are within noise, as expected: with separate embeddings each parameter receives the "
                "gradient of one loss only, and Adam normalises that gradient's scale away."
            )
            if found.outcome != "noise":
                text += " What the weights change with sharing, they change through the shared embeddings."
        else:
            text += f"Even without sharing the weights change the results. {control.sentence()}"
        paragraphs.append(text)
    return paragraphs


# ---------------------------------------------------------------------------------------------
# The λ sweep


@dataclass(frozen=True)
class Leader:
    """The λF with the best value of a metric in a sweep, and whether it is clearly ahead of the runner-up."""

    field: str
    kind: str
    first: GroupSummary
    second: GroupSummary | None
    clear: bool

    def sentence(self) -> str:
        stat = lambda g: getattr(g, self.kind)(self.field)  # noqa: E731
        text = f"λF={self.first.configuration.factorization_weight:g} ({fmt_stat(stat(self.first))})"
        if self.second is not None:
            text += (
                f", {'clearly ahead of' if self.clear else 'within noise of'} "
                f"λF={self.second.configuration.factorization_weight:g} ({fmt_stat(stat(self.second))})"
            )
        return text


def leader(groups: Sequence[GroupSummary], field: str, kind: str = "selected") -> Leader:
    lower = BEST_FIELDS[field]
    ranked = sorted(groups, key=lambda g: getattr(g, kind)(field).mean, reverse=not lower)
    second = ranked[1] if len(ranked) > 1 else None
    clear = second is not None and Comparison(getattr(ranked[0], kind)(field), getattr(second, kind)(field), lower).clear
    return Leader(field, kind, ranked[0], second, clear)


def sweep_reading(sweep: Sequence[GroupSummary]) -> list[str]:
    """Where the sweep puts the best test MSE and MRR, for shared and separate embeddings."""
    return [
        f"{_upper_first(name)} embeddings. Lowest test MSE at the selected epoch: {leader(groups, 'test_mse').sentence()}. "
        f"At the best test epoch (oracle): {leader(groups, 'test_mse', 'best').sentence()}. Highest test MRR at the "
        f"selected epoch: {leader(groups, 'test_mrr').sentence()}."
        for name, groups in by_sharing(sweep)
    ]


# ---------------------------------------------------------------------------------------------
# Table and setup


TABLE_HEADER = (
    "configuration",
    "seeds",
    "epoch",
    "test MSE",
    "test MRR",
    "test NDCG@10",
    "test Recall@10",
    "train MSE",
    "oracle: best test MSE (epoch)",
    "oracle: best test MRR (epoch)",
)


def results_table(groups: Sequence[GroupSummary]) -> Table:
    """Each configuration at its selected epochs, mean ± sd over seeds; the oracle best test values beside."""
    rows = []
    for group in groups:
        rows.append(
            (
                label(group),
                str(len(group.runs)),
                fmt_epoch(group.selected_epoch()),
                fmt_stat(group.selected("test_mse")),
                fmt_stat(group.selected("test_mrr")),
                fmt_stat(group.selected("test_ndcg@10")),
                fmt_stat(group.selected("test_recall@10")),
                fmt_stat(group.selected("train_rating")),
                f"{fmt_stat(group.best('test_mse'))} ({fmt_epoch(group.best_epoch('test_mse'))})",
                f"{fmt_stat(group.best('test_mrr'))} ({fmt_epoch(group.best_epoch('test_mrr'))})",
            )
        )
    return Table(TABLE_HEADER, tuple(rows))


def find(groups: Sequence[GroupSummary], name: str) -> GroupSummary | None:
    return next((group for group in groups if group.configuration == CONFIGURATIONS[name]), None)


def answers(groups: Sequence[GroupSummary]) -> list[Block]:
    """The two questions of the assignment, answered from the runs (or why they cannot be)."""
    blocks: list[Block] = [Heading(2, "1. Does parameter sharing outperform separate models?")]
    shared, separate = find(groups, "shared-0.5-0.5"), find(groups, "separate-0.5-0.5")
    if shared and separate:
        blocks += [Paragraph(text) for text in answer_sharing(shared, separate)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.5-0.5 and separate-0.5-0.5."))
    blocks.append(Heading(2, "2. With sharing, how do λF=0.99/λR=0.01 and 0.5/0.5 compare, and why?"))
    high = find(groups, "shared-0.99-0.01")
    if high and shared:
        unshared_high = find(groups, "separate-0.99-0.01")
        control = (unshared_high, separate) if unshared_high and separate else None
        blocks += [Paragraph(text) for text in answer_weights(high, shared, control)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.99-0.01 and shared-0.5-0.5."))
    return blocks


def setup(groups: Sequence[GroupSummary], sweep: bool = False, study: bool = False) -> list[Block]:
    """How the runs were made, how they are compared, and the commands that make them again."""
    first = groups[0].runs[0]
    data = first.data_summary
    config = first.config
    seeds = sorted({seed for group in groups for seed in group.seeds})
    model = config.model
    valid = data.get("valid_size") or 0
    selection = (
        f"Each run keeps the weights of the epoch its validation {config.early_stopping} criterion chose "
        f"({valid} validation ratings carved from the training part, patience {config.patience}); those epochs' "
        "test numbers are the headline."
        if config.early_stopping
        else "Each run keeps its last epoch's weights, and those are the headline numbers (no validation set)."
    )
    text = (
        f"Data: {data.get('name')} ({data.get('num_users')} users, {data.get('num_items')} items), "
        f"{config.data.split.method} split with {data.get('train_size')} training and "
        f"{data.get('test_size')} test ratings. Each configuration was trained for up to {groups[0].epochs} epochs "
        f"with seeds {', '.join(map(str, seeds))}; seed k drives the train/test split, the initialisation and "
        f"the negative sampling, exactly like `mtrec train --seed k`. Model: embedding dimension "
        f"{model['embedding_dim']}, rating MLP layers {model['layer_sizes']}, batch {model['batch_size']}, "
        f"Adam learning rate {model['learning_rate']:g} ({model['lr_schedule']} schedule), l2 {model['l2']:g}. "
        f"{selection} Best-test-epoch numbers are labelled oracle: chosen on the test set, they describe the "
        "curves and choose nothing. Tables and text give mean ± standard deviation over seeds; figures show the "
        "mean with the min–max range. Because seed k gives every configuration the same split, configurations "
        "are compared seed by seed: a difference is quoted as mean ± standard error of the per-seed differences "
        f"with the p-value of a paired t-test, and called clear only when p < {SIGNIFICANCE:g}; otherwise it is "
        "within noise."
    )
    blocks: list[Block] = [Paragraph(text)]
    gaps = [group for group in groups if sorted(group.seeds) != seeds]
    if gaps:
        listed = "; ".join(f"{label(group)}: seeds {', '.join(map(str, sorted(group.seeds)))}" for group in gaps)
        blocks.append(
            Paragraph(
                f"Not every configuration has every seed ({listed}). The table averages each configuration over "
                "its own seeds; a difference in the text pairs only the seeds both configurations have, so it "
                "need not equal the difference of the table's means."
            )
        )
    if len(seeds) < 2:
        blocks.append(Paragraph("Only one seed: there is no estimate of noise, so no difference is called clear."))
    options = config.cli_options(exclude=VARYING)
    if sweep:
        weights = sorted({group.configuration.factorization_weight for group in groups})
        # The smallest gap is the step even if a value in between did not finish.
        step = ["--sweep-step", f"{min(np.diff(weights)):g}"] if len(weights) > 1 else []
        which = ["--sweep", *step]
    elif study:
        which = ["--study", "multitask"]
    else:
        which = ["--configs", *(group.configuration.name for group in groups)]
    experiment = ["mtrec", "experiments", *which, "--seeds", str(len(seeds)), "--seed", str(seeds[0])]
    single = ["mtrec", "train", *config.cli_options(), "--logdir", str(first.path)]
    blocks += [
        Paragraph("To make these runs again (add `--data-dir DIR` where the data lives), and one of them alone:"),
        Code(" ".join([*experiment, *options]) + "\n" + " ".join(single)),
    ]
    return blocks
