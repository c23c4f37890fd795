"""The benchmark's side of the load generator's protocol (see loadtest.loadgen)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from loadtest.procs import Child, ChildFailed

T = TypeVar("T")


class LoadGen:
    """One load-generator process, reused for every run."""

    def __init__(self, child: Child) -> None:
        assert child.proc.stdin is not None and child.proc.stdout is not None
        self.child = child
        self._buf = b""

    def measure(
        self, spec: dict[str, Any], probe: Callable[[], T], timeout: float
    ) -> tuple[dict[str, Any], T, T]:
        """Warm up, probe(), run the measured requests, probe(); each step within timeout."""
        self._send({"op": "run", **spec})
        warm = self._expect("warm", timeout)
        before = probe()
        self._send({"op": "go"})
        done = self._expect("done", timeout)
        after = probe()
        done["warmup_errors"] = warm["errors"]
        done["warmup_error_samples"] = warm["error_samples"]
        return done, before, after

    def quit(self) -> None:
        if self.child.alive():
            try:
                self._send({"op": "quit"})
                self.child.proc.wait(5.0)
            except (ChildFailed, subprocess.TimeoutExpired):
                pass  # Children.close() kills it

    def _send(self, obj: dict[str, Any]) -> None:
        stdin = self.child.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(obj).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            raise ChildFailed(f"load generator is gone:\n{self.child.tail()}") from None

    def _expect(self, event: str, timeout: float) -> dict[str, Any]:
        msg = self._line(timeout)
        if msg.get("event") != event:
            raise ChildFailed(f"load generator: expected {event}, got {str(msg)[:500]}")
        return msg

    def _line(self, timeout: float) -> dict[str, Any]:
        stdout = self.child.proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"load generator silent for {timeout} s:\n{self.child.tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise ChildFailed(f"load generator exited:\n{self.child.tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg
