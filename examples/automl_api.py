"""The whole automl run from Python: fit, leaderboard, evaluate, predict, load. Runs offline.

python examples/automl_api.py                  # on generated digits, a 90-second budget
python examples/automl_api.py --data ./imgs    # on your own folder-per-class images

The same run as `automl run --task image_classification --data DIR --target "accuracy>=0.9"`: the
same run folder, report and MLflow model; here the results are Python objects.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from make_digits import write_digits

from automl import AutoML


def demo(data: Path, new_data: list[Path], labelled: Path, **options) -> AutoML:
    """Fit on ``data``, show what the run gives, and predict ``new_data`` with the run loaded again."""
    # 1. The run: baseline, tuning, the verdict on a test split no trial saw, escalation if missed.
    run = AutoML("image_classification", "accuracy>=0.9", **options).fit(data)
    verdict = run.verdict
    print(
        f"{verdict.verdict}: {verdict.metric} {verdict.score:.4f} (95% CI {verdict.ci_low:.3f}-{verdict.ci_high:.3f})"
    )
    print(f"on {verdict.examples} {verdict.split} examples, {verdict.tier} tier; report: {run.report_path}")

    # 2. Every trial of both tiers, as study.csv lists them.
    board = run.leaderboard()
    print(board[["tier", "number", "state", "score", "seconds"]].to_string(index=False))

    # 3. Labelled data judged against the target, as `automl evaluate` does.
    scores = run.evaluate(labelled)
    print(f"evaluate on {labelled}: {scores['verdict']['verdict']}, {scores['verdict']['score']:.4f}")

    # 4. Later, elsewhere: the run folder is all a model needs.
    again = AutoML.load(run.run_dir)
    print(again.predict(new_data).to_string(index=False))
    return run


def set_aside(folder: Path, unseen: Path, every: int = 7) -> list[Path]:
    """Move every ``every``-th file of each class folder to ``unseen/<class>/``: examples the run never
    reads, for ``evaluate`` and ``predict``. Returns the moved files."""
    moved = []
    for label in sorted(p for p in folder.iterdir() if p.is_dir()):
        (unseen / label.name).mkdir(parents=True, exist_ok=True)
        for file in sorted(label.iterdir())[::every]:
            moved.append(file.rename(unseen / label.name / file.name))
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder with one sub-folder per class (a seventh is set aside)")
    parser.add_argument("--time-budget", default="90s")
    parser.add_argument("--output", default="runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="automl-api-"))
    folder = work / "train"
    if args.data is None:
        write_digits(folder, size=64)
    else:
        import shutil

        shutil.copytree(args.data, folder)
    unseen = set_aside(folder, work / "unseen")
    demo(folder, unseen[:5], work / "unseen", time_budget=args.time_budget, output=args.output)


if __name__ == "__main__":
    main()
