"""The prefix scenario's figures, from each strategy's per-request records (`turns`, see
loadtest.sessions), over the measured window (from the start of `steady` to the end):

- hit rate: cached prompt tokens / prompt tokens of user requests, both from the usage
  each response returned (`usage.prompt_tokens_details.cached_tokens`);
- load: user requests per replica; max/mean among the replicas present from the start
  (1.0: even);
- TTFT p50 / p99 (ms): the first SSE event of each successful request, at the client;
- the newcomer's share: its requests / all requests from the event time (T0) on;
- the newcomer's misses: its user requests that found fewer of their shared system
  prompt's full blocks cached than the prompt has (its session's history excluded), for a
  system prompt the fleet had cached: another replica held all of that prompt's full
  blocks when the request was scheduled (the simulator logs it per request:
  `fleet_cached_tokens`, read with the replica by X-Request-Id). The same measure per
  replica (`held_elsewhere_misses`) and the looser one of earlier runs (any replica had
  held it at any earlier time, though it may have evicted it since: `*_ever`) are in the
  JSON.

Also plot.png for this scenario: the hit rate over time, and the newcomer's share of
requests, per strategy, aligned on T0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.summary import percentile
from warmgw.sim.tokens import CHAT_TEMPLATE_TOKENS

BIN = 2.0  # s, the plot's windows
BOUND = 1.25  # the bound on max/mean load


def shared_blocks_tokens(sys_tokens: int, block: int) -> int:
    """Tokens of a system prompt's full cache blocks (the chat template's tokens first)."""
    return (CHAT_TEMPLATE_TOKENS // 2 + sys_tokens) // block * block


def summarise_prefix(run: Mapping[str, Any], initial: Sequence[str], newcomers: Sequence[str],
                     block: int) -> dict[str, Any] | None:
    turns = run.get("turns") or []
    if run.get("status") != "ok" or not turns or "steady" not in run.get("phases", {}):
        return None
    t_from = run["phases"]["steady"][0]
    t0 = run["phases"]["during"][0] if "during" in run["phases"] else math.inf
    ok = [r for r in turns if r["ok"] and r["t"] >= t_from]
    usage = [r for r in ok if r["prompt_tokens"] >= 0 and r["cached_tokens"] >= 0]
    prompt = sum(r["prompt_tokens"] for r in usage)
    cached = sum(r["cached_tokens"] for r in usage)
    per = {n: 0 for n in initial}
    for r in ok:
        per[r["replica"]] = per.get(r["replica"], 0) + 1
    first = [per[n] for n in initial]
    mean = sum(first) / len(first) if first else 0.0
    ttft = [r["ttft"] * 1000.0 for r in ok if r["ttft"] is not None]
    after = [r for r in ok if r["t"] >= t0]
    new = [r for r in after if r["replica"] in newcomers]
    misses, judged = newcomer_misses(turns, newcomers, t0, block)
    ever = newcomer_misses_ever(turns, newcomers, t0, block)
    return {
        "requests": len(ok),
        "without_usage": len(ok) - len(usage),
        "unattributed": sum(1 for r in ok if not r["replica"]),
        "hit_rate": cached / prompt if prompt else None,
        "hit_rate_after_t0": _rate([r for r in usage if r["t"] >= t0]),
        "prompt_tokens": prompt, "cached_tokens": cached,
        "by_replica": dict(sorted(per.items())),
        "max_mean": max(first) / mean if mean else None,
        "ttft_p50": percentile(ttft, 50) if ttft else None,
        "ttft_p99": percentile(ttft, 99) if ttft else None,
        "newcomer_share": len(new) / len(after) if after else None,
        "newcomer_requests": len(new),
        "newcomer_misses": misses, "newcomer_judged": judged,
        "newcomer_misses_ever": ever[0], "newcomer_judged_ever": ever[1],
        "held_elsewhere_misses": {k: list(v) for k, v in
                                  held_elsewhere_misses(turns, t0, block).items()},
    }


def _rate(recs: Sequence[Mapping[str, Any]]) -> float | None:
    prompt = sum(r["prompt_tokens"] for r in recs)
    return sum(r["cached_tokens"] for r in recs) / prompt if prompt else None


def newcomer_misses(turns: Sequence[Mapping[str, Any]], newcomers: Sequence[str], t0: float,
                    block: int) -> tuple[int, int]:
    """(misses, judged): the newcomers' user requests from t0 on whose shared system prompt
    another replica held in full when the request was scheduled (judged: the simulator's
    `fleet_cached_tokens`), and those of them that did not find it cached (misses)."""
    per = held_elsewhere_misses(turns, t0, block)
    return (sum(per.get(n, (0, 0))[0] for n in newcomers),
            sum(per.get(n, (0, 0))[1] for n in newcomers))


def held_elsewhere_misses(turns: Sequence[Mapping[str, Any]], t0: float, block: int
                          ) -> dict[str, tuple[int, int]]:
    """Per replica, from t0 on: (misses, judged) of user requests whose system prompt
    another replica held in full at that moment; a miss is a request that went where the
    prompt was not cached although the fleet had it (session histories excluded)."""
    out: dict[str, tuple[int, int]] = {}
    for r in turns:
        need = shared_blocks_tokens(r["sys_tokens"], block)
        if (not r["ok"] or r["cached_tokens"] < 0 or r["t"] < t0 or need <= 0
                or r.get("fleet_cached", -1) < need):
            continue
        m, j = out.get(r["replica"], (0, 0))
        out[r["replica"]] = (m + (r["cached_tokens"] < need), j + 1)
    return dict(sorted(out.items()))


def newcomer_misses_ever(turns: Sequence[Mapping[str, Any]], newcomers: Sequence[str],
                         t0: float, block: int) -> tuple[int, int]:
    """The looser measure of earlier runs: judged when any other replica had been seen
    holding the prompt at any earlier time (an earlier response from it found all of its
    full blocks cached), though it may have evicted it since."""
    seen: dict[int, float] = {}  # system prompt -> first time another replica had it cached
    misses = judged = 0
    for r in sorted(turns, key=lambda x: x["t"]):
        if not r["ok"] or r["cached_tokens"] < 0:
            continue
        need = shared_blocks_tokens(r["sys_tokens"], block)
        if r["replica"] in newcomers:
            if r["t"] >= t0 and r["sys"] in seen and seen[r["sys"]] < r["t"] and need > 0:
                judged += 1
                misses += r["cached_tokens"] < need
        elif r["cached_tokens"] >= need:
            seen.setdefault(r["sys"], r["t"])
    return misses, judged


def add_prefix_summaries(data: dict[str, Any], initial: Sequence[str],
                         newcomers: Sequence[str], block: int) -> None:
    for rec in data["strategies"].values():
        sm = summarise_prefix(rec, initial, newcomers, block)
        if sm is not None:
            rec["summary"]["prefix"] = sm


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(data: Mapping[str, Any], initial: Sequence[str]) -> list[str]:
    """The prefix table, at the top of report.md's summary ([] when no strategy has
    session records)."""
    rows = []
    for name, rec in data["strategies"].items():
        sm = rec.get("summary", {})
        p = sm.get("prefix")
        if p is None:
            if sm.get("status") != "ok":
                rows.append(f"| {name} | {sm.get('status')}: "
                            f"{' '.join(str(sm.get('note', '')).split())[:120]} |"
                            + " - |" * 8)
            continue
        loads = ", ".join(f"{k or '?'} {v}" + ("" if k in initial else " (new)")
                          for k, v in p["by_replica"].items())
        over = " (over the bound)" if p["max_mean"] is not None and p["max_mean"] > BOUND else ""
        miss = (f"{p['newcomer_misses']} of {p['newcomer_judged']} "
                f"({_pct(p['newcomer_misses'] / p['newcomer_judged'])})"
                if p["newcomer_judged"] else "- (none judged)")
        rows.append(
            f"| {name} | {_pct(p['hit_rate'])} | {_pct(p['hit_rate_after_t0'])} | "
            f"{_f(p['max_mean'])}{over} | {loads} | {_f(p['ttft_p50'], 1)} | "
            f"{_f(p['ttft_p99'], 1)} | {_pct(p['newcomer_share'])} | {miss} |")
    if not rows:
        return []
    return ["**Prefix and session affinity.** Hit rate: cached prompt tokens / prompt "
            "tokens of user requests (from each response's usage), from the start of steady "
            "on; load: user requests per "
            f"replica present from the start, max/mean (bound {BOUND}); TTFT at the client, "
            "ms; the newcomer's share of requests from T0 on, and its misses: its user "
            "requests that did not find their shared system prompt cached although another "
            "replica held it at that moment (session histories excluded).", "",
            "| strategy | hit rate | hit rate from T0 | load max/mean | requests per "
            "replica | TTFT p50 | TTFT p99 | newcomer's share | newcomer's misses |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            "The scenario's usual figures (cold starts, latency around the event):", ""]


COLOURS = {"warm": "#1b7837", "warm+keep_prefixes": "#5aae61", "round_robin": "#d6604d",
           "least_request": "#e08214", "vllm_router_cache_aware": "#2166ac",
           "vllm_router_consistent_hash": "#762a83", "warm_no_slack": "#a6dba0"}


def plot(data: Mapping[str, Any], path: Path, newcomers: Sequence[str]) -> bool:
    """Hit rate per BIN window (top) and the newcomers' share of requests (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = {k: v for k, v in data["strategies"].items()
            if v.get("summary", {}).get("prefix") is not None and "during" in v["phases"]}
    if not runs:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    for name, rec in runs.items():
        t0 = rec["phases"]["during"][0]
        t_from, t_to = rec["phases"]["steady"][0], rec["phases"]["after"][1]
        n = max(1, math.ceil((t_to - t_from) / BIN))
        prompt, cached, total, new = [0] * n, [0] * n, [0] * n, [0] * n
        for r in rec["turns"]:
            i = int((r["t"] - t_from) // BIN)
            if not 0 <= i < n or not r["ok"]:
                continue
            total[i] += 1
            new[i] += r["replica"] in newcomers
            if r["prompt_tokens"] >= 0 and r["cached_tokens"] >= 0:
                prompt[i] += r["prompt_tokens"]
                cached[i] += r["cached_tokens"]
        xs = [t_from + (i + 0.5) * BIN - t0 for i in range(n)]
        p = rec["summary"]["prefix"]
        width = 2.2 if name.startswith("warm") else 1.3
        top.plot(xs, [100.0 * c / q if q else math.nan for c, q in zip(cached, prompt,
                                                                       strict=True)],
                 label=f"{name} (hit rate {_pct(p['hit_rate'])}, max/mean "
                       f"{_f(p['max_mean'])})", color=COLOURS.get(name), linewidth=width)
        bottom.plot(xs, [100.0 * k / t if t else math.nan for k, t in zip(new, total,
                                                                         strict=True)],
                    color=COLOURS.get(name), linewidth=width)
    for ax in (top, bottom):
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    top.set_ylabel(f"prefix cache hit rate per {BIN:g} s (%)")
    top.set_title(f"{data['scenario']}: cached prompt tokens / prompt tokens; "
                  f"{', '.join(newcomers)} joins at 0", fontsize=11)
    top.legend(loc="lower left", fontsize=8)
    bottom.set_ylabel("newcomer's share of requests (%)")
    bottom.set_xlabel("seconds since the newcomer joined (T0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
