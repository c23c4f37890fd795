"""The join benchmark's numbers (pure: from a run's recorded data) and its report.md.

Times are seconds on the load's clock (0 = the user load started). Warmup concurrency is
read from the requests the simulated replicas served, not from the gateway: a replica is
"being warmed" from one warmup request's start to the end of its last one, gaps shorter
than MERGE_GAP bridged (the gateway sends a warmup's shapes back to back).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.stats import percentile

if TYPE_CHECKING:
    from loadtest.join import JoinParams, JoinRun
    from loadtest.spec import Scenario

MERGE_GAP = 0.25  # s: a replica's warmup requests closer than this are one warmup
CPU_WINDOW = 2.0  # s: the window of the peak CPU figures
Interval = tuple[float, float]


# -- samples ------------------------------------------------------------------------------


def _ms(x: float) -> float | None:
    return None if math.isnan(x) else round(x * 1000.0, 1)


def phase_stats(samples: Sequence[Mapping[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """Requests that started in [t0, t1): count, errors, latency and TTFT percentiles (ms)."""
    xs = [s for s in samples if t0 <= s["t"] < t1]
    ok = [s for s in xs if s["ok"]]
    lat = [s["lat"] for s in ok]
    ttfb = [s["ttfb"] for s in ok if s["ttfb"] is not None and not math.isnan(s["ttfb"])]
    out: dict[str, Any] = {"from": round(t0, 2), "to": round(t1, 2), "requests": len(xs),
                           "errors": len(xs) - len(ok)}
    for name, vals in (("lat", lat), ("ttft", ttfb)):
        out[name] = {q: _ms(percentile(vals, p)) for q, p in
                     (("p50", 50), ("p99", 99), ("p99.9", 99.9), ("max", 100))}
    return out


def error_kinds(samples: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        if not s["ok"]:
            key = re.sub(r"[0-9a-f]{8,}", "#", s["error"])[:90]
            out[key] = out.get(key, 0) + 1
    return out


# -- warmup concurrency -------------------------------------------------------------------


def merged(intervals: Iterable[Interval], gap: float) -> list[Interval]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def max_overlap(intervals: Iterable[Interval]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = best = 0
    for _, d in edges:
        now += d
        best = max(best, now)
    return best


def warmups(requests: Mapping[str, Sequence[Sequence[Any]]], since: float,
            gap: float = MERGE_GAP) -> dict[str, list[Interval]]:
    """Per replica: its warmups (merged warmup request intervals) that began after since."""
    out = {}
    for name, reqs in requests.items():
        spans = [(r[0], r[1]) for r in reqs if r[2] and r[0] >= since]
        if spans:
            out[name] = merged(spans, gap)
    return out


def concurrency(requests: Mapping[str, Sequence[Sequence[Any]]], since: float
                ) -> dict[str, Any]:
    """How many replicas were warmed at once, three ways, from the replicas' own logs."""
    per = warmups(requests, since)
    spans = [iv for ivs in per.values() for iv in ivs]
    strict = [iv for ivs in warmups(requests, since, gap=0.0).values() for iv in ivs]
    reqs = [(r[0], r[1]) for rs in requests.values() for r in rs if r[2] and r[0] >= since]
    busy = sum(b - a for a, b in spans)
    first = min((a for a, _ in spans), default=math.nan)
    last = max((b for _, b in spans), default=math.nan)
    return {
        "replicas_warmed": len(per),
        "max_replicas_warming": max_overlap(spans),  # warmups open at once
        "max_replicas_with_request": max_overlap(strict),  # a warmup request in flight
        "max_warmup_requests_in_flight": max_overlap(reqs),
        "mean_replicas_warming": round(busy / (last - first), 2) if last > first else None,
        "first": None if math.isnan(first) else round(first, 3),
        "last": None if math.isnan(last) else round(last, 3),
    }


def timeline(requests: Mapping[str, Sequence[Sequence[Any]]], since: float, until: float,
             step: float = 1.0) -> list[int]:
    """Replicas being warmed at the start of each step (for the report's sparkline)."""
    spans = [iv for ivs in warmups(requests, since).values() for iv in ivs]
    out = []
    t = since
    while t < until:
        out.append(sum(a <= t < b for a, b in spans))
        t += step
    return out


# -- CPU ----------------------------------------------------------------------------------


def _at(cpu: Sequence[Mapping[str, float]], t: float) -> Mapping[str, float] | None:
    """The last CPU sample at or before t (the first one if none)."""
    best = None
    for c in cpu:
        if c["t"] <= t or best is None:
            best = c
        if c["t"] > t:
            break
    return best


def cores(cpu: Sequence[Mapping[str, float]], t0: float, t1: float) -> dict[str, float]:
    """Cores busy on average in [t0, t1], per process, ours, the machine, everything else."""
    a, b = _at(cpu, t0), _at(cpu, t1)
    if a is None or b is None or b["t"] <= a["t"]:
        return {}
    wall = b["t"] - a["t"]
    out = {k: round((b[k] - a[k]) / wall, 2) for k in a
           if k not in ("t", "host_busy", "host_total")}
    ours = sum(out.values())
    host = (b["host_busy"] - a["host_busy"]) / wall
    out["host"] = round(host, 2)
    out["others"] = round(max(0.0, host - ours), 2)
    return out


def peak_cores(cpu: Sequence[Mapping[str, float]], key: str, t0: float, t1: float,
               window: float = CPU_WINDOW) -> float | None:
    """The most cores `key` used over any window within [t0, t1]."""
    xs = [c for c in cpu if t0 <= c["t"] <= t1]
    best = None
    for i, a in enumerate(xs):
        for b in xs[i + 1:]:
            if b["t"] - a["t"] >= window:
                v = (b[key] - a[key]) / (b["t"] - a["t"])
                best = v if best is None else max(best, v)
                break
    return None if best is None else round(best, 2)


# -- one run ------------------------------------------------------------------------------


def _delta(stats: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Iterable[str],
           key: str) -> int:
    end, start = stats.get("end", {}), stats.get("start", {})
    return sum(end.get(n, {}).get(key, 0) - start.get(n, {}).get(key, 0) for n in names)


def _ratio(st: Mapping[str, Any], du: Mapping[str, Any]) -> dict[str, float | None]:
    return {q: (round(du["lat"][q] / st["lat"][q], 2) if du["lat"][q] and st["lat"][q]
                else None) for q in ("p50", "p99", "p99.9", "max")}


def _last(ts: Iterable[float | None]) -> float | None:
    """The latest of the times, None if any is missing (or there are none)."""
    xs = list(ts)
    return None if not xs or any(t is None for t in xs) else max(t for t in xs if t is not None)


def _since(t: float | None, t0: float | None) -> float | None:
    return None if t is None or t0 is None else round(t - t0, 2)


def summarise(rec: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    samples = rec["samples"]
    times = rec["times"]
    reqs = rec["requests"]
    fleet = [n for n in reqs if n.startswith("f")]
    joined = [n for n in reqs if n.startswith("n")]
    newcomers = [n for n in reqs if not n.startswith("f")]
    phases = {k: phase_stats(samples, *v) for k, v in rec["phases"].items()}
    # served by the fleet's replicas: their simulator process is not the newcomers' one,
    # so these show the gateway and the machine without the newcomers' process
    on_fleet = [x for x in samples if x["replica"].startswith("f")]
    by_fleet = {k: phase_stats(on_fleet, *v) for k, v in rec["phases"].items()}
    out: dict[str, Any] = {"status": rec["status"], "note": rec["note"],
                           "requests": len(samples),
                           "errors": sum(not s["ok"] for s in samples),
                           "error_kinds": error_kinds(samples), "phases": phases}
    out["phases_fleet"] = by_fleet
    st, du = phases.get("steady"), phases.get("during")
    if st and du:
        out["ratio"] = _ratio(st, du)
        out["ratio_fleet"] = _ratio(by_fleet["steady"], by_fleet["during"])
    sim = rec["sim"]
    out["user_cold_hits"] = _delta(sim, [*fleet, *newcomers], "user_cold_hits")
    out["user_cold_hits_newcomers"] = _delta(sim, newcomers, "user_cold_hits")
    out["warmup_cold_hits"] = _delta(sim, [*fleet, *newcomers], "warmup_cold_hits")
    out["user_requests_newcomers"] = _delta(sim, joined, "user_requests")
    out["paid_cold_in_log"] = sum(1 for rs in reqs.values() for r in rs if r[3] and not r[2]
                                  and r[0] >= 0)
    added = times.get("join_added")
    end = rec["phases"].get("during", [0, 0])[1]
    seen = [rec["seen"].get(n, {}) for n in joined]
    out["join"] = {
        "replicas": len(joined),
        # first seen so in the gateway's status (every 0.5 s)
        "all_routable_s": _since(_last(x.get("routable") for x in seen), added),
        "all_ready_s": _since(_last(x.get("ready") for x in seen), added),
        "routable_at_end": sum("routable" in x for x in seen),
        "ready_at_end": sum("ready" in x for x in seen),
    }
    cpu = rec["cpu"]
    if st and du:
        out["cpu"] = {"steady": cores(cpu, st["from"], st["to"]),
                      "during": cores(cpu, du["from"], du["to"]),
                      "gateway_peak_during": peak_cores(cpu, "gateway", du["from"], du["to"]),
                      "host_peak_during": peak_cores(cpu, "host_busy", du["from"], du["to"])}
    if added is not None:
        joined_reqs = {n: reqs[n] for n in joined}
        c = concurrency({n: reqs[n] for n in [*fleet, *joined]}, added)
        c["max_concurrent"] = p["max_concurrent"]
        out["warmup"] = c
        w = warmups(joined_reqs, added)
        if w:
            firsts = sorted(ivs[0][0] - added for ivs in w.values())
            lengths = sorted(ivs[-1][1] - ivs[0][0] for ivs in w.values())
            out["warmup"] |= {
                "per_replica_s": {"p50": round(percentile(lengths, 50), 2),
                                  "max": round(lengths[-1], 2)},
                "last_started_s": round(firsts[-1], 2),
                "all_warmed_s": round(max(ivs[-1][1] for ivs in w.values()) - added, 2),
                "timeline": timeline(joined_reqs, added, end),
            }
    solo = times.get("solo_added")
    if solo is not None:
        w = warmups({"s0": reqs.get("s0", [])}, solo).get("s0", [])
        out["solo"] = {"warm_s": round(w[-1][1] - w[0][0], 2) if w else None,
                       "routable_s": _since(times.get("solo_routable"), solo),
                       "ready_s": _since(times.get("solo_ready"), solo)}
        n, m = len(joined), p["max_concurrent"]
        if w and "all_warmed_s" in out.get("warmup", {}):
            ideal = math.ceil(n / m) * out["solo"]["warm_s"]
            out["scaling"] = {"expected_s": round(ideal, 1), "batches": math.ceil(n / m),
                              "measured_s": out["warmup"]["all_warmed_s"],
                              "ratio": round(out["warmup"]["all_warmed_s"] / ideal, 2)}
    asked = times.get("rewarm_asked")
    if asked is not None:
        w = warmups({"f0": reqs.get("f0", [])}, asked).get("f0", [])
        out["rewarm"] = {"slot_wait_s": round(w[0][0] - asked, 2) if w else None,
                         "warm_s": round(w[-1][1] - w[0][0], 2) if w else None,
                         "routable_again_s": _since(times.get("rewarm_back"), asked),
                         "ready_again_s": _since(times.get("rewarm_ready"), asked)}
    out["gateway"] = rec["gateway_metrics"]
    return out


def gateway_counters(text: str) -> dict[str, float]:
    """A few of the gateway's own counters from its /metrics."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if not m:
            continue
        name, labels, value = m[1], m[2] or "", float(m[3])
        if name == "warmgw_warmup_requests_total":
            out["warmup_requests"] = value
        elif name == "warmgw_warmups_total":
            key = "warmups_" + re.sub(r'.*outcome="([^"]*)".*', r"\1", labels)
            out[key] = value
        elif name == "warmgw_requests_total":
            code = re.sub(r'.*code="([^"]*)".*', r"\1", labels)
            out[f"requests_{code}"] = out.get(f"requests_{code}", 0) + value
        elif name == "warmgw_replica_transitions_total":
            key = "transitions_to_" + re.sub(r'.*to="([^"]*)".*', r"\1", labels)
            out[key] = value
    return out


# -- result.json --------------------------------------------------------------------------


def _plain(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def run_record(run: JoinRun) -> dict[str, Any]:
    rec = asdict(run)
    rec["samples"] = [
        {"t": round(s.t, 4), "lat": _plain(round(s.lat, 5)), "ttfb": _plain(round(s.ttfb, 5)),
         "ok": s.ok, "replica": s.replica, "status": s.status, "error": s.error}
        for s in run.samples
    ]
    rec["requests"] = {n: [[round(a, 4), round(b, 4), *rest] for a, b, *rest in rs]
                       for n, rs in run.requests.items()}
    return rec


def result(s: Scenario, p: JoinParams, runs: Sequence[JoinRun],
           meta: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        **meta, "quick": s.quick,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": asdict(p), "spec": {k: v for k, v in s.raw.items() if k != "fleet"},
        "sim": asdict(s.fleet.sim), "runs": {r.strategy: run_record(r) for r in runs},
    }
    for rec in data["runs"].values():
        rec["summary"] = summarise(rec, data["params"])
    return data


def _clean(x: Any) -> Any:
    """NaN (a percentile of nothing) as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(_clean(data), allow_nan=False, separators=(",", ":")) + "\n")


# -- report.md ----------------------------------------------------------------------------


def _f(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.0f}{unit}" if abs(x) >= 100 else f"{x:.1f}{unit}" if abs(x) >= 10 \
            else f"{x:.2f}{unit}"
    return f"{x}{unit}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---" if i == 0 else "--:" for i in range(len(head))]
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _spark(xs: Sequence[int]) -> str:
    return "".join(str(x) if x < 10 else "+" for x in xs)


LABELS = {"warm": "warmgw (warm)", "round_robin": "round_robin (no warmup)",
          "prewarmed": "round_robin, newcomers already warm"}


def markdown(data: Mapping[str, Any]) -> str:
    p = data["params"]
    sim = data["sim"]
    w = data["spec"]["workload"]
    lines = [
        f"# join: {p['join']} cold replicas join a warm fleet of {p['fleet']} at once",
        "",
        f"`{data['command']}` ({data['started']} - {data['finished']}; "
        f"{data['machine']['cores']} cores, Python {data['machine']['python']}).",
        "",
        f"User load: Poisson {w['arrivals']['rate']} req/s through the gateway; prompts of "
        f"{', '.join(str(k) for k in w['prompt_words'])} words, max_tokens "
        f"{', '.join(str(k) for k in w['max_tokens'])}, half streamed, half chat. Simulated "
        f"replica: TTFT {sim['ttft_base'] * 1000:g} ms + {sim['ttft_per_prompt_token'] * 1e6:g}"
        f" us/token, {sim['itl'] * 1000:g} ms/token, max_running {sim['max_running']}; "
        f"cold start {sim['cold_shape_penalty']:g} s per new prompt bucket + "
        f"{sim['cold_batch_penalty']:g} s per new batch size. Gateway warmup.max_concurrent "
        f"{p['max_concurrent']}" + (f", health.metrics_every {p['metrics_every']}"
                                    if p.get("metrics_every") else "") + ".",
        "",
        "## Summary (latency in ms, steady / during the join)",
        "",
    ]
    rows = []
    for name, rec in data["runs"].items():
        s = rec["summary"]
        st = s["phases"].get("steady", {}).get("lat", {})
        du = s["phases"].get("during", {}).get("lat", {})
        j, cpu = s["join"], s.get("cpu", {})
        pair = [f"{_f(st.get(q))} / {_f(du.get(q))}" for q in ("p50", "p99", "p99.9", "max")]
        rows.append([
            LABELS.get(name, name) + ("" if s["status"] == "ok" else f" ({s['status']})"),
            str(s["user_cold_hits"]), str(s["errors"]), *pair,
            _f((s.get("ratio") or {}).get("p99.9")), _f((s.get("ratio_fleet") or {}).get("p99.9")),
            f"{j['ready_at_end']}/{j['replicas']}",
            _f(j["all_routable_s"], " s"), _f(j["all_ready_s"], " s"),
            f"{_f(cpu.get('steady', {}).get('gateway'))} / "
            f"{_f(cpu.get('during', {}).get('gateway'))}",
            _f(cpu.get("during", {}).get("host")),
        ])
    lines += _table(["run", "user requests on a cold replica", "errors", "p50", "p99",
                     "p99.9", "max", "p99.9 during / steady",
                     "same, requests served by the fleet", "newcomers at full weight",
                     "all routable after", "all at full weight after",
                     "gateway CPU steady / during (cores)", "machine busy during (cores)"],
                    rows)
    for name, rec in data["runs"].items():
        lines += ["", *_run_section(name, rec)]
    return "\n".join(lines) + "\n"


def _run_section(name: str, rec: Mapping[str, Any]) -> list[str]:
    s = rec["summary"]
    out = [f"## {LABELS.get(name, name)}", ""]
    if s["note"]:
        out += [f"Note: {s['note']}", ""]
    rows = []
    for ph, x in s["phases"].items():
        rows.append([ph, f"{x['from']:.1f}-{x['to']:.1f}", str(x["requests"]), str(x["errors"]),
                     " / ".join(_f(x["ttft"][q]) for q in ("p50", "p99", "p99.9", "max")),
                     " / ".join(_f(x["lat"][q]) for q in ("p50", "p99", "p99.9", "max"))])
    for ph, x in s["phases_fleet"].items():
        rows.append([f"{ph}, served by the fleet", "", str(x["requests"]), str(x["errors"]),
                     " / ".join(_f(x["ttft"][q]) for q in ("p50", "p99", "p99.9", "max")),
                     " / ".join(_f(x["lat"][q]) for q in ("p50", "p99", "p99.9", "max"))])
    out += _table(["phase", "s", "requests", "errors", "TTFT p50 / p99 / p99.9 / max (ms)",
                   "latency p50 / p99 / p99.9 / max (ms)"], rows)
    out += ["", f"User requests on newcomers: {s['user_requests_newcomers']}; that paid a "
                f"cold start: {s['user_cold_hits']} (newcomers {s['user_cold_hits_newcomers']};"
                f" the replicas' request logs: {s['paid_cold_in_log']}); cold starts paid by "
                f"warmup requests: {s['warmup_cold_hits']}."]
    if s["error_kinds"]:
        out += ["", "Errors: " + "; ".join(f"{n} x {k}" for k, n in s["error_kinds"].items())]
    wu = s.get("warmup")
    if wu and wu["replicas_warmed"]:
        out += ["", f"Warmup, from the replicas' logs: {wu['replicas_warmed']} replicas warmed "
                    f"after the join (newcomers, and f0 when rewarmed); at most "
                    f"**{wu['max_replicas_warming']}** at once "
                    f"(max_concurrent {wu['max_concurrent']}; with a warmup request in "
                    f"flight: {wu['max_replicas_with_request']}; warmup requests in flight: "
                    f"{wu['max_warmup_requests_in_flight']}), {wu['mean_replicas_warming']} on "
                    f"average. Per replica {wu.get('per_replica_s', {}).get('p50')} s (p50), "
                    f"{wu.get('per_replica_s', {}).get('max')} s (max); the last began "
                    f"{wu.get('last_started_s')} s after the join, all done after "
                    f"{wu.get('all_warmed_s')} s."]
        if wu.get("timeline"):
            out += ["", f"Replicas being warmed, each second from the join: "
                        f"`{_spark(wu['timeline'])}`"]
    if "solo" in s:
        so = s["solo"]
        out += ["", f"One replica alone (s0): warmed in {_f(so['warm_s'], ' s')}, routable "
                    f"{_f(so['routable_s'], ' s')} and at full weight {_f(so['ready_s'], ' s')}"
                    " after it was added."]
    if "scaling" in s:
        sc = s["scaling"]
        out += ["", f"Scaling: ceil({s['join']['replicas']} / {wu['max_concurrent']}) = "
                    f"{sc['batches']} x {_f(s['solo']['warm_s'], ' s')} = "
                    f"{_f(sc['expected_s'], ' s')} expected; measured {_f(sc['measured_s'], ' s')}"
                    f" ({sc['ratio']}x)."]
    if "rewarm" in s:
        r = s["rewarm"]
        out += ["", f"Rewarm of f0 asked during the join: waited {_f(r['slot_wait_s'], ' s')} "
                    f"for a warmup slot, warmed in {_f(r['warm_s'], ' s')}, routable again after"
                    f" {_f(r['routable_again_s'], ' s')}, full weight after "
                    f"{_f(r['ready_again_s'], ' s')}."]
    cpu = s.get("cpu")
    if cpu:
        def row(ph: str) -> list[str]:
            c = cpu.get(ph, {})
            return [ph, *(_f(c.get(k)) for k in ("gateway", "sim_fleet", "sim_new", "loadgen",
                                                  "others", "host"))]
        out += ["", *_table(["cores", "gateway", "fleet sim", "newcomers sim",
                             "load generator", "other processes", "machine"],
                            [row("steady"), row("during")]),
                "", f"Peak over {CPU_WINDOW:g} s during the join: gateway "
                    f"{_f(cpu.get('gateway_peak_during'))} cores, machine "
                    f"{_f(cpu.get('host_peak_during'))} cores."]
    g = s.get("gateway") or {}
    if g:
        out += ["", "Gateway counters at the end: " + ", ".join(
            f"{k} {v:g}" for k, v in sorted(g.items()))]
    return out
