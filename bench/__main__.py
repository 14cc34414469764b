"""``python -m bench [--quick] [--only NAME] [--out results.json]``: run the benchmarks, print a table,
and write ``bench/results/<timestamp>.json``."""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

from bench import memory, pipeline_speed, quality, serve_load, training
from bench.common import Result

BENCHMARKS = {
    "image_overhead": training.image_overhead,
    "text_overhead": training.text_overhead,
    "data_pipeline": pipeline_speed.data_pipeline,
    "peak_memory": memory.peak_memory,
    "cli_latency": pipeline_speed.cli_latency,
    "serve_load": serve_load.serve_load,
    "digits_quality": quality.digits_quality,
    "ag_news_quality": quality.ag_news_quality,
    "clothing_quality": quality.clothing_quality,
    "sentiment_quality": quality.sentiment_quality,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats; under 5 minutes")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the results here")
    args = parser.parse_args()

    started = time.time()
    results = []
    for name in args.only or BENCHMARKS:
        print(f"... {name}", flush=True)
        t0 = time.time()
        try:
            result = BENCHMARKS[name](args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            result = Result(name, None, "error", {}, "", False, {"error": f"{type(exc).__name__}: {exc}"})
        result.details["seconds"] = round(time.time() - t0, 1)
        results.append(result)
        print(f"    {result.name}: {result.value} ({result.target}) in {result.details['seconds']}s", flush=True)

    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "results": [r.as_dict() for r in results],
    }
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"]
    if args.out:
        paths.append(args.out)
    for path in paths:
        path.write_text(json.dumps(report, indent=2) + "\n")
    _table(results)
    print(f"total {report['seconds']:.0f}s; results in {', '.join(map(str, paths))}")


def _table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="benchmarks (each against a reference measured in this run)", title_justify="left")
    for column in ("benchmark", "value", "target", "met", "reference"):
        table.add_column(column)
    for r in results:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        reference = ", ".join(f"{k}={v}" for k, v in r.reference.items() if not isinstance(v, list))
        value = "-" if r.value is None else f"{r.value}"
        if r.details.get("automl_accuracy") is not None:  # a quality benchmark: held-out beside selection
            low, high = r.details["automl_ci95"]
            reference = (
                f"automl={r.details['automl_accuracy']} [{low}-{high}] on {r.details['test_size']} held out "
                f"(selection {r.details['selection_accuracy']}); {reference}"
            )
        if r.details.get("skipped"):
            reference = f"skipped: {r.details['skipped']}"
        if r.details.get("error"):
            reference = f"error: {r.details['error']}"
        table.add_row(r.name, value, r.target, met, reference)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
