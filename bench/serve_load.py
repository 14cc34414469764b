"""``automl serve`` under hostile load: 200 requests from 16 concurrent clients, mixing good images,
files that are not images and decompression bombs (small PNGs that claim 30000x30000 pixels, past
PIL's own limit, or 8000x8000, below it: 64 megapixels that PIL alone would decode).
No answer may be a 5xx, each kind must get its status (200, 400, 413), and the server's memory must
stay bounded: its peak RSS is reported against its RSS once warm, with p50/p99 latency."""

from __future__ import annotations

import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parents[1]
REQUESTS, CLIENTS = 200, 16
#: share of each kind of upload, and the status each must get
MIX = {"good": (0.6, 200), "not_an_image": (0.2, 400), "bomb": (0.2, 413)}
#: the server may grow by this much over its warm RSS (decoding one bomb would take 900 MB)
RSS_GROWTH_LIMIT_MB = 200


def serve_load(quick: bool) -> Result:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import TINY_IMAGE_BACKBONE, decompression_bomb, make_image_folder

    work = Path(tempfile.mkdtemp(prefix="automl-bench-serve-"))
    images = make_image_folder(work / "images", per_class=8)
    run_dir = _tiny_model(images, work / "runs", TINY_IMAGE_BACKBONE)
    bodies = {
        "good": [p.read_bytes() for p in sorted(images.rglob("*.png"))],
        "not_an_image": [b"", b"plain text, not an image", b"\x89PNG\r\n\x1a\n but then nothing"],
        "bomb": [decompression_bomb(), decompression_bomb(8000, 8000)],
    }
    rng = random.Random(0)
    kinds = rng.choices(list(MIX), weights=[share for share, _ in MIX.values()], k=REQUESTS)
    uploads = [(kind, rng.choice(bodies[kind])) for kind in kinds]

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "automl", "serve", str(run_dir), "--port", str(port), "--max-body-mb", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server)
        for _ in range(3):  # warm: lazy imports, the first batch through the model
            _post(url, "warm.png", bodies["good"][0])
        warm_mb = _proc_mb(server.pid, "VmRSS")
        sampler = _RssSampler(server.pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda upload: _timed_post(url, *upload), uploads))
        wall = time.perf_counter() - started
        sampler.stop()
        peak_mb = _proc_mb(server.pid, "VmHWM")
        alive = _post(url, "after.png", bodies["good"][0])[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    statuses = [status for _, status, _ in answers]
    latencies = [seconds for _, _, seconds in answers]
    wrong = [(kind, status) for kind, status, _ in answers if status != MIX[kind][1]]
    server_errors = sum(1 for status in statuses if status >= 500)
    growth = peak_mb - warm_mb
    met = server_errors == 0 and not wrong and alive and growth <= RSS_GROWTH_LIMIT_MB
    by_kind = {
        kind: {
            "requests": sum(1 for k, _, _ in answers if k == kind),
            "p50_s": round(_percentile([s for k, _, s in answers if k == kind], 50), 4),
            "p99_s": round(_percentile([s for k, _, s in answers if k == kind], 99), 4),
        }
        for kind in MIX
    }
    return Result(
        "serve under load: 200 requests, 16 clients, good images, non-images and bombs",
        round(_percentile(latencies, 99), 4),
        "seconds",
        {"rss_when_warm_mb": round(warm_mb, 1)},
        f"no 5xx, each kind its status, peak RSS <= warm + {RSS_GROWTH_LIMIT_MB} MB",
        met,
        {
            "p50_s": round(_percentile(latencies, 50), 4),
            "p99_s": round(_percentile(latencies, 99), 4),
            "by_kind": by_kind,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "server_errors_5xx": server_errors,
            "wrong_statuses": wrong[:10],
            "peak_rss_mb": round(peak_mb, 1),
            "peak_rss_sampled_during_load_mb": round(sampler.peak_mb, 1),
            "rss_growth_mb": round(growth, 1),
            "requests_per_s": round(REQUESTS / wall, 1),
            "clients": CLIENTS,
            "still_serving_after": alive,
        },
    )


def _tiny_model(images: Path, output: Path, backbone: str) -> Path:
    """A run folder with a trained tiny model (random-weight timm test net, 32 px): seconds to fit."""
    fit = [sys.executable, "-m", "automl", "fit", "--task", "image_classification", "--data", str(images)]
    options = ["--output", str(output), "--backbone", backbone, "--no-pretrained", "--image-size", "32"]
    options += ["--epochs", "1", "--batch-size", "8", "--accelerator", "cpu", "--strategy", "no_freeze", "-q"]
    subprocess.run([*fit, *options], cwd=ROOT, check=True, capture_output=True)
    (run_dir,) = output.iterdir()
    return run_dir


def _timed_post(url: str, kind: str, body: bytes) -> tuple[str, int, float]:
    started = time.perf_counter()
    status, _ = _post(url, f"{kind}.png", body)
    return kind, status, time.perf_counter() - started


def _post(url: str, filename: str, data: bytes) -> tuple[int, object]:
    import urllib3

    body, content_type = urllib3.encode_multipart_formdata({"file": (filename, data, "application/octet-stream")})
    headers = {"Content-Type": content_type}
    request = urllib.request.Request(f"{url}/predict", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"automl serve did not start (exit status {server.poll()})") from None
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {key}")


class _RssSampler:
    """The server's RSS every 20 ms during the load (VmHWM alone would not say when the peak came)."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb, self._done = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.02):
            self.peak_mb = max(self.peak_mb, _proc_mb(self.pid, "VmRSS"))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
