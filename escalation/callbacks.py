"""Callbacks from the workflow: a webhook told when a run starts, when each stage ends, and when it ends.

The body is Slack-compatible (``{"text": ...}``) with the details beside it. A hook that is down,
slow or answering errors is retried a little, then given up on with a warning: it never fails a run.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

RUN_START = "run_start"
STAGE_END = "stage_end"
RUN_END = "run_end"


class WebhookNotifier:
    def __init__(self, url: str, timeout: float = 5.0, retries: int = 1, backoff: float = 0.5, run: str = ""):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.run = run
        self.failures = 0

    def run_started(self, **details) -> bool:
        return self.post(RUN_START, f"automl run {self.run} started", **details)

    def stage_finished(self, stage: str, summary: str = "", **details) -> bool:
        text = f"automl run {self.run}: stage {stage} finished" + (f": {summary}" if summary else "")
        return self.post(STAGE_END, text, stage=stage, **details)

    def run_finished(self, verdict: str, summary: str = "", **details) -> bool:
        text = f"automl run {self.run} finished: {verdict}" + (f" ({summary})" if summary else "")
        return self.post(RUN_END, text, verdict=verdict, **details)

    def post(self, event: str, text: str, **details) -> bool:
        """POST the event; True when the hook answered 2xx. Never raises."""
        body = json.dumps({"text": text, "event": event, "run": self.run, **details}, default=str).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        last_error = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        return True
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.failures += 1
        log.warning("The webhook %s did not take the %s event (%s); the run goes on.", self.url, event, last_error)
        return False
