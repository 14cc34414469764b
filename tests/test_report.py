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
