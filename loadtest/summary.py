"""Pure summaries of a scenario run: per strategy and phase, the percentiles of time to
first token (streams) and whole-request latency (every request), errors, and user
requests that reached a cold replica (the simulator's user_cold_hits).

Works on the plain data of result.json, so a report can be made again from it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from loadtest.stats import percentile

PHASES = ("steady", "during", "after")
# the simulator's counters are read at these moments; phase -> (from, to)
COUNTER_SPANS = {"steady": ("start", "event"), "during": ("event", "during_end"),
                 "after": ("during_end", "end")}
CLAIM_RATIO = 1.2  # warmgw's p99.9 during the event within this factor of steady state




def dist(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99, p99.9 and max, in milliseconds."""

    def ms(x: float) -> float | None:
        return None if math.isnan(x) else round(x * 1000.0, 1)

    return {
        "n": len(values),
        "p50": ms(percentile(values, 50)),
        "p99": ms(percentile(values, 99)),
        "p999": ms(percentile(values, 99.9)),
        "max": ms(max(values) if values else math.nan),
    }


def counter_delta(sim: Mapping[str, Mapping[str, Any]], frm: str, to: str,
                  key: str = "user_cold_hits") -> dict[str, int] | None:
    """Per replica: how much `key` grew between two readings (None if one is missing)."""
    a, b = sim.get(frm), sim.get(to)
    if not a or not b:
        return None
    out = {}
    for name, stats in b.items():
        if key in stats and key in a.get(name, {}):
            out[name] = int(stats[key]) - int(a[name][key])
    return out


def phase_summary(samples: Sequence[Mapping[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    mine = [s for s in samples if t0 <= s["t"] < t1]
    ok = [s for s in mine if s["ok"]]
    errors = [s for s in mine if not s["ok"]]
    kinds = Counter(str(s["error"]).split(":")[0] for s in errors)
    return {
        "window": [round(t0, 2), round(t1, 2)],
        "requests": len(mine),
        "errors": len(errors),
        "error_kinds": dict(kinds.most_common(5)),
        "ttft": dist([s["ttfb"] for s in ok if s["stream"]]),
        "latency": dist([s["lat"] for s in ok]),
        "by_replica": dict(sorted(Counter(s["replica"] or "?" for s in ok).items())),
    }


def first_requests(samples: Sequence[Mapping[str, Any]], names: Sequence[str],
                   t0: float) -> dict[str, float | None]:
    """Seconds from t0 to the first user request each named replica answered."""
    out: dict[str, float | None] = {}
    for name in names:
        ts = [s["t"] for s in samples if s["replica"] == name]
        out[name] = round(min(ts) - t0, 2) if ts else None
    return out


def restart_failures(samples: Sequence[Mapping[str, Any]],
                     events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Requests that failed while replicas were restarted by a signal: by signal (kill,
    term), failed non-streamed ones (`plain`), streams that began and were then cut
    (`cut`: a 200 that ended in an error event or early) and other failed streams
    (`streams`). A request belongs to the last kill/term before it ended, so one in
    flight when the signal came counts for it."""
    marks = sorted((float(e["t"]), str(e["what"]).split(" ", 1)[0]) for e in events
                   if str(e["what"]).startswith(("kill ", "term ")))
    out: dict[str, dict[str, int]] = {}
    for how in dict.fromkeys(h for _, h in marks):
        out[how] = {"requests": 0, "plain": 0, "cut": 0, "streams": 0}
    if not marks:
        return out
    for smp in samples:
        t = float(smp["t"]) + float(smp.get("lat") or 0.0)
        how = ""
        for at, h in marks:
            if at > t:
                break
            how = h
        if not how:
            continue
        o = out[how]
        o["requests"] += 1
        if smp["ok"]:
            continue
        if not smp["stream"]:
            o["plain"] += 1
        elif smp.get("status") == 200:
            o["cut"] += 1
        else:
            o["streams"] += 1
    return out


def summarise(run: Mapping[str, Any], newcomers: Sequence[str] = ()) -> dict[str, Any]:
    """One strategy's summary from its record in result.json; newcomers: the replicas
    that joined during the run."""
    if run["status"] != "ok":
        return {"status": run["status"], "note": run.get("note", "")}
    samples = run["samples"]
    phases = {}
    for name in PHASES:
        if name not in run["phases"]:
            continue
        t0, t1 = run["phases"][name]
        p = phase_summary(samples, t0, t1)
        cold = counter_delta(run["sim"], *COUNTER_SPANS[name])
        p["cold_hits"] = None if cold is None else sum(cold.values())
        phases[name] = p
    total = counter_delta(run["sim"], "start", "end") or {}
    paid = counter_delta(run["sim"], "start", "end", "warmup_cold_hits") or {}
    out: dict[str, Any] = {
        "status": "ok",
        "note": run.get("note", ""),
        "truncated": run.get("truncated", False),
        "requests": len(samples),
        "errors": sum(not s["ok"] for s in samples),
        "error_samples": sorted({str(s["error"])[:120] for s in samples if not s["ok"]})[:5],
        "cold_hits": sum(total.values()),
        "cold_hits_by_replica": {k: v for k, v in total.items() if v},
        "warmup_cold_hits": sum(paid.values()),
        "phases": phases,
        "cpu": dict(run.get("cpu") or {}),
    }
    restarts = restart_failures(samples, run.get("events") or [])
    if restarts:
        out["restart_failures"] = restarts
    if "during" in run["phases"] and newcomers:
        out["first_user_request"] = first_requests(samples, newcomers,
                                                   run["phases"]["during"][0])
    if "newcomer_cold" in run:
        out["newcomer_cold"] = newcomer_cold(run["newcomer_cold"], newcomers)
    if run.get("balancer"):
        out["balancer"] = dict(run["balancer"])
    steady, during = phases.get("steady"), phases.get("during")
    if steady and during:
        out["ratios"] = {
            f"{what}_{q}": _ratio(during[what][q], steady[what][q])
            for what in ("latency", "ttft") for q in ("p99", "p999", "max")
        }
    return out


def newcomer_cold(records: Mapping[str, Sequence[Mapping[str, Any]]],
                  newcomers: Sequence[str]) -> dict[str, Any]:
    """The newcomers' user requests that paid a first-use cost (from their own logs): how
    many, and how many paid for each kind of first use (prompt_bucket, batch_bucket,
    adapter, grammar, tools, logprobs, n); a request that paid for two counts under both."""
    recs = [r for name in newcomers for r in records.get(name, ())]
    reasons = Counter(str(c).split(":")[0] for r in recs for c in r.get("cold") or ())
    return {"requests": len(recs), "by_reason": dict(reasons.most_common()),
            "by_replica": {n: len(records.get(n, ())) for n in newcomers}}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def claim(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """warmgw (strategy warm): no user request on a cold replica, and p99.9 of the whole
    request latency during the event within CLAIM_RATIO of steady state."""
    w = summaries.get("warm")
    if not w or w.get("status") != "ok" or "ratios" not in w:
        return None
    ratio = w["ratios"]["latency_p999"]
    holds = w["cold_hits"] == 0 and ratio is not None and ratio <= CLAIM_RATIO
    return {"cold_hits": w["cold_hits"], "latency_p999_ratio": ratio,
            "ttft_p999_ratio": w["ratios"]["ttft_p999"], "limit": CLAIM_RATIO, "holds": holds}
