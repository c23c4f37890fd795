"""The benchmarks' Envoy + warmgw-as-EPP, end to end and tiny: the scenario runner's
strategy `warm_envoy` through a blue-green cutover (no user request on a cold replica, no
request or stream lost, the replicas told apart by the upstream Envoy reports), and the
overhead benchmark's target `envoy+epp` (Envoy's and the EPP's CPU each read apart)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import overhead
from loadtest.report import parts_table

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(100)
def test_cutover_through_envoy_cuts_nothing_and_hits_no_cold_replica(tmp_path: Path) -> None:
    out = tmp_path / "cutover"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "cutover", "--quick",
         "--strategies", "warm_envoy", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = json.loads((out / "result.json").read_text())["strategies"]["warm_envoy"]
    s = run["summary"]
    assert s["status"] == "ok", s
    assert s["cold_hits"] == 0 and s["errors"] == 0, s
    assert s["phases"]["during"]["requests"] > 100
    served = {x["replica"] for x in run["samples"] if x["ok"]}
    assert served == {"b0", "b1", "g0", "g1"}, served  # Envoy's upstream, named
    cut = [e for e in run["events"] if e["what"].startswith("cutover")]
    assert cut and "FAILED" not in cut[0]["note"], run["events"]
    after = [x for x in run["samples"] if x["t"] > cut[0]["t"] + 1.0]
    assert after and {x["replica"] for x in after} <= {"g0", "g1"}


@pytest.mark.timeout(60)
def test_overhead_reads_envoy_and_epp_cpu_apart(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    code = overhead.main(["--quick", "--requests", "20", "--concurrency", "2", "--peers", "",
                          "--out", str(out)])
    assert code == 0
    rows = {(r["mode"], r["target"]): r for r in json.loads(out.read_text())["summary"]}
    for mode in ("json", "stream"):
        row = rows[mode, "envoy+epp"]
        assert row["errors"] == 0 and row["requests"] == 20, row
        cpu = row["cpu_us_per_req"]
        assert cpu["target:envoy"] > 0 and cpu["target:epp"] > 0, cpu
        assert "added_p50_ms" in row and "cpu_vs_gateway" in row
    printed = capsys.readouterr().out
    assert parts_table(list(rows.values())) in printed
    assert "envoy cores per epp core" in printed
