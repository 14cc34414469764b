"""The report of a finished run: its JSON, rendering it again, and the page in a real browser."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from automl.cli import cli

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_the_report_json_holds_the_runs_verdict_and_its_selection_score(image_run):
    report = json.loads((image_run / "report.json").read_text())
    journal = json.loads((image_run / "journal.json").read_text())
    final = journal["stages"]["finalise"]["result"]["verdict"]  # on the test split
    selection = journal["stages"]["verdict"]["result"]  # the chosen trial on validation
    assert report["verdict"]["judged_on"] == final["split"] == "test"
    assert report["verdict"]["score"] == pytest.approx(final["score"])
    assert report["verdict"]["selection_score"] == pytest.approx(selection["score"])
    assert report["verdict"]["verdict"] == final["verdict"] == "met"
    assert report["test_metrics"]["test_accuracy"] == pytest.approx(final["score"])
    assert len(report["study"]["trials"]["flash"]) == 5
    assert set(report["study"]["importances"]) >= {"learning_rate"}  # 5 complete trials: importances exist
    # the errors by class are the judged model's, on the test split
    assert report["predictions_split"] == "test"
    assert sum(map(sum, report["confusion"]["matrix"])) == report["data"]["test_size"] == final["examples"]
    assert report["run"]["command"].startswith("automl run --task image_classification --data ")


def test_automl_report_renders_again(image_run):
    (image_run / "report.html").unlink()
    result = CliRunner().invoke(cli, ["report", str(image_run)])
    assert result.exit_code == 0, result.output
    html = (image_run / "report.html").read_text()
    assert "Target MET: accuracy&gt;=0" in html and "http://" not in html and "https://" not in html  # offline


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),  # CI must have them: there it fails instead
    reason="needs Debian's chromium and chromium-driver (make test installs them; run `make browser` as root)",
)
@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(image_run, tmp_path):
    from automl.report.browser import screenshot

    shot = tmp_path / "report.png"
    page = screenshot(image_run / "report.html", shot)
    assert page.console_errors == []
    assert page.images > 5 and page.broken_images == []
    assert "Target MET" in page.text
    assert shot.stat().st_size > 20_000


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (make test installs them; run `make browser` as root)",
)
@pytest.mark.slow
def test_at_1300px_cards_hold_long_file_names_and_tables_keep_their_height(image_run, tmp_path):
    """A report whose mistakes and label doubts are photos with camera-roll file names, opened at
    1300 px: no card or cell spills its text, and the per-class table beside the confusion matrix is
    as tall as its rows, not stretched to the figure's height."""
    import pandas as pd

    from automl.report import write_report
    from automl.report.browser import screenshot

    run = tmp_path / image_run.name
    shutil.copytree(image_run, run)
    frame = pd.read_csv(run / "predictions_test.csv", keep_default_na=False)
    labels = sorted(set(frame["true"]))
    photos = tmp_path / "photos from a phone backup folder"
    photos.mkdir()
    doubts = []
    for row in range(min(4, len(frame))):  # the most confident mistakes, each a photo with a long name
        long = photos / f"IMG_20261207_101530_{row}_{'BURST' * 12}_COVER_HDR_portrait.png"
        shutil.copy(frame.loc[row, "id"], long)
        wrong = next(label for label in labels if label != frame.loc[row, "true"])
        frame.loc[row, ["id", "predicted", "confidence"]] = [str(long), wrong, 0.97 - row / 100]
        doubts.append({"input": str(long), "split": "train", "given": frame.loc[row, "true"], "suggested": wrong,
                       "p_given": 0.03, "p_suggested": 0.95})  # fmt: skip
    frame.to_csv(run / "predictions_test.csv", index=False)
    inspection = json.loads((run / "inspection.json").read_text())
    inspection["label_doubts"] = {"found": doubts, "backbone": "test_resnet", "examples": 40, "trial": 0}
    (run / "inspection.json").write_text(json.dumps(inspection))
    write_report(run)

    page = screenshot(run / "report.html", tmp_path / "report.png", width=1300)
    assert "Most confident mistakes" in page.text and "BURSTBURST" in page.text  # the cards are there
    assert page.overflowing == [] and page.stretched == []


def test_the_report_shows_its_symbols_not_their_escaped_names(image_run):
    html = (image_run / "report.html").read_text()
    assert "&amp;plusmn;" not in html and "&amp;" + "amp;" not in html
