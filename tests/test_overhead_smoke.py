"""The overhead benchmark end to end, tiny: a replica, the gateway and the load generator
in their own processes, both targets measured, no request failing; a peer that fails to
start is reported and the benchmark goes on (no real peer is needed); another source tree
measured beside the gateway and compared with it cell by cell. CPU in nanoseconds per
thread, and what it misses when a thread exits."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import overhead, peers
from loadtest.procs import CpuReading, cpu_between, descendants, read_cpu
from loadtest.report import compare_table, parts_table
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
         "--no-envoy-epp", "--out", str(out)]
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


@pytest.mark.timeout(60)
def test_another_tree_is_compared_cell_by_cell_with_a_long_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "overhead.json"
    code = overhead.main(
        ["--quick", "--requests", "24", "--concurrency", "4", "--no-stream", "--peers", "",
         "--no-envoy-epp",
         "--prompt-bytes", "8192", "--compare-src", str(overhead.REPO), "--out", str(out)]
    )
    assert code == 0
    results = json.loads(out.read_text())
    meta = results["meta"]
    assert meta["options"]["prompt_chars"] == 8192 and not meta["meets_cpu_standard"]
    name = meta["compare"]["target"]
    assert name.startswith("warmgw@") and meta["compare"]["path"] == str(overhead.REPO)
    rows = {r["target"]: r for r in results["summary"]}
    assert set(rows) == {"direct", "warmgw", name}
    assert all(r["errors"] == 0 for r in rows.values()), rows
    gw = rows["warmgw"]
    assert len(gw["cpu_vs_compare_rounds"]) == 2 and gw["cpu_vs_compare"] > 0
    assert gw["cpu_us_per_req"]["target"] > 0
    printed = capsys.readouterr().out
    assert f"over the compare tree {name} ({overhead.REPO}" in printed
    assert "below the standard for a CPU comparison" in printed


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


def test_a_target_of_two_processes_gets_each_ones_cpu_and_how_many_cores_one_serves() -> None:
    def run(rnd: int, envoy: float, epp: float) -> Run:  # 10 requests: 0.001 s = 100 us/req
        return Run("envoy+epp", "json", 1, rnd, elapsed=1.0, lat_us=(100,) * 10,
                   cpu={"target": envoy + epp, "target:envoy": envoy, "target:epp": epp})

    rows = summarise([run(0, 0.003, 0.008), run(1, 0.004, 0.010), run(2, 0.003, 0.009),
                      Run("warmgw", "json", 1, 0, elapsed=1.0, lat_us=(100,) * 10,
                          cpu={"target": 0.001})])
    cpu = rows[0]["cpu_us_per_req"]
    assert (cpu["target:envoy"], cpu["target:epp"], cpu["target"]) == (300.0, 900.0, 1200.0)
    text = parts_table(rows)
    assert text.splitlines()[-1].split() == ["json", "1", "envoy+epp", "envoy", "300", "+",
                                              "epp", "900", "1200", "0.3", "envoy", "cores",
                                              "per", "epp", "core"]
    assert "warmgw" not in text  # one process: nothing to split
    assert parts_table(rows[1:]) == ""


def test_cpu_per_request_is_the_median_of_rounds_and_ratios_pair_rounds() -> None:
    def run(target: str, rnd: int, cpu: float) -> Run:  # 10 requests: cpu 0.001 = 100 us/req
        return Run(target, "json", 1, rnd, elapsed=1.0, lat_us=(100,) * 10, cpu={"target": cpu})

    gw = [run("warmgw", 0, 0.001), run("warmgw", 1, 0.002), run("warmgw", 2, 0.0012)]
    ref = [run("ref", 0, 0.001), run("ref", 1, 0.001), run("ref", 2, 0.0024)]
    rows = {r["target"]: r for r in summarise(gw + ref, gateway="warmgw", compare="ref")}
    assert rows["warmgw"]["cpu_us_per_req"] == {"target": 120.0}
    assert rows["warmgw"]["cpu_us_per_req_rounds"] == {"target": [100.0, 200.0, 120.0]}
    # round by round 1.0, 2.0, 0.5: the median is 1.0 (pooled it would be 0.95)
    assert rows["warmgw"]["cpu_vs_compare_rounds"] == [1.0, 2.0, 0.5]
    assert rows["warmgw"]["cpu_vs_compare"] == 1.0
    assert rows["ref"]["cpu_vs_gateway"] == 1.0 and "cpu_vs_compare" not in rows["ref"]
    text = compare_table(list(rows.values()), "warmgw", "abc1234",
                         {"target": "ref", "path": "/src/ref", "commit": "f" * 40})
    assert f"this tree (abc1234) over the compare tree ref (/src/ref, commit {'f' * 40})" in text
    assert text.splitlines()[-1].split() == ["json", "1", "120.0", "100.0", "1.000",
                                              "1.000", "2.000", "0.500"]


def test_cpu_between_counts_new_threads_and_never_subtracts_an_exited_one() -> None:
    before = CpuReading(tasks={10: 5_000_000_000, 11: 1_000_000_000}, clocks={10: 6_000_000_000})
    # thread 11 exited (its 1 s and whatever it spent since are gone), thread 12 is new
    after = CpuReading(tasks={10: 5_200_000_000, 12: 300_000_000}, clocks={10: 6_900_000_000})
    on_cpu, missed = cpu_between(before, after)
    assert on_cpu == pytest.approx(0.5) and missed == pytest.approx(0.4)


@pytest.mark.timeout(30)
def test_read_cpu_sees_threads_in_ns_and_flags_an_exited_threads_time() -> None:
    spin = ("import sys, threading, time\n"
            "def spin():\n"
            "    t = time.thread_time()\n"
            "    while time.thread_time() - t < 0.2: pass\n"
            "threads = []\n"
            "for line in sys.stdin:\n"
            "    threads.append(threading.Thread(target=spin)); threads[-1].start()\n"
            "    if line.strip() == 'join': [t.join() for t in threads]\n"
            "    print('ok', flush=True)\n")
    with subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            before = read_cpu([child.pid])
            child.stdin.write("run\n")
            child.stdin.flush()
            assert child.stdout.readline() == "ok\n"
            time.sleep(0.1)  # the thread is spinning: it is one of the process's tasks
            during = read_cpu([child.pid])
            (first,) = during.tasks.keys() - before.tasks.keys()
            left = 0.2 - during.tasks[first] / 1e9  # its CPU still to come, in s
            child.stdin.write("join\n")  # another one, and both exit before the next read
            child.stdin.flush()
            assert child.stdout.readline() == "ok\n"
            after = read_cpu([child.pid])
            on_cpu, missed = cpu_between(during, after)
            # what the first thread had left and the second's 0.2 s: both gone, so flagged
            # as missed (bounds loose: on a loaded machine part of it is seen as it goes)
            assert 0.05 < missed < left + 0.2 + 0.05
            assert on_cpu < 0.05  # the main thread's
            assert cpu_between(before, during)[0] > 0.01  # while it ran
        finally:
            child.kill()


def test_a_prompt_of_n_bytes() -> None:
    assert overhead.prompt_text(16) == overhead.Options().prompt()  # the default
    assert len(overhead.prompt_text(16).split()) == 16
    long = overhead.prompt_text(16, 8192)
    assert len(long.encode()) == 8192 and 1500 < len(long.split()) < 2000
    assert overhead.prompt_text(16, 1) == "t"
    with pytest.raises(SystemExit):
        overhead.parse_args(["--prompt-bytes", "40000"])  # over the replica's 4096 tokens


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


@pytest.mark.timeout(60)
def test_quick_8k_cell_with_prefix_routing(tmp_path: Path) -> None:
    """The 8 KB cell of `make bench`: the gateway runs with prefix affinity on (its config
    says so, and this tree's config parser accepts it), every request succeeds."""
    from loadtest.targets import gateway_config
    from warmgw.config import parse as parse_config

    cfg = parse_config(gateway_config("http://127.0.0.1:9", 8000, "warm",
                                      {"prefix": {"enabled": True}}))
    assert cfg.routing.prefix.enabled
    assert "routing" not in gateway_config("http://127.0.0.1:9", 8000, "warm")
    out = tmp_path / "overhead-8k.json"
    code = overhead.main(["--quick", "--requests", "20", "--concurrency", "4", "--no-stream",
                          "--prompt-bytes", "8192", "--prefix-routing", "--peers", "",
                          "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["meta"]["options"]["prefix_routing"] is True
    assert results["meta"]["options"]["prompt_chars"] == 8192
    for r in results["summary"]:
        assert r["errors"] == 0, r["error_samples"]


def test_prefix_routing_refuses_what_would_not_measure_it() -> None:
    with pytest.raises(SystemExit):
        overhead.parse_args(["--prefix-routing", "--strategy", "round_robin"])
