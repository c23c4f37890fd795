"""CI smoke of the scenario runner: the scale_up scenario in --quick mode for warmgw
(strategy warm) and the naive round-robin baseline, end to end (simulator, gateway, load,
report). warmgw must keep every user request off the cold newcomer; round-robin must not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_scale_up_quick_warm_vs_round_robin(tmp_path: Path) -> None:
    out = tmp_path / "scale_up"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "scale_up", "--quick",
         "--strategies", "warm,round_robin", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=80, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("result.json", "report.md", "plot.png"):
        assert (out / name).stat().st_size > 0, name

    data = json.loads((out / "result.json").read_text())
    warm = data["strategies"]["warm"]["summary"]
    rr = data["strategies"]["round_robin"]["summary"]
    assert warm["status"] == "ok" and rr["status"] == "ok", (warm, rr)
    assert warm["cold_hits"] == 0, warm
    assert warm["warmup_cold_hits"] > 0  # the gateway paid the cold start itself
    assert rr["cold_hits"] > 0, rr
    for s in (warm, rr):
        assert s["requests"] > 200
        assert s["phases"]["during"]["requests"] > 100
    samples = data["strategies"]["round_robin"]["samples"]
    assert {"t", "lat", "ttfb", "ok", "replica"} <= set(samples[0])
    assert any(x["replica"] == "r2" for x in samples)  # the newcomer was in rotation
    report = (out / "report.md").read_text()
    assert "## warm" in report and "## round_robin" in report
