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


@pytest.mark.timeout(100)
def test_learned_warmup_quick_newcomer_pays_nothing_for_mixed_traffic(tmp_path: Path) -> None:
    """The learned_warmup scenario in --quick mode for warmgw alone (about 35 s): mixed
    traffic with structured outputs, tools, logprobs, n and LoRA adapters; the third
    replica joins cold, the gateway warms it with what it learned, and no user request on
    it pays a first use, by the replica's own request log. (That the same newcomer makes
    users pay without warmgw is the full run's, docs/benchmarks.md.)"""
    out = tmp_path / "learned"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "learned_warmup", "--quick",
         "--strategies", "warm", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out / "result.json").read_text())
    warm = data["strategies"]["warm"]
    sm = warm["summary"]
    assert sm["status"] == "ok" and sm["errors"] == 0, sm
    assert sm["newcomer_cold"]["requests"] == 0, sm["newcomer_cold"]
    assert sm["cold_hits"] == 0, sm
    # the newcomer served users, features and adapters among them
    mixes = {x.get("mix") for x in warm["samples"] if x["replica"] == "r2"}
    assert len(mixes) >= 3 and "plain" in mixes, mixes
    # it was cold: its warmup paid first uses of every kind the users send
    r2 = warm["sim"]["end"]["r2"]
    assert warm["sim"]["event"]["r2"]["warmup_requests"] == 0
    assert r2["warmup_cold_hits"] > 0
    kinds = {f.split(":")[0] for f in r2["warm_features"]}
    assert {"grammar", "tools", "logprobs", "n"} <= kinds, r2["warm_features"]
    assert sorted(r2["loaded_adapters"]) == ["chat-lora", "sql-lora"]
    assert "## warm" in (out / "report.md").read_text()
