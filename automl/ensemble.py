"""Ensembles: Caruana's greedy selection with replacement over candidates' predictions on the
selection split, kept only when the gain is more than that split can resolve; and the TF-IDF +
logistic-regression member a text ensemble can add in about a second.

>>> weights = caruana(probabilities, targets, "val_accuracy", maximize=True)   # {candidate: weight}
>>> decision = decide(probabilities, targets, "val_accuracy", maximize=True, seed=0)
>>> decision.kept, decision.gain, decision.resolution, decision.weights

Two ensembles are weighed: the greedy one, and an equal-weight average of a few diverse members
given by the caller (``equal``: one model per backbone, and the TF-IDF model). Greedy weights fitted
on a few hundred examples are noisy: on the shared garment photos, over eight repeated splits of the
training photos, equal weights over one head per backbone scored 0.864 on the held-out part against
the greedy ensemble's 0.857 and the single best head's 0.834.

The keep rule is honest about the selection: the split is cut in two, the greedy weights (and, for
the comparison, the best single candidate) are chosen on one half and scored on the other, both ways
(equal weights are chosen on nothing); the ensemble with the larger cross-fitted gain over the
cross-fitted single model is kept when that gain is more than :data:`RESOLVE_Z` standard errors of
the paired difference (a bootstrap over the examples).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from automl import metrics as m

#: rounds of greedy selection (each adds one member, repeats allowed): AutoGluon's default is 25
ROUNDS = 25
#: the gain must exceed this many standard errors of the paired difference on the selection split
RESOLVE_Z = 1.0
#: fewer selection examples than this cannot resolve a gain: no ensemble
MIN_EXAMPLES = 30
BOOTSTRAP = 300

TFIDF_MEMBER = "tfidf"
#: how an ensemble's weights were found: Caruana's greedy selection, or equal weights over given members
GREEDY, EQUAL = "greedy selection", "equal weights"
TFIDF_JSON, TFIDF_ARRAYS = "tfidf.json", "tfidf.npz"


def fast_score(metric: str, targets: np.ndarray, probabilities: np.ndarray) -> float:
    """``automl.target.score``, with accuracy and loss in numpy (the greedy loop scores thousands)."""
    if metric == m.VAL_ACCURACY:
        return float((probabilities.argmax(axis=1) == targets).mean())
    if metric == m.VAL_LOSS:
        return float(-np.log(np.clip(probabilities[np.arange(len(targets)), targets], 1e-12, None)).mean())
    from automl.target import score

    return score(metric, targets, probabilities)


def caruana(
    probabilities: dict[str, np.ndarray], targets: np.ndarray, metric: str, maximize: bool, rounds: int = ROUNDS
) -> dict[str, float]:
    """Greedy ensemble selection with replacement (Caruana et al., 2004): start from the best single
    candidate, add whichever candidate (again, possibly) improves the averaged probabilities most;
    the weights are how often each was picked. Stops early when no addition helps."""
    names = list(probabilities)
    sign = 1.0 if maximize else -1.0

    def value(p: np.ndarray) -> float:
        return sign * fast_score(metric, targets, p)

    first = max(names, key=lambda n: value(probabilities[n]))
    picked, total = [first], probabilities[first].astype(np.float64).copy()
    best = value(total)  # of total / len(picked), the current ensemble
    for _ in range(rounds - 1):
        k = len(picked)
        scored = [(value((total + probabilities[n]) / (k + 1)), n) for n in names]
        gain, name = max(scored, key=lambda item: item[0])
        if gain <= best:
            break
        picked.append(name)
        total = total + probabilities[name]
        best = gain
    counts = Counter(picked)
    return {name: counts[name] / len(picked) for name in names if counts[name]}


def blend(probabilities: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    return np.asarray(sum(weight * probabilities[name] for name, weight in weights.items()))


@dataclass
class Decision:
    """What the ensemble stage decided, and on what evidence (all on the selection split)."""

    weights: dict[str, float]  # on the whole split
    kept: bool
    why: str
    method: str = GREEDY  # GREEDY or EQUAL: how the weights were found
    ensemble_score: float | None = None  # the weights' score on the whole split (greedy ones were chosen there)
    crossfit_ensemble: float | None = None  # weights chosen on one half, scored on the other, both ways
    crossfit_single: float | None = None  # the single best, chosen and scored likewise
    gain: float | None = None  # crossfit_ensemble - crossfit_single, in the better direction
    resolution: float | None = None  # RESOLVE_Z standard errors of that gain
    single_scores: dict[str, float] = field(default_factory=dict)  # each candidate on the whole split


def decide(
    probabilities: dict[str, np.ndarray],
    targets: np.ndarray,
    metric: str,
    maximize: bool,
    seed: int = 0,
    equal: list[str] | None = None,
) -> Decision:
    """The ensemble of these candidates, and whether to keep it (see the module). ``equal``: the
    candidates of the equal-weight ensemble (at least two of them; None or fewer: greedy only)."""
    targets = np.asarray(targets)
    singles = {name: fast_score(metric, targets, p) for name, p in probabilities.items()}
    if len(probabilities) < 2:
        return Decision(dict.fromkeys(probabilities, 1.0), False, "only one candidate", single_scores=singles)
    greedy_weights = caruana(probabilities, targets, metric, maximize)
    equal_members = list(dict.fromkeys(equal or []))
    options = {GREEDY: greedy_weights, EQUAL: dict.fromkeys(equal_members, 1.0 / max(len(equal_members), 1))}
    options = {method: weights for method, weights in options.items() if len(weights) >= 2}
    if not options:
        only = next(iter(greedy_weights))
        why = f"the greedy selection kept {only} alone"
        return Decision({only: 1.0}, False, why, GREEDY, singles[only], single_scores=singles)
    if len(targets) < MIN_EXAMPLES:
        method, weights = next(iter(options.items()))
        whole = fast_score(metric, targets, blend(probabilities, weights))
        why = f"{len(targets)} selection examples cannot resolve a gain (at least {MIN_EXAMPLES})"
        return Decision(weights, False, why, method, whole, single_scores=singles)
    greedy, single = _crossfit(probabilities, targets, metric, maximize, seed)
    sign = 1.0 if maximize else -1.0
    crossfitted = {GREEDY: greedy, **({EQUAL: blend(probabilities, options[EQUAL])} if EQUAL in options else {})}
    gains = {
        method: sign * (fast_score(metric, targets, crossfitted[method]) - fast_score(metric, targets, single))
        for method in options
    }
    method = max(gains, key=lambda key: (gains[key], key == EQUAL))  # a tie: equal weights, fitted on nothing
    weights, ensemble, gain = options[method], crossfitted[method], gains[method]
    resolution = _resolution(targets, ensemble, single, metric, sign, seed)
    kept = gain > resolution and gain > 0
    why = _why(kept, gain, resolution, metric.removeprefix("val_"))
    return Decision(
        weights,
        kept,
        why,
        method,
        fast_score(metric, targets, blend(probabilities, weights)),
        fast_score(metric, targets, ensemble),
        fast_score(metric, targets, single),
        gain,
        resolution,
        singles,
    )


def paired_gain(targets, challenger, incumbent, metric: str, maximize: bool, seed: int = 0) -> tuple[float, float]:
    """(the challenger's gain over the incumbent on these predictions, in the better direction; the
    RESOLVE_Z bootstrap standard errors of that gain): a gain no larger is what the examples cannot
    tell from noise."""
    sign = 1.0 if maximize else -1.0
    gain = sign * (fast_score(metric, targets, challenger) - fast_score(metric, targets, incumbent))
    return gain, _resolution(targets, challenger, incumbent, metric, sign, seed)


def _resolution(targets, ensemble, single, metric: str, sign: float, seed: int) -> float:
    """RESOLVE_Z bootstrap standard errors of the ensemble's gain over the single model."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, len(targets), len(targets))
        differences.append(
            sign * (fast_score(metric, targets[rows], ensemble[rows]) - fast_score(metric, targets[rows], single[rows]))
        )
    return RESOLVE_Z * float(np.std(differences, ddof=1))


def _why(kept: bool, gain: float, resolution: float, name: str) -> str:
    if kept:
        why = f"it beats the best single model by {gain:.4f} {name} (cross-fitted), more than the {resolution:.4f}"
    elif gain <= 0:
        why = f"it does not beat the best single model (cross-fitted gain {gain:+.4f} {name})"
    else:
        why = f"its gain of {gain:.4f} {name} (cross-fitted) is within the {resolution:.4f}"
    return why + (" these predictions resolve" if gain > 0 else "")


def _crossfit(probabilities, targets, metric, maximize, seed) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble, single-best) probabilities of every example, each half's from choices made on the
    other half."""
    from automl.flash.heads import fold_indices

    ensemble = np.zeros_like(next(iter(probabilities.values())), dtype=np.float64)
    single = np.zeros_like(ensemble)
    sign = 1.0 if maximize else -1.0
    for test in fold_indices(targets, 2, seed):
        train = np.setdiff1d(np.arange(len(targets)), test)
        part = {name: p[train] for name, p in probabilities.items()}
        weights = caruana(part, targets[train], metric, maximize)
        ensemble[test] = blend({n: p[test] for n, p in probabilities.items()}, weights)
        best = max(part, key=lambda n: sign * fast_score(metric, targets[train], part[n]))
        single[test] = probabilities[best][test]
    return ensemble, single


# --------------------------------------------------------------------------- the TF-IDF member
class TfidfMember:
    """TF-IDF of word 1-2 grams and a logistic regression (scikit-learn), stored as JSON and numpy
    arrays, never as a pickle: loading it runs no code from the run folder."""

    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray, labels):
        self.vocabulary, self.idf, self.coef, self.intercept = vocabulary, idf, coef, intercept
        self.labels = list(labels)

    @classmethod
    def fit(cls, texts: list[str], targets, labels: list[str], seed: int = 0) -> TfidfMember:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        x = vectorizer.fit_transform(texts)
        targets = np.asarray(targets)
        folds = max(2, min(3, int(np.bincount(targets)[np.bincount(targets) > 0].min())))
        search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": [0.3, 1.0, 3.0, 10.0, 30.0]}, cv=folds)
        model = search.fit(x, targets).best_estimator_
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: scikit-learn keeps one row; as two softmax rows, the same probabilities
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        full = np.zeros((len(labels), coef.shape[1]))
        bias = np.full(len(labels), -1e4)  # a class absent from training is never predicted
        full[model.classes_], bias[model.classes_] = coef, intercept
        vocabulary = {term: int(index) for term, index in vectorizer.vocabulary_.items()}
        return cls(vocabulary, vectorizer.idf_, full, bias, labels)

    @classmethod
    def out_of_fold(cls, texts: list[str], targets, labels: list[str], seed: int = 0) -> np.ndarray:
        """Each text's probabilities from the member fitted on the other folds (``flash.heads.fold_indices``,
        the folds the heads are cross-validated on)."""
        from automl.flash.heads import CV_FOLDS, fold_indices

        targets = np.asarray(targets)
        found = np.zeros((len(texts), len(labels)), dtype=np.float64)
        for test in fold_indices(targets, CV_FOLDS, seed):
            train = np.setdiff1d(np.arange(len(texts)), test)
            member = cls.fit([texts[i] for i in train], targets[train], labels, seed)
            found[test] = member.probabilities([texts[i] for i in test])
        return found

    def _vectorizer(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=self.vocabulary)
        vectorizer.idf_ = self.idf
        return vectorizer

    def probabilities(self, texts: list[str]) -> np.ndarray:
        x = self._vectorizer().transform(list(texts))
        logits = x @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TFIDF_JSON).write_text(json.dumps({"labels": self.labels, "vocabulary": self.vocabulary}))
        np.savez(folder / TFIDF_ARRAYS, idf=self.idf, coef=self.coef, intercept=self.intercept)

    @classmethod
    def load(cls, folder: Path) -> TfidfMember:
        stored = json.loads((folder / TFIDF_JSON).read_text())
        arrays = np.load(folder / TFIDF_ARRAYS, allow_pickle=False)
        return cls(stored["vocabulary"], arrays["idf"], arrays["coef"], arrays["intercept"], stored["labels"])
