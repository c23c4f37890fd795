"""What a watcher of the gateway sees while it is loaded: /metrics scraped and the admin
status read every `every` seconds (as Prometheus and an operator's dashboard would), how
long each took, and the longest event-loop step the gateway reports (in thread CPU time,
`warmgw_loop_step_max_cpu_seconds`, present when it runs with WARMGW_LOOP_STEPS=1: the
longest step since the previous scrape).

    with Watcher(metrics_url, status_url, token, every=1.0) as w:
        ...load...
    w.summary()
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

_STEP = re.compile(rb'^warmgw_loop_step_max_cpu_seconds\{step="((?:[^"\\]|\\.)*)"\} (\S+)$',
                   re.M)
_STEPS = re.compile(rb"^warmgw_loop_steps_total (\S+)$", re.M)


def get(url: str, token: str | None = None, timeout: float = 30.0) -> tuple[bytes, float]:
    """The body of a GET and the seconds it took."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout) as r:
        body: bytes = r.read()
    return body, time.perf_counter() - t0


def loop_step(metrics: bytes) -> tuple[float, str, float] | None:
    """(longest step s, what ran, steps so far) from a /metrics body, or None."""
    m, n = _STEP.search(metrics), _STEPS.search(metrics)
    if m is None:
        return None
    return float(m.group(2)), m.group(1).decode(), float(n.group(1)) if n else 0.0


class Watcher:
    def __init__(self, metrics_url: str, status_url: str, token: str, every: float) -> None:
        self.metrics_url, self.status_url, self.token = metrics_url, status_url, token
        self.every = every
        self.metrics_s: list[float] = []
        self.status_s: list[float] = []
        self.longest: tuple[float, str] = (0.0, "")
        self.steps = (0.0, 0.0)  # loop steps counted at the start and at the end
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-watcher", daemon=True)

    def _scrape(self, timed: bool) -> None:
        body, took = get(self.metrics_url)
        step = loop_step(body)
        if timed:
            self.metrics_s.append(took)
        if step is not None:
            if timed and step[0] > self.longest[0]:
                self.longest = step[:2]
            self.steps = (self.steps[0] if timed else step[2], step[2])
        if timed:
            _, took = get(self.status_url, self.token)
            self.status_s.append(took)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._scrape(timed=True)
            except OSError as e:
                self.errors.append(str(e))

    def __enter__(self) -> Watcher:
        self._scrape(timed=False)  # the loop's longest step is counted from here
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if et is None:
            self._scrape(timed=True)  # the steps since the last scrape

    def summary(self) -> dict[str, Any]:
        return {
            "loop_max_ms": round(self.longest[0] * 1e3, 3) if self.steps[1] else None,
            "loop_max_what": self.longest[1],
            "loop_steps": int(self.steps[1] - self.steps[0]),
            "metrics_load_ms": round(statistics.median(self.metrics_s) * 1e3, 1),
            "metrics_load_max_ms": round(max(self.metrics_s) * 1e3, 1),
            "status_load_ms": round(statistics.median(self.status_s) * 1e3, 1),
            "status_load_max_ms": round(max(self.status_s) * 1e3, 1),
            "scrapes": len(self.metrics_s),
            "watch_errors": self.errors[:3],
        }
