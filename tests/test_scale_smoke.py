"""The scale benchmark end to end, quick: N simulated replicas behind the gateway for
N = 2, 100 and 1,000 (each N's simulator and gateway in their own processes), and the
registry/picker under churn in process. Shape and success only, not timings."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

from loadtest import scale, scale_report
from loadtest.procs import descendants


def _fleets() -> tuple[int, ...]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    big = 1000 if hard == resource.RLIM_INFINITY or hard >= 8192 else 200
    return (2, 100, big)  # 1,000 replicas take ~3,000 sockets in the simulator


@pytest.mark.timeout(90)
def test_quick_run_measures_every_fleet_size_without_errors(tmp_path: Path) -> None:
    fleets = _fleets()
    out = tmp_path / "scale.json"
    t0 = time.monotonic()
    code = scale.main(["--quick", "--fleets", ",".join(map(str, fleets)), "--out", str(out)])
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 45
    results = json.loads(out.read_text())
    assert not results["meta"]["incomplete"]

    rows = results["gateway"]
    assert [r["n"] for r in rows] == list(fleets)
    for r in rows:
        assert r["errors"] == 0, r["error_samples"]
        assert r["requests"] == 150 and not r["truncated"]
        assert r["ready_after"] == r["n"] and r["ejected"] == 0  # all READY, none ejected
        assert r["rps"] > 0 and r["direct_rps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["cpu_us_per_req"] is not None and r["idle_cores"] >= 0
        assert r["gateway_fds"] > 0 and r["metrics_kib"] > 0 and r["ready_s"] > 0
        assert set(r["ratio"]) == set(scale_report.RATIOS)
        assert set(r["per_round"]) == {"0"} and len(r["net_cpu_us_per_req_ratio_rounds"]) == 1
        # watched under load: scraped, status read, the loop's longest step timed
        assert r["scrapes"] >= 1 and r["metrics_load_ms"] > 0 and r["status_load_ms"] > 0
        assert r["loop_max_ms"] is not None and 0 < r["loop_max_ms"] < 1000
        assert r["loop_steps"] > r["requests"] and r["loop_max_what"]
    assert rows[0]["ratio"]["rps"] == 1.0  # against the smallest fleet
    assert rows[0]["net_cpu_us_per_req_ratio_rounds"] == [1.0]
    assert rows[-1]["metrics_kib"] > rows[0]["metrics_kib"]  # a series per replica
    cells = results["gateway_cells"]
    assert sorted(c["n"] for c in cells) == sorted(fleets)
    assert all({run["target"] for run in c["runs"]} == {"direct", "gateway"} for c in cells)

    core = results["core"]["rows"]
    assert [r["n"] for r in core] == list(fleets)
    for r in core:
        assert r["pick_ready_us"] > 0 and r["pick_churn_us"] > 0 and r["changes_per_s"] > 0
        assert r["endpoints"] >= r["n"] - 1  # churn kept the fleet's size
        assert r["pod_event_us"] == pytest.approx(r["pod_apply_us"] + r["pod_snapshot_us"])
        assert set(r["ratio"]) == set(scale_report.CORE_RATIOS)
    assert descendants([os.getpid()]) == {os.getpid()}  # every child was stopped


def test_a_fleet_stays_about_its_size_and_keeps_changing() -> None:
    """The churn driver of part B: the fleet keeps moving, and never empties."""
    from loadtest import scale_core

    opts = scale_core.CoreOptions(fleets=(3,), rounds=1, picks=4000, ops=5)
    row = scale_core.measure(3, opts, seed=7)
    assert row["changes_per_s"] > 10
    assert 2 <= row["endpoints"] <= 4
