"""The prefix scenario: its figures from per-request records (table-driven), its spec, and
a CI smoke of the whole run in --quick mode (simulator with prefix caches, gateway with
prefix and session affinity, round robin, session load, report, plot): warmgw's hit rate
must beat round robin's on the same fleet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest import spec
from loadtest.prefix_report import (
    held_elsewhere_misses,
    newcomer_misses,
    newcomer_misses_ever,
    shared_blocks_tokens,
    summarise_prefix,
)
from loadtest.sessions import Prompts, cached_of, usage_of

REPO = Path(__file__).resolve().parent.parent


def rec(t: float, replica: str, sys_id: int, cached: int, prompt: int = 200,
        sys_tokens: int = 100, ok: bool = True, ttft: float = 0.02, held: int = -1
        ) -> dict[str, Any]:
    """One request's record; `held`: the most of its prompt another replica held then."""
    return {"rid": f"x{t}", "t": t, "sys": sys_id, "sys_tokens": sys_tokens, "session": "s",
            "turn": 0, "prompt_tokens": prompt, "cached_tokens": cached, "ttft": ttft,
            "ok": ok, "replica": replica, "fleet_cached": held}


def test_shared_blocks_count_the_chat_template_and_only_full_blocks() -> None:
    # 4 template tokens before the messages: 100 + 4 = 104 -> 6 full blocks of 16
    assert shared_blocks_tokens(100, 16) == 96
    assert shared_blocks_tokens(12, 16) == 16
    assert shared_blocks_tokens(11, 16) == 0


@pytest.mark.parametrize(("turns", "want"), [
    # another replica held prompt 0's 96 shared tokens when r9 got it, and r9 missed it
    ([rec(6, "r9", 0, 0, held=96)], (1, 1)),
    # r9 found it cached: judged, not a miss
    ([rec(6, "r9", 0, 96, held=150)], (0, 1)),
    # its session history missing is not a miss (only the shared blocks count)
    ([rec(6, "r9", 0, 96, prompt=400, held=300)], (0, 1)),
    # no other replica held all of it at that moment (evicted, or never): not judged,
    # whatever an earlier response had found
    ([rec(1, "r0", 0, 96, held=96), rec(6, "r9", 0, 0, held=48)], (0, 0)),
    # unknown (a simulator that does not log it): not judged
    ([rec(6, "r9", 0, 0)], (0, 0)),
    # before T0 (5): not judged; a failed request: not judged
    ([rec(4, "r9", 0, 0, held=96), rec(6, "r9", 0, 0, ok=False, held=96)], (0, 0)),
    # a replica present from the start is not the newcomer
    ([rec(6, "r0", 0, 0, held=96)], (0, 0)),
])
def test_newcomer_misses(turns: list[dict[str, Any]], want: tuple[int, int]) -> None:
    assert newcomer_misses(turns, ["r9"], 5.0, 16) == want


def test_misses_while_held_elsewhere_per_replica() -> None:
    turns = [rec(6, "r0", 0, 0, held=96), rec(7, "r0", 0, 96, held=96),
             rec(8, "r1", 1, 0, held=0), rec(9, "r9", 0, 0, held=112)]
    assert held_elsewhere_misses(turns, 5.0, 16) == {"r0": (1, 2), "r9": (1, 1)}


@pytest.mark.parametrize(("turns", "want"), [
    # the fleet had prompt 0 cached (r0 at t=1); the newcomer r9 missed it at t=6
    ([rec(1, "r0", 0, 96), rec(6, "r9", 0, 0)], (1, 1)),
    # nobody had prompt 1 cached before: not judged
    ([rec(1, "r0", 0, 96), rec(6, "r9", 1, 0)], (0, 0)),
    # the fleet's hit came after the newcomer's request: not judged
    ([rec(6, "r9", 0, 0), rec(7, "r0", 0, 96)], (0, 0)),
    # a partial hit on another replica does not say the fleet had it
    ([rec(1, "r0", 0, 48), rec(6, "r9", 0, 0)], (0, 0)),
])
def test_newcomer_misses_ever(turns: list[dict[str, Any]], want: tuple[int, int]) -> None:
    assert newcomer_misses_ever(turns, ["r9"], 5.0, 16) == want


def test_summary_hit_rate_load_and_share() -> None:
    turns = [rec(0.5, "r0", 0, 999, prompt=1000),  # in warm-up: not counted
             rec(1, "r0", 0, 50, prompt=100), rec(2, "r0", 0, 100, prompt=200),
             rec(3, "r1", 0, 0, prompt=100), rec(6, "r9", 0, 96, prompt=100, held=96),
             rec(7, "r0", 0, 0, prompt=100, ok=False)]
    run = {"status": "ok", "turns": turns,
           "phases": {"steady": [1.0, 5.0], "during": [5.0, 8.0], "after": [8.0, 9.0]}}
    s = summarise_prefix(run, ["r0", "r1"], ["r9"], 16)
    assert s is not None
    assert s["hit_rate"] == pytest.approx((50 + 100 + 0 + 96) / 500)
    assert s["hit_rate_after_t0"] == pytest.approx(0.96)
    assert s["by_replica"] == {"r0": 2, "r1": 1, "r9": 1}
    assert s["max_mean"] == pytest.approx(2 / 1.5)
    assert s["newcomer_share"] == 1.0 and s["newcomer_requests"] == 1
    assert (s["newcomer_misses"], s["newcomer_judged"]) == (0, 1)


def test_usage_read_from_the_stream_or_a_body() -> None:
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":2,'
              b'"prompt_tokens_details":{"cached_tokens":32}}}\n\ndata: [DONE]\n\n')
    assert cached_of(usage_of(stream)) == (40, 32)
    assert cached_of(usage_of(b'{"usage":{"prompt_tokens":7}}')) == (7, -1)
    assert cached_of(usage_of(b"data: [DONE]\n\n")) == (-1, -1)


def test_prompts_are_distinct_sized_as_said_and_zipf_popular() -> None:
    s = spec.load("prefix")
    assert s.workload.prefix is not None
    p = Prompts(s.workload.prefix, 7)
    lo, hi = s.workload.prefix.system_tokens
    assert all(lo <= n <= hi for n in p.tokens)
    assert [len(t.split()) for t in p.texts] == p.tokens
    assert len({t.split()[0] for t in p.texts}) == len(p.texts)
    assert p.share(0) > 5 * p.share(len(p.texts) - 1)
    # the hot set exceeds one replica's prefix cache, and fits in the fleet's
    cache = s.fleet.sim.prefix_cache_blocks * s.fleet.sim.prefix_block_tokens
    assert cache < sum(p.tokens) < cache * len(s.fleet.initial)


@pytest.mark.parametrize(("patch", "message"), [
    ({"workload": {"prefix": {"turns": [3, 1]}}}, "workload.prefix.turns"),
    ({"workload": {"prefix": {"colour": 1}}}, "workload.prefix.colour: unknown key"),
    ({"workload": {"arrivals": {"kind": "poisson", "rate": 5}}}, "need arrivals.kind: closed"),
    ({"variants": {"x": {"strategy": "fastest"}}}, "variants.x.strategy"),
    ({"strategies": "warm"}, "strategies: expected a non-empty list"),
])
def test_spec_errors_name_the_key(patch: dict[str, Any], message: str) -> None:
    raw = yaml.safe_load((spec.SCENARIOS / "prefix.yaml").read_text())
    with pytest.raises(spec.SpecError, match=message):
        spec.parse(spec.merge(raw, patch))


@pytest.mark.timeout(150)
def test_prefix_quick_warm_beats_round_robin(tmp_path: Path) -> None:
    out = tmp_path / "prefix"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "prefix", "--quick", "--out", str(out),
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=140, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("result.json", "report.md", "plot.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "result.json").read_text())
    assert list(data["strategies"]) == ["warm", "round_robin"]  # the scenario's quick order
    got = {n: r["summary"].get("prefix") for n, r in data["strategies"].items()}
    for name, p in got.items():
        assert p is not None, (name, data["strategies"][name]["summary"])
        assert p["requests"] > 100 and p["without_usage"] == 0 and p["unattributed"] == 0
        for key in ("hit_rate", "max_mean", "ttft_p50", "ttft_p99", "newcomer_share"):
            assert p[key] is not None, (name, key)
        assert p["newcomer_judged"] >= 0
    assert got["warm"]["hit_rate"] > got["round_robin"]["hit_rate"], got
    assert got["round_robin"]["newcomer_share"] > 0.1  # the newcomer was in rotation
    # the simulator logged what the other replicas held: round robin sent the newcomer
    # prompts they held, so some of its requests were judged
    assert got["round_robin"]["newcomer_judged"] > 0, got["round_robin"]
    report = (out / "report.md").read_text()
    assert "| warm |" in report and "newcomer's misses" in report


@pytest.mark.timeout(60)
def test_a_variant_needing_an_option_this_tree_lacks_is_skipped(tmp_path: Path) -> None:
    raw = yaml.safe_load((spec.SCENARIOS / "prefix.yaml").read_text())
    raw["variants"]["future"] = {"gateway": {"routing": {"prefix": {"no_such_option": 1}}}}
    path = tmp_path / "future.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", str(path), "--quick", "--strategies",
         "future", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=50, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    future = json.loads((out / "result.json").read_text())["strategies"]["future"]
    assert future["status"] == "skipped"
    assert "option not available" in future["note"] and "no_such_option" in future["note"]


def test_hashbench_hashes_an_8k_prompt_of_both_kinds(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    from loadtest import hashbench

    code = hashbench.main(["--repeat", "2", "--number", "20"])
    out = capsys.readouterr().out
    assert code in (0, 1)  # 1: over the bound (the machine's load decides; see the docs)
    lines = [x for x in out.splitlines() if x.strip().startswith(("chat", "completions"))]
    assert len(lines) == 2 and all("32 chunks" in x for x in lines), out  # 8192 / 256
    assert "bound 50 us" in out
    with pytest.raises(SystemExit):
        hashbench.main(["--prompt-bytes", "0"])
