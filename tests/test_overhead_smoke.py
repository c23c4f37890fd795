"""The overhead benchmark end to end, tiny: a replica, the gateway and the load generator
in their own processes, both targets measured, no request failing; a peer that fails to
start is reported and the benchmark goes on (no real peer is needed)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from loadtest import overhead, peers
from loadtest.procs import descendants
from loadtest.stacks import parse, report
from loadtest.stats import Run, percentile, summarise
from loadtest.targets import Target


@pytest.mark.timeout(60)
def test_quick_run_measures_both_targets_without_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "broken-peer").write_text("#!/bin/sh\necho 'no such directive' >&2\nexit 1\n")
    (bindir / "broken-peer").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(peers.PEERS, "broken", peers.starter("broken", "broken-peer",
                                                             peers.haproxy))
    out = tmp_path / "overhead.json"
    t0 = time.monotonic()
    code = overhead.main(
        ["--quick", "--requests", "24", "--concurrency", "1,8", "--peers", "broken",
         "--out", str(out)]
    )
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 30
    results = json.loads(out.read_text())
    assert list(results["unavailable"]) == ["broken"]
    assert results["unavailable"]["broken"].startswith("failed to start: broken exited with 1")
    rows = results["summary"]
    cells = {(r["mode"], r["concurrency"], r["target"]) for r in rows}
    assert cells == {
        (mode, c, target)
        for mode in ("json", "stream")
        for c in (1, 8)
        for target in ("direct", "warmgw")
    }
    for r in rows:
        assert r["errors"] == 0, r["error_samples"]
        assert r["requests"] == 24
        assert r["rps"] > 0 and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
        assert set(r["cpu_us_per_req"]) == {"target", "replica", "loadgen"}
        if r["target"] == "warmgw":
            assert "added_p50_ms" in r and r["rps_ratio"] > 0
    # rounds interleave: each cell's two rounds ran in opposite target order
    order = [(r["mode"], r["concurrency"], r["round"], r["target"]) for r in results["runs"]]
    assert order[:4] == [("json", 1, 0, "direct"), ("json", 1, 0, "warmgw"),
                         ("json", 1, 1, "warmgw"), ("json", 1, 1, "direct")]
    assert descendants([os.getpid()]) == {os.getpid()}  # every child was stopped


# -- the pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [([], 50, None), ([5], 99, 5), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 100, 4),
     ([4, 1, 3, 2], 0, 1), (list(range(101)), 99, 99)],
)
def test_percentile(values: list[int], q: float, want: float | None) -> None:
    got = percentile(values, q)
    assert (got != got) if want is None else got == pytest.approx(want)


def test_summary_pools_rounds_and_compares_with_direct() -> None:
    def run(target: str, rnd: int, lat: tuple[int, ...], cpu: float) -> Run:
        return Run(target, "json", 4, rnd, elapsed=0.5, lat_us=lat, cpu={"target": cpu})

    rows = summarise([run("direct", 0, (100, 300), 0.001), run("warmgw", 0, (400, 600), 0.002),
                      run("warmgw", 1, (500, 700), 0.002), run("direct", 1, (200, 400), 0.001)])
    direct, gw = rows
    assert (direct["target"], direct["requests"], direct["rps"]) == ("direct", 4, 4.0)
    assert gw["p50_ms"] == 0.55 and direct["p50_ms"] == 0.25
    assert gw["added_p50_ms"] == 0.3 and gw["rps_ratio"] == 1.0
    assert gw["added_p50_ms_rounds"] == [0.3, 0.3]
    assert gw["cpu_us_per_req"] == {"target": 1000.0}


def test_plan_rotates_the_target_order_each_round() -> None:
    a, b, c = (Target(n, "http://127.0.0.1:1", (1,)) for n in "abc")
    opts = overhead.Options(requests=7, rounds=3, concurrency=(1,), stream=False)
    got = [(n, rnd, t.name) for _, _, n, rnd, t in overhead.plan(opts, [a, b, c])]
    assert got == [(3, 0, "a"), (3, 0, "b"), (3, 0, "c"), (2, 1, "b"), (2, 1, "c"),
                   (2, 1, "a"), (2, 2, "c"), (2, 2, "a"), (2, 2, "b")]


def test_stack_categories() -> None:
    stacks = [
        "run (uvloop/__init__.py:92);Proxy._forward (warmgw/proxy.py:221);"
        "ClientSession._request (aiohttp/client.py:700);write (libc.so.6) 3",
        "run (uvloop/__init__.py:92);Proxy._handle (warmgw/proxy.py:156) 1",
    ]
    text = report(parse(stacks))
    assert "75.0%  syscall write (upstream client)" in text
    assert "25.0%  warmgw/proxy.py" in text
