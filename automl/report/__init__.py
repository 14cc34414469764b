"""The run report: ``report.html`` (one self-contained page, plots embedded) and ``report.json``
(the same facts for machines), written at the end of every run and by ``automl report RUN_DIR``."""

from __future__ import annotations

import json
from pathlib import Path

from automl.report.facts import collect

__all__ = ["collect", "write_report"]


#: the label doubts the report shows (inspection.json lists up to automl.flash.doubts.MAX_DOUBTS)
SHOWN_DOUBTS = 12


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Render the report of ``run_dir``; returns the paths of report.html and report.json."""
    import jinja2

    from automl.report import plots

    run_dir = Path(run_dir)
    facts = collect(run_dir)
    verdict = facts["verdict"]
    from automl.target import parse_target

    target = parse_target(verdict["target"])
    figures = {}
    if facts["data"].get("class_counts"):
        figures["class_counts"] = plots.class_counts(facts["data"]["class_counts"])
    if facts["study"]["trials"]:
        figures["history"] = plots.history(facts["study"]["trials"], target.metric, target.maximize, target.value)
    importances = {k: v for k, v in facts["study"]["importances"].items() if not k.startswith("_")}
    if importances:
        figures["importances"] = plots.importances(importances)
    curves = {k: v for k, v in facts["learning_curves"].items() if not k.startswith("_")}
    if curves:
        figures["curves"] = plots.learning_curves(curves, target.metric)
    if facts["calibration"].get("reliability_after"):
        figures["reliability"] = plots.reliability(facts["calibration"])
    if "confusion" in facts:
        figures["confusion"] = plots.confusion(facts["confusion"]["labels"], facts["confusion"]["matrix"])
    thumbs, doubt_thumbs, looked = [], [], []
    doubts = (facts["data"].get("label_doubts") or {}).get("found", [])[:SHOWN_DOUBTS]
    explained = {row["input"]: row for row in facts["explanations"].get("rows", [])}
    if facts["run"]["task"] == "image_classification":
        # a mistake's card shows where the model looked (its Grad-CAM overlay) when it was explained
        thumbs = [plots.thumbnail(explained.get(m["id"], {}).get("file") or m["id"]) for m in facts.get("mistakes", [])]
        doubt_thumbs = [plots.thumbnail(d["input"]) for d in doubts]
        looked = [
            {**row, "image": plots.thumbnail(row["file"], size=128)}
            for row in explained.values()
            if row.get("kind") == "right" and row.get("file")
        ]
    for mistake in facts.get("mistakes", []):
        row = explained.get(mistake.get("text") or mistake["id"], {})
        mistake["explained"] = bool(row.get("file") or row.get("tokens"))
        mistake["tokens"] = row.get("tokens")

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.ChainableUndefined
    )
    html = environment.get_template("report.html.j2").render(
        f=facts, p=figures, thumbs=thumbs, doubts=doubts, doubt_thumbs=doubt_thumbs, looked=looked
    )
    html_path, json_path = run_dir / "report.html", run_dir / "report.json"
    for path, text in ((html_path, html), (json_path, json.dumps(facts, indent=2, default=str) + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return html_path, json_path
