from __future__ import annotations

import numpy as np
import pytest

from automl import metrics as m
from automl.errors import TargetSyntax
from automl.target import bootstrap_ci, describe, judge, parse_target, score


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("accuracy>=0.9", m.VAL_ACCURACY, ">=", 0.9),
        (" f1_macro >= 0.8 ", m.VAL_F1_MACRO, ">=", 0.8),
        ("val_loss<=0.3", m.VAL_LOSS, "<=", 0.3),
        ("auroc>0.95", m.VAL_AUROC, ">", 0.95),
    ],
)
def test_targets_parse(text, metric, op, value):
    target = parse_target(text)
    assert (target.metric, target.op, target.value) == (metric, op, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy=0.9", r"write METRIC>=VALUE .* Metrics: accuracy, f1_macro"),
        ("precision_micro>=0.9", r"Unknown metric 'precision_micro' .* Metrics: accuracy, f1_macro, precision_macro"),
        ("accuracy>=1.5", r"lies between 0 and 1; the target value 1.5 is out of range"),
        ("accuracy<=0.9", r"higher-is-better; a target reads accuracy>=0.9"),
        ("val_loss>=0.2", r"lower-is-better; a target reads loss<=0.2"),
        ("", r"Cannot read the target"),
    ],
)
def test_bad_targets_say_what_is_valid(text, message):
    with pytest.raises(TargetSyntax, match=message):
        parse_target(text)


def known_predictions(n: int = 200, correct: int = 180, classes: int = 4):
    """``correct`` of ``n`` predictions right, each with probability 0.7 on its predicted class."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, classes, n)
    predicted = targets.copy()
    wrong = rng.choice(n, n - correct, replace=False)
    predicted[wrong] = (targets[wrong] + 1) % classes
    probabilities = np.full((n, classes), 0.1)
    probabilities[np.arange(n), predicted] = 0.7
    return targets, probabilities


def test_score_and_interval_of_known_predictions():
    targets, probabilities = known_predictions()
    assert score(m.VAL_ACCURACY, targets, probabilities) == pytest.approx(0.9)
    assert score(m.VAL_LOSS, targets, probabilities) == pytest.approx(-(0.9 * np.log(0.7) + 0.1 * np.log(0.1)))
    low, high = bootstrap_ci(m.VAL_ACCURACY, targets, probabilities, resamples=500)
    # binomial standard error sqrt(0.9 * 0.1 / 200) = 0.021: the 95% interval is about +-0.042
    assert 0.84 < low < 0.88 and 0.92 < high < 0.96


def test_verdict_met_missed_and_undecided():
    targets, probabilities = known_predictions()  # 180 of 200 right: 95% CI about 0.85-0.94
    met = judge(parse_target("accuracy>=0.8"), targets, probabilities, resamples=200)
    assert met.verdict == "met" and met.score == pytest.approx(0.9) and 0.8 < met.ci_low < 0.9 < met.ci_high
    undecided = judge(parse_target("accuracy>=0.9"), targets, probabilities, resamples=200)
    assert undecided.verdict == "undecided" and undecided.ci_low < 0.9 < undecided.ci_high
    missed = judge(parse_target("accuracy>=0.97"), targets, probabilities, resamples=200)
    assert missed.verdict == "missed" and missed.gap == pytest.approx(0.07) and missed.ci_high < 0.97
    loss = judge(parse_target("val_loss<=0.1"), targets, probabilities, resamples=200)
    assert loss.verdict == "missed" and loss.gap == pytest.approx(loss.score - 0.1) and loss.interval == "bootstrap"


def right_of(n: int, right: int):
    """``n`` confident predictions of two classes, of which the first ``right`` are right."""
    targets = np.zeros(n, dtype=int)
    probabilities = np.tile([0.9, 0.1], (n, 1))
    probabilities[right:] = [0.1, 0.9]
    return targets, probabilities


def test_49_of_49_right_is_undecided_against_099_not_met():
    """A small validation split with no mistake claimed 1.000 (95% CI 1.000-1.000), met."""
    targets, probabilities = right_of(49, 49)
    verdict = judge(parse_target("accuracy>=0.99"), targets, probabilities)
    assert verdict.score == 1.0 and verdict.verdict == "undecided"
    assert verdict.ci_low == pytest.approx(0.927, abs=5e-4) and verdict.ci_high == 1.0
    assert verdict.interval == "Clopper-Pearson" and verdict.examples == 49


def test_150_of_153_gives_the_exact_interval():
    verdict = judge(parse_target("accuracy>=0.99"), *right_of(153, 150))
    assert (round(verdict.ci_low, 3), round(verdict.ci_high, 3)) == (0.944, 0.996)
    assert verdict.verdict == "undecided"
    assert describe(verdict) == "accuracy 0.9804 (95% CI 0.944-0.996) may be below 0.99: more data decides"


def test_a_degenerate_bootstrap_is_widened_and_says_so():
    """No mistake: every resample's F1 is 1.0; the interval still may not collapse to a point."""
    verdict = judge(parse_target("f1_macro>=0.95"), *right_of(30, 30))
    assert verdict.ci_high == 1.0 and verdict.ci_low < 0.9 and "degenerate" in verdict.interval
    assert verdict.verdict == "undecided"
