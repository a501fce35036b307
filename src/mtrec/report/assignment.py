"""The assignment's write-up: the results table, how the runs were made, and the answers to its
two questions, written from the numbers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtrec.experiments import CONFIGURATIONS
from mtrec.report.collect import VARYING
from mtrec.report.document import Block, Code, Heading, Paragraph, Table
from mtrec.report.stats import (
    BEST_FIELDS,
    NAMES,
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


def verdict(a_name: str, b_name: str, comparisons: dict[str, Comparison]) -> tuple[str, str]:
    """(outcome, sentence): outcome is ``a``, ``b``, ``mixed``, ``a-partly``, ``b-partly`` or ``noise``."""
    wins_a = [TASKS[f] for f, c in comparisons.items() if c.clear and c.a_better]
    wins_b = [TASKS[f] for f, c in comparisons.items() if c.clear and not c.a_better]
    noise = [f for f, c in comparisons.items() if not c.clear]
    sentences = []
    if wins_a:
        sentences.append(f"{a_name} do better on {join(wins_a)}")
    if wins_b:
        sentences.append(f"{b_name} do better on {join(wins_b)}")
    for field in noise:
        c = comparisons[field]
        sentences.append(f"on {TASKS[field]} the difference ({c.describe()}) is within noise")
    sentence = _upper_first("; ".join(sentences) + ".")
    if wins_a and wins_b:
        return "mixed", sentence
    if not wins_a and not wins_b:
        return "noise", sentence
    side = "a" if wins_a else "b"
    return (side if not noise else f"{side}-partly"), sentence


def compare_test_metrics(a: GroupSummary, b: GroupSummary, stat: str = "final") -> dict[str, Comparison]:
    """Final (or best-epoch) test MSE and MRR of ``a`` against ``b``."""
    return {
        field: Comparison(getattr(a, stat)(field), getattr(b, stat)(field), lower)
        for field, lower in BEST_FIELDS.items()
    }


def _upper_first(text: str) -> str:
    """``text`` starting with a capital, unless it starts with a symbol such as λ."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


def overfitting(group: GroupSummary, field: str) -> str | None:
    """If the test metric's last value is clearly worse than its best, the sentence that says so."""
    best, final = group.best(field), group.final(field)
    lower = BEST_FIELDS[field]
    worse = Comparison(final, best, lower)
    if not worse.clear or worse.a_better:
        return None
    train_field = TRAIN_COUNTERPART[field]
    train_at_best, train_final = group.at_best_epoch(train_field, field), group.final(train_field)
    epoch = fmt_epoch(group.best_epoch(field))
    change = abs(final.mean / best.mean - 1)
    train_improves = train_final.mean < train_at_best.mean  # both training losses: lower is better
    verdict = (
        f"it overfits after about epoch {epoch}"
        if train_improves
        else f"the training fit worsens too, so this is not overfitting: after about epoch {epoch} "
        "training moves away from this task"
    )
    return (
        f"{group.configuration.label}: {NAMES[field]} is best at epoch {epoch}, at {fmt_stat(best)}, and ends "
        f"{change:.0%} {'higher' if lower else 'lower'}, at {fmt_stat(final)} (epoch {group.epochs}), while "
        f"{NAMES[train_field]} {'falls' if train_improves else 'rises'} from "
        f"{fmt_stat(train_at_best)} to {fmt_stat(train_final)}: {verdict}."
    )


def overfitting_reading(groups: Sequence[GroupSummary]) -> str:
    """Which configurations overfit on which test metric, and that the others show no sign of it."""
    found = [sentence for field in BEST_FIELDS for group in groups if (sentence := overfitting(group, field))]
    if len(found) == len(BEST_FIELDS) * len(groups):
        return " ".join(found)
    rest = "Elsewhere" if found else "For both configurations and both test metrics,"
    return " ".join(
        [
            *found,
            f"{rest} the last-epoch value is within noise of the best one: no test curve has turned by "
            f"epoch {groups[0].epochs}.",
        ]
    )


def _gap(group: GroupSummary) -> Stat:
    """Test MSE minus train MSE at the last epoch, per seed."""
    return group.stat(t - r for t, r in zip(group.final("test_mse").values, group.final("train_mse").values))


def train_test_reading(a: GroupSummary, a_name: str, b: GroupSummary, b_name: str, field: str) -> str:
    """What the training loss and the test metric ``field`` of two configurations say together."""
    train_field = TRAIN_COUNTERPART[field]
    train = Comparison(a.final(train_field), b.final(train_field), True)
    test = Comparison(a.final(field), b.final(field), BEST_FIELDS[field])
    text = (
        f"At the last epoch, {NAMES[train_field]} is {fmt_stat(a.final(train_field))} for {a_name} and "
        f"{fmt_stat(b.final(train_field))} for {b_name}; {NAMES[field]} {fmt_stat(a.final(field))} and "
        f"{fmt_stat(b.final(field))}."
    )
    if not test.clear:
        if train.clear:
            fits = a_name if train.a_better else b_name
            return text + (
                f" {_upper_first(fits)} fit the training data more closely, but on {NAMES[field]} the two are "
                "within noise: the extra fit does not carry over to unseen data."
            )
        return text + " Both are within noise of each other."
    winner, loser = (a_name, b_name) if test.a_better else (b_name, a_name)
    winner_fits = train.clear and train.a_better == test.a_better
    loser_fits = train.clear and not winner_fits
    if field == "test_mse":
        gap = Comparison(_gap(a), _gap(b), True)
        text += f" The train–test gap is {fmt_stat(_gap(a))} for {a_name} and {fmt_stat(_gap(b))} for {b_name}."
        if gap.clear and gap.a_better == test.a_better:  # the loser's gap is the wider
            detail = (
                ", although they fit the training ratings more closely"
                if loser_fits
                else ", and they fit the training ratings less closely too"
                if winner_fits
                else ""
            )
            return text + f" {_upper_first(loser)} predict held-out ratings worse because they overfit more{detail}."
    if winner_fits:
        return text + (
            f" {_upper_first(winner)} also have the lower {NAMES[train_field]}: their advantage is a better fit "
            "of the training data, not less overfitting."
        )
    if loser_fits:
        return text + (
            f" {_upper_first(loser)} fit the training data more closely yet do worse on test data: they overfit."
        )
    return text + f" Their {NAMES[train_field]} is within noise of each other: the difference is one of generalisation."


def answer_sharing(shared: GroupSummary, separate: GroupSummary) -> list[str]:
    """Question 1: does parameter sharing outperform separate models? Paragraphs, from the numbers."""
    final = compare_test_metrics(shared, separate)
    outcome, sentence = verdict("shared embeddings", "separate embeddings", final)
    opening = {
        "a": "Yes.",
        "a-partly": "Partly.",
        "mixed": "Not overall: it is a trade-off.",
        "b": "No.",
        "b-partly": "No.",
        "noise": "Not shown by these runs.",
    }[outcome]
    c = shared.configuration
    numbers = (
        f"With λF={c.factorization_weight:g} and λR={c.regression_weight:g}, after {shared.epochs} epochs, "
        f"shared embeddings reach test MSE {fmt_stat(shared.final('test_mse'))} and MRR "
        f"{fmt_stat(shared.final('test_mrr'))}; separate embeddings {fmt_stat(separate.final('test_mse'))} "
        f"and {fmt_stat(separate.final('test_mrr'))}."
    )
    best_comparisons = compare_test_metrics(shared, separate, "best")
    _, best_sentence = verdict("shared embeddings", "separate embeddings", best_comparisons)
    best = (
        f"At each model's best epoch (as with early stopping) test MSE is {fmt_stat(shared.best('test_mse'))} "
        f"against {fmt_stat(separate.best('test_mse'))} and MRR {fmt_stat(shared.best('test_mrr'))} against "
        f"{fmt_stat(separate.best('test_mrr'))}. {best_sentence}"
    )
    names = ("shared embeddings", "separate embeddings")
    return [
        f"{opening} {numbers} {sentence}",
        " ".join(train_test_reading(shared, names[0], separate, names[1], field) for field in BEST_FIELDS),
        overfitting_reading((shared, separate)),
        best,
    ]


def answer_weights(
    high: GroupSummary, balanced: GroupSummary, separate: tuple[GroupSummary, GroupSummary] | None = None
) -> list[str]:
    """Question 2: with sharing, λF=0.99/λR=0.01 against 0.5/0.5. ``separate``: the same pair unshared."""
    a_name, b_name = (
        f"the λF={g.configuration.factorization_weight:g}/λR={g.configuration.regression_weight:g} runs"
        for g in (high, balanced)
    )
    outcome, sentence = verdict(a_name, b_name, compare_test_metrics(high, balanced))
    readings = " ".join(train_test_reading(high, a_name, balanced, b_name, field) for field in BEST_FIELDS)
    why = "Why: the weights set how much each task shapes the shared embeddings."
    if outcome == "noise":
        why = f"Within {high.epochs} epochs the weights did not move the test metrics beyond noise."
    paragraphs = [
        f"With shared embeddings, {a_name} reach test MSE {fmt_stat(high.final('test_mse'))} and MRR "
        f"{fmt_stat(high.final('test_mrr'))}; {b_name} reach {fmt_stat(balanced.final('test_mse'))} and "
        f"{fmt_stat(balanced.final('test_mrr'))}. {sentence}",
        f"{why} {readings}",
        overfitting_reading((high, balanced)),
    ]
    if separate is not None:
        unshared = compare_test_metrics(*separate)
        mse, mrr = unshared["test_mse"], unshared["test_mrr"]
        text = (
            f"Control without sharing: the same change of weights moves test MSE by {mse.describe()} and "
            f"MRR by {mrr.describe()} (λF={high.configuration.factorization_weight:g} minus "
            f"λF={balanced.configuration.factorization_weight:g}). "
        )
        if not mse.clear and not mrr.clear:
            text += (
                "Both are within noise, as expected: with separate embeddings each parameter receives the "
                "gradient of one loss only, and Adam normalises that gradient's scale away."
            )
            if outcome != "noise":
                text += " What the weights change with sharing, they change through the shared embeddings."
        else:
            _, control = verdict(a_name, b_name, unshared)
            text += f"Even without sharing the weights change the results. {control}"
        paragraphs.append(text)
    return paragraphs


def _leader(groups: Sequence[GroupSummary], field: str, kind: str) -> str:
    """The λF with the best ``kind`` (final or best) value of ``field``, against the runner-up."""
    lower = BEST_FIELDS[field]
    ranked = sorted(groups, key=lambda g: getattr(g, kind)(field).mean, reverse=not lower)
    first = ranked[0]
    text = f"λF={first.configuration.factorization_weight:g} ({fmt_stat(getattr(first, kind)(field))})"
    if len(ranked) > 1:
        second = ranked[1]
        ahead = Comparison(getattr(first, kind)(field), getattr(second, kind)(field), lower).clear
        text += (
            f", {'clearly ahead of' if ahead else 'within noise of'} "
            f"λF={second.configuration.factorization_weight:g} ({fmt_stat(getattr(second, kind)(field))})"
        )
    return text


def sweep_reading(sweep: Sequence[GroupSummary]) -> list[str]:
    """Where the sweep puts the best test MSE and MRR, for shared and separate embeddings."""
    return [
        f"{_upper_first(name)} embeddings. Lowest test MSE at the last epoch: {_leader(groups, 'test_mse', 'final')}. "
        f"At the best epoch: {_leader(groups, 'test_mse', 'best')}. Highest test MRR at the last epoch: "
        f"{_leader(groups, 'test_mrr', 'final')}."
        for name, groups in by_sharing(sweep)
    ]




TABLE_HEADER = (
    "configuration",
    "seeds",
    "test MSE (last)",
    "test MSE (best)",
    "best MSE epoch",
    "test MRR (last)",
    "test MRR (best)",
    "best MRR epoch",
    "train MSE (last)",
    "train BPR (last)",
)


def results_table(groups: Sequence[GroupSummary]) -> Table:
    """Final and best-epoch test metrics, final training losses and best epochs, mean ± sd over seeds."""
    rows = []
    for group in groups:
        rows.append(
            (
                group.configuration.label,
                str(len(group.runs)),
                fmt_stat(group.final("test_mse")),
                fmt_stat(group.best("test_mse")),
                fmt_epoch(group.best_epoch("test_mse")),
                fmt_stat(group.final("test_mrr")),
                fmt_stat(group.best("test_mrr")),
                fmt_epoch(group.best_epoch("test_mrr")),
                fmt_stat(group.final("train_mse")),
                fmt_stat(group.final("train_bpr")),
            )
        )
    return Table(TABLE_HEADER, tuple(rows))


def _find(groups: Sequence[GroupSummary], name: str) -> GroupSummary | None:
    return next((group for group in groups if group.configuration == CONFIGURATIONS[name]), None)


def answers(groups: Sequence[GroupSummary]) -> list[Block]:
    """The two questions of the assignment, answered from the runs (or why they cannot be)."""
    blocks: list[Block] = [Heading(2, "1. Does parameter sharing outperform separate models?")]
    shared, separate = _find(groups, "shared-0.5-0.5"), _find(groups, "separate-0.5-0.5")
    if shared and separate:
        blocks += [Paragraph(text) for text in answer_sharing(shared, separate)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.5-0.5 and separate-0.5-0.5."))
    blocks.append(Heading(2, "2. With sharing, how do λF=0.99/λR=0.01 and 0.5/0.5 compare, and why?"))
    high = _find(groups, "shared-0.99-0.01")
    if high and shared:
        unshared_high = _find(groups, "separate-0.99-0.01")
        control = (unshared_high, separate) if unshared_high and separate else None
        blocks += [Paragraph(text) for text in answer_weights(high, shared, control)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.99-0.01 and shared-0.5-0.5."))
    return blocks


def setup(groups: Sequence[GroupSummary], sweep: bool = False) -> list[Block]:
    """How the runs were made, and the commands that make them again."""
    first = groups[0].runs[0]
    data = first.data_summary
    seeds = sorted({seed for group in groups for seed in group.seeds})
    model = first.config.model
    text = (
        f"Data: {data.get('name')} ({data.get('num_users')} users, {data.get('num_items')} items), "
        f"{first.config.data.split} split with {data.get('train_size')} training and "
        f"{data.get('test_size')} test ratings. Each configuration was trained for {groups[0].epochs} epochs "
        f"with seeds {', '.join(map(str, seeds))}; seed k drives the train/test split, the initialisation and "
        f"the negative sampling, exactly like `mtrec train --seed k`. Model: embedding dimension "
        f"{model['embedding_dim']}, rating MLP layers {model['layer_sizes']}, batch {model['batch_size']}, "
        f"Adam learning rate {model['learning_rate']:g}, l2 {model['l2']:g}. Tables and text give mean ± "
        "standard deviation over seeds; figures show the mean with the min–max range. Because seed k gives "
        "every configuration the same split, configurations are compared seed by seed: a difference is "
        "quoted as mean ± standard error of the per-seed differences, and called clear only when it exceeds "
        "twice its standard error; otherwise it is within noise."
    )
    blocks: list[Block] = [Paragraph(text)]
    gaps = [group for group in groups if sorted(group.seeds) != seeds]
    if gaps:
        listed = "; ".join(f"{group.configuration.label}: seeds {', '.join(map(str, sorted(group.seeds)))}" for group in gaps)
        blocks.append(
            Paragraph(
                f"Not every configuration has every seed ({listed}). The table averages each configuration over "
                "its own seeds; a difference in the text pairs only the seeds both configurations have, so it "
                "need not equal the difference of the table's means."
            )
        )
    if len(seeds) < 2:
        blocks.append(Paragraph("Only one seed: there is no estimate of noise, so no difference is called clear."))
    options = first.config.cli_options(exclude=VARYING)
    if sweep:
        weights = sorted({group.configuration.factorization_weight for group in groups})
        # The smallest gap is the step even if a value in between did not finish.
        step = ["--sweep-step", f"{min(np.diff(weights)):g}"] if len(weights) > 1 else []
        which = ["--sweep", *step]
    else:
        which = ["--configs", *(group.configuration.name for group in groups)]
    experiment = ["mtrec", "experiments", *which, "--seeds", str(len(seeds)), "--seed", str(seeds[0])]
    single = ["mtrec", "train", *first.config.cli_options(), "--logdir", str(first.path)]
    blocks += [
        Paragraph("To make these runs again (add `--data-dir DIR` where the data lives), and one of them alone:"),
        Code(" ".join([*experiment, *options]) + "\n" + " ".join(single)),
    ]
    return blocks
