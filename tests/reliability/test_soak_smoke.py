"""The soak end to end, small: replicas and gateway in their own processes, a few thousand
mixed requests, no error, and the gateway ends with no more sockets or tasks than it began."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from loadtest import soak
from loadtest.procs import descendants


@pytest.mark.timeout(60)
def test_quick_soak_has_no_errors_and_no_fd_growth(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    t0 = time.monotonic()
    code = soak.main(["--quick", "--out", str(out)])
    assert time.monotonic() - t0 < 30
    results = json.loads(out.read_text())
    s, g = results["summary"], results["gateway"]
    assert code == 0, soak.verdict(results)
    assert s["errors"] == 0 and s["completed"] == s["requests"] == 3000
    assert set(s["mix"]) == {"chat/json", "chat/stream", "completions/json",
                             "completions/stream"}
    assert g["end"]["fds"] <= g["start"]["fds"] + soak.FD_SLACK
    assert g["end"]["fd_kinds"].get("socket", 0) <= g["start"]["fd_kinds"]["socket"] + 1
    assert g["end"]["tasks"] <= g["start"]["tasks"]
    assert g["peak_during_run"]["fds"] > g["start"]["fds"]  # it did hold connections
    assert descendants([os.getpid()]) == {os.getpid()}  # every child was stopped
