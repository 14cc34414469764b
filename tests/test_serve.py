"""`automl serve`: the HTTP service predicts images and texts and answers bad input with 4xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import multipart, post, serving


@pytest.fixture
def service(request):
    """``automl serve`` in a subprocess on a loopback port; yields its base URL."""
    run_dir = request.getfixturevalue(request.param)
    with serving(run_dir, "--max-body-mb", "0.05") as (url, _):
        yield url


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.parametrize("service", ["image_run"], indirect=True)
def test_the_service_predicts_images_and_rejects_bad_input(service, image_run):
    image = next((Path(json.loads((image_run / "report.json").read_text())["run"]["data"])).rglob("*.png"))
    status, answer = post(f"{service}/predict", *multipart("file", image.name, image.read_bytes()))
    assert status == 200, answer
    labels = get(f"{service}/labels")["labels"]
    (prediction,) = answer["predictions"]
    assert prediction["label"] in labels and len(prediction["top_k"]) == 3 and prediction["id"] == image.name

    status, answer = post(f"{service}/predict", *multipart("file", "notes.txt", b"this is not an image"))
    assert status == 400 and "not a readable image" in answer["detail"]
    status, answer = post(f"{service}/predict", *multipart("file", "huge.png", b"\0" * 100_000))
    assert status == 413 and "larger than the limit" in answer["detail"]
    status, answer = post(f"{service}/predict", b'{"texts": ["hi"]}', "application/json")
    assert status == 400 and "multipart" in answer["detail"]
    assert get(f"{service}/health")["status"] == "ok"  # still up after the bad requests
    assert "/predict" in get(f"{service}/openapi.json")["paths"]


@pytest.mark.slow
@pytest.mark.parametrize("service", ["text_run"], indirect=True)
def test_the_service_predicts_texts(service):
    status, answer = post(
        f"{service}/predict", json.dumps({"texts": ["goal striker match", "bank stock"]}).encode(), "application/json"
    )
    assert status == 200, answer
    assert [p["label"] in ("finance", "sport") for p in answer["predictions"]] == [True, True]
    status, answer = post(f"{service}/predict", b"{not json", "application/json")
    assert status == 400
    assert get(f"{service}/health")["status"] == "ok"
