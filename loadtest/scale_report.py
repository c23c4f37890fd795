"""The scale benchmark's summaries and printed tables (pure: cells in, rows and text out)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from loadtest import scale_core
from loadtest.stats import Run, percentile, summarise_cell

# figures compared with the first fleet size, as figure(N) / figure(first N)
RATIOS = ("rps", "p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms", "cpu_us_per_req",
          "net_cpu_us_per_req", "idle_cores", "ready_s", "metrics_ms", "status_ms",
          "loop_max_ms", "metrics_load_ms", "status_load_ms")


def with_ratios(rows: list[dict[str, Any]], figures: Sequence[str]) -> list[dict[str, Any]]:
    """Each row gains `ratio`: figure / the same figure of the first row (the smallest N)."""
    base = rows[0]
    for row in rows:
        row["ratio"] = {
            k: round(row[k] / base[k], 2) if base.get(k) and row.get(k) is not None else None
            for k in figures
        }
    return rows


CORE_RATIOS = ("pick_ready_us", "pick_churn_us", "change_us", "rebuild_us", "tick_us",
               "sync_us", "pod_event_us", "core_ms_per_s")


def core_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Part B's rows, with what the core costs per second at 1,000 requests/s and the
    churn measured (picks + changes + ticks), and the ratios."""
    for row in rows:
        per_s = (row["pick_churn_us"] * 1000 + row["change_us"] * row["changes_per_s"]
                 + row["tick_us"] / (scale_core.TICK_EVERY * scale_core.PICK_DT))
        row["core_ms_per_s"] = round(per_s / 1000, 2)
    return with_ratios(rows, CORE_RATIOS) if rows else rows


def summarise(cells: Sequence[Mapping[str, Any]], fleets: Sequence[int]) -> list[dict[str, Any]]:
    """One row per fleet size measured, its rounds pooled."""
    rows = []
    for n in fleets:
        mine = [c for c in cells if c["n"] == n]
        if mine:
            rows.append(_row(n, mine))
    if not rows:
        return rows
    base = rows[0]["per_round"]
    for row in rows:  # each round's figure over the first N's in the same round
        for key in PAIRED:
            pairs = sorted(
                round(v[key] / base[r][key], 2) for r, v in row["per_round"].items()
                if r in base and base[r][key]
            )
            row[f"{key}_ratio_rounds"] = pairs
            row[f"{key}_ratio_median"] = statistics.median(pairs) if pairs else None
    return with_ratios(rows, RATIOS)


# figures also compared round by round (N's rounds with the first N's same round)
PAIRED = ("net_cpu_us_per_req", "added_p50_ms")


def _per_round(c: Mapping[str, Any]) -> dict[str, float]:
    gw = next(r for r in c["runs"] if r.target == "gateway")
    direct = next(r for r in c["runs"] if r.target == "direct")
    net = gw.cpu["gateway"] - c["idle"]["gateway"] * gw.elapsed
    return {
        "net_cpu_us_per_req": round(net * 1e6 / gw.completed, 1) if gw.completed else 0.0,
        "added_p50_ms": round((percentile(gw.lat_us, 50) - percentile(direct.lat_us, 50))
                              / 1000, 3),
        "p99_ms": round(percentile(gw.lat_us, 99) / 1000, 3),
        "rps": round(gw.completed / gw.elapsed, 1) if gw.elapsed else 0.0,
    }


def _row(n: int, cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    runs: list[Run] = [r for c in cells for r in c["runs"]]
    gw = summarise_cell([r for r in runs if r.target == "gateway"])
    direct = summarise_cell([r for r in runs if r.target == "direct"])
    idle = statistics.fmean(c["idle"]["gateway"] for c in cells)
    gw_runs = [r for r in runs if r.target == "gateway"]
    done = sum(r.completed for r in gw_runs)
    busy = sum(r.cpu["gateway"] for r in gw_runs)
    background = idle * sum(r.elapsed for r in gw_runs)
    return {
        "n": n,
        "rounds": len(cells),
        "requests": gw["requests"],
        "errors": gw["errors"] + direct["errors"],
        "error_samples": (gw["error_samples"] + direct["error_samples"])[:5],
        "truncated": gw["truncated"] or direct["truncated"],
        "rps": gw["rps"],
        "p50_ms": gw["p50_ms"],
        "p99_ms": gw["p99_ms"],
        "rps_rounds": gw["rps_rounds"],
        "direct_rps": direct["rps"],
        "direct_p50_ms": direct["p50_ms"],
        "direct_p99_ms": direct["p99_ms"],
        "added_p50_ms": round(gw["p50_ms"] - direct["p50_ms"], 3),
        "added_p99_ms": round(gw["p99_ms"] - direct["p99_ms"], 3),
        "cpu_us_per_req": gw["cpu_us_per_req"].get("gateway"),
        # what the requests cost beyond what the gateway spends anyway with N replicas
        "net_cpu_us_per_req": round((busy - background) * 1e6 / done, 1) if done else None,
        "sim_cpu_us_per_req": gw["cpu_us_per_req"].get("sim"),
        "others_cores": gw["others_cores"],
        "idle_cores": round(idle, 4),
        "idle_us_per_replica_s": round(idle * 1e6 / n, 1),
        "sim_idle_cores": round(statistics.fmean(c["idle"]["sim"] for c in cells), 4),
        "sim_s": round(statistics.median(c["sim_s"] for c in cells), 2),
        "ready_s": round(statistics.median(c["ready_s"] for c in cells), 2),
        "metrics_ms": round(statistics.median(c["metrics_ms"] for c in cells), 1),
        "metrics_kib": round(max(c["metrics_bytes"] for c in cells) / 1024, 1),
        "status_ms": round(statistics.median(c["status_ms"] for c in cells), 1),
        "gateway_fds": max(c["gateway_fds"] for c in cells),
        "ejected": sum(c["ejected"] for c in cells),
        "ejections": [e for c in cells for e in c.get("ejections", [])][:10],
        "ready_after": min(c["ready_after"] for c in cells),
        "per_round": {str(c["round"]): _per_round(c) for c in cells},
        **_loop(cells),
    }


def _loop(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Under load: the longest loop step of any round (and what ran), the scrape and status
    times (median of the rounds' medians, and the slowest)."""
    timed = [c for c in cells if c.get("loop_max_ms") is not None]
    worst = max(timed, key=lambda c: c["loop_max_ms"]) if timed else None
    watched = [c for c in cells if c.get("scrapes")]

    def med(key: str) -> float | None:
        return round(statistics.median(c[key] for c in watched), 1) if watched else None

    return {
        "loop_max_ms": worst["loop_max_ms"] if worst else None,
        "loop_max_what": worst["loop_max_what"] if worst else "",
        "loop_steps": sum(c.get("loop_steps", 0) for c in cells),
        "metrics_load_ms": med("metrics_load_ms"),
        "metrics_load_max_ms": max((c["metrics_load_max_ms"] for c in watched), default=None),
        "status_load_ms": med("status_load_ms"),
        "status_load_max_ms": max((c["status_load_max_ms"] for c in watched), default=None),
        "scrapes": sum(c.get("scrapes", 0) for c in cells),
    }


def cell_json(c: Mapping[str, Any]) -> dict[str, Any]:
    """One (N, round) for the JSON file: the runs without their latency lists."""
    out = {k: v for k, v in c.items() if k != "runs"}
    out["runs"] = [
        {"target": r.target, "requests": r.completed, "elapsed": round(r.elapsed, 3),
         "rps": round(r.completed / r.elapsed, 1) if r.elapsed else None,
         "errors": r.errors, "cpu_s": {k: round(v, 3) for k, v in r.cpu.items()}}
        for r in c["runs"]
    ]
    return out


# -- text --------------------------------------------------------------------------------------


def _fmt(row: Mapping[str, Any], key: str, fmt: str, ratio: bool = True) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if isinstance(v, list):  # ratios, one a round: their median and range
        return f"{statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})" if v else "-"
    s = format(v, fmt)
    r = row.get("ratio", {}).get(key)
    return f"{s} ({r:.2f}x)" if ratio and r is not None and row is not None else s


def _table(rows: Sequence[Mapping[str, Any]],
           cols: Sequence[tuple[str, str, str, bool]]) -> str:
    head = [c[0] for c in cols]
    body = [[_fmt(row, key, fmt, ratio) for _, key, fmt, ratio in cols] for row in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


PER_REQUEST = (
    ("N", "n", "d", False), ("req/s", "rps", ".0f", True), ("p50 ms", "p50_ms", ".2f", True),
    ("p99 ms", "p99_ms", ".2f", True), ("+p50 ms", "added_p50_ms", "+.2f", True),
    ("+p99 ms", "added_p99_ms", "+.2f", True), ("CPU us/req", "cpu_us_per_req", ".0f", True),
    ("net of idle", "net_cpu_us_per_req", ".0f", True),
    ("net, round by round", "net_cpu_us_per_req_ratio_rounds", "", False),
    ("direct req/s", "direct_rps", ".0f", False),
    ("others cores", "others_cores", ".2f", False), ("errors", "errors", "d", False),
)
PER_FLEET = (
    ("N", "n", "d", False), ("idle CPU cores", "idle_cores", ".3f", True),
    ("us/replica/s", "idle_us_per_replica_s", ".0f", False),
    ("sim idle cores", "sim_idle_cores", ".3f", False), ("all READY s", "ready_s", ".1f", True),
    ("/metrics ms", "metrics_ms", ".1f", True), ("KiB", "metrics_kib", ".0f", False),
    ("status ms", "status_ms", ".1f", True), ("gateway fds", "gateway_fds", "d", False),
    ("ejected", "ejected", "d", False),
)

PER_LOOP = (
    ("N", "n", "d", False), ("longest loop step, ms CPU", "loop_max_ms", ".2f", True),
    ("loop steps", "loop_steps", "d", False), ("scrapes", "scrapes", "d", False),
    ("/metrics ms loaded", "metrics_load_ms", ".1f", True),
    ("max", "metrics_load_max_ms", ".1f", False),
    ("status ms loaded", "status_load_ms", ".1f", True),
    ("max", "status_load_max_ms", ".1f", False),
)
LOOP_TARGET_MS = 5.0


PER_CORE = (
    ("N", "n", ".0f", False), ("pick us, all ready", "pick_ready_us", ".2f", True),
    ("pick us, churning", "pick_churn_us", ".2f", True), ("ramping", "ramping_avg", ".1f", False),
    ("changes/s", "changes_per_s", ".0f", False), ("per change us", "change_us", ".0f", True),
    ("rebuild us", "rebuild_us", ".0f", True), ("tick us", "tick_us", ".0f", True),
    ("sync us", "sync_us", ".0f", True), ("pod event us", "pod_event_us", ".0f", True),
    ("core ms/s", "core_ms_per_s", ".1f", True),
)


def text(results: Mapping[str, Any]) -> str:
    m = results["meta"]
    o = m["options"]
    out = []
    rows = results.get("gateway")
    if rows:
        out.append(
            f"A. gateway in front of N simulated replicas (ttft 0, itl 0), {o['addressing']} "
            f"addressing; {o['concurrency']} clients, JSON completions; {rows[0]['rounds']} "
            f"round(s) of {o['requests'] // o['rounds']} requests per N and target; "
            f"{m['cpus']} CPUs" + (" [PROFILED: not comparable]" if m["profiled"] else "")
        )
        out.append(_table(rows, PER_REQUEST))
        out.append("+p50/+p99: over the same load sent straight to one replica of that "
                   "fleet; CPU: the gateway's, from /proc, while loaded; net of idle: minus its "
                   "idle rate over the same time; round by round: each round's net CPU over "
                   "the first N's in the same round, median (range)")
        out.append("")
        out.append(_table(rows, PER_FLEET))
        out.append("idle: gateway CPU per second with no traffic (health checks, /metrics "
                   "reads); all READY: from the gateway's start until N replicas are READY")
        if any(r.get("scrapes") for r in rows):
            out.append("")
            out.append(_table(rows, PER_LOOP))
            out.append(f"under load, /metrics scraped and the admin status read every "
                       f"{o.get('watch_every', 1.0):g} s; longest loop step: the thread CPU "
                       f"time of the longest event-loop callback (WARMGW_LOOP_STEPS), target "
                       f"< {LOOP_TARGET_MS:g} ms")
            for r in rows:
                if r.get("loop_max_ms") is not None:
                    verdict = "ok" if r["loop_max_ms"] < LOOP_TARGET_MS else "OVER"
                    out.append(f"  N={r['n']}: longest step {r['loop_max_ms']:.2f} ms "
                               f"({r['loop_max_what']}) {verdict}")
    core = results.get("core")
    if core:
        c = core["options"]
        out.append("")
        out.append(
            f"B. registry + picker in process (fake clock), {c['picks']} picks per loop, "
            f"{INFLIGHT_NOTE}; churning: {c['churn']:.0%} of the fleet out of READY, a state "
            f"change every {c['change_every']} picks (1 ms each), ticks every 0.1 s; "
            f"median of {c['rounds']} round(s)"
        )
        out.append(_table(core["rows"], PER_CORE))
        out.append("pick us: snapshot + route + pick + in-flight + observe, per request "
                   "(churning: without the changes' and ticks' own time); per change: one "
                   "lifecycle call + the snapshot rebuild it causes; core ms/s: CPU ms per "
                   "second at 1,000 req/s with that churn (picks + changes + 10 ticks)")
    return "\n".join(out)


INFLIGHT_NOTE = f"{scale_core.INFLIGHT} in flight"
