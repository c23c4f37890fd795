"""A one-line progress bar on stderr (rewritten with \\r on a terminal; otherwise a line
every few seconds), updated by a background task while the load runs."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

from loadtest.workload import Load

WIDTH = 24
EVERY_TTY = 0.25  # s between two redraws on a terminal
EVERY_LOG = 5.0  # s between two lines otherwise


class Progress:
    def __init__(self, scenario: str, expected: float, out: TextIO = sys.stderr,
                 enabled: bool = True, after_event: float = 0.0) -> None:
        self.scenario = scenario
        self.planned = expected  # s of load per strategy, for the bar
        self.expected = expected
        # s of load from the event on: a balancer whose initial replicas ramp by time
        # delays the event, and the bar's end moves with it
        self.after_event = after_event
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty()
        self.label = ""
        self.what = ""
        self.load: Load | None = None
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    def start(self, strategy: str, i: int, n: int) -> None:
        self.label = f"{self.scenario} {i + 1}/{n} {strategy}"
        self._t0 = time.monotonic()
        self.expected = self.planned
        self.what = "starting"
        self._draw()

    def phase(self, what: str) -> None:
        self.what = what
        if what == "event" and self.load is not None:
            self.expected = max(self.planned, self.load.now() + self.after_event)
        if not self.tty:
            self._draw()

    def attach(self, load: Load) -> None:
        self.load = load
        self._task = asyncio.create_task(self._loop())

    def detach(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.load = None

    def done(self, status: str, note: str) -> None:
        if not self.enabled:
            return
        took = time.monotonic() - self._t0
        end = f" ({note})" if note else ""
        self._write(f"{self.label}: {status} in {took:.0f} s{end}", final=True)

    async def _loop(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self._draw()
                await asyncio.sleep(EVERY_TTY if self.tty else EVERY_LOG)

    def _draw(self) -> None:
        if not self.enabled:
            return
        load = self.load
        if load is None:
            self._write(f"{self.label}: {self.what}")
            return
        t = load.now()
        filled = min(WIDTH, int(WIDTH * t / self.expected)) if self.expected > 0 else 0
        bar = "#" * filled + "-" * (WIDTH - filled)
        self._write(f"{self.label} |{bar}| {t:5.1f}/{self.expected:.0f} s {self.what:<9} "
                    f"req {len(load.samples)} err {load.errors} inflight {load.inflight}")

    def _write(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()
