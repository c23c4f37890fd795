"""CI smoke of the join benchmark: `python -m loadtest.join --quick` for warmgw (strategy
warm), end to end (two simulator processes, the gateway, open-loop user load, report).
10 cold replicas join a warm fleet of 2 at once; what a user would notice is checked, not
timings: no user request reaches a cold replica, none fails, every newcomer ends up in
rotation, and the gateway never warms more replicas at once than warmup.max_concurrent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_join_quick_warm(tmp_path: Path) -> None:
    out = tmp_path / "join"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.join", "--quick", "--strategies", "warm",
         "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=80, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "## warmgw (warm)" in (out / "report.md").read_text()

    data = json.loads((out / "result.json").read_text())
    run = data["runs"]["warm"]
    s = run["summary"]
    assert s["status"] == "ok", s
    assert s["errors"] == 0, s["error_kinds"]
    assert s["user_cold_hits"] == 0 and s["paid_cold_in_log"] == 0, s
    assert s["warmup_cold_hits"] > 0  # the gateway paid the cold starts itself

    joined = s["join"]
    assert joined["replicas"] == data["params"]["join"] == 10
    assert joined["routable_at_end"] == joined["ready_at_end"] == 10, joined
    assert s["user_requests_newcomers"] > 0  # users reached the newcomers once warm
    served = {x["replica"] for x in run["samples"] if x["ok"]}
    assert {f"n{i:03d}" for i in range(10)} <= served

    w = s["warmup"]
    assert w["replicas_warmed"] >= 10
    assert 1 <= w["max_replicas_warming"] <= data["params"]["max_concurrent"], w
    assert s["phases"]["steady"]["requests"] > 0 and s["phases"]["during"]["requests"] > 0
