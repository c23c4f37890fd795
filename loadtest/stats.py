"""Pure summaries of benchmark runs: percentiles, rates, CPU per request, and each proxy
set against the direct target measured in the same rounds.

CPU per request can be pooled (all rounds' CPU over all their requests) or, as the
overhead benchmark reports it, the median of the rounds' figures; CPU ratios between two
targets are then the median of the ratios of the same rounds, which the targets ran side
by side, so that a slow stretch of a shared machine weighs on both sides of one ratio."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DIRECT = "direct"
CORES = os.cpu_count() or 1


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) of values, linear between closest ranks; nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Run:
    """One measured run: one target, one mode, one concurrency, one round."""

    target: str
    mode: str  # "json" or "stream"
    concurrency: int
    round: int
    elapsed: float
    lat_us: tuple[int, ...]
    ttfb_us: tuple[int, ...] = ()
    errors: int = 0
    error_samples: tuple[str, ...] = ()
    truncated: bool = False
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds spent in run
    # role -> CPU seconds that the per-thread figures missed (threads that exited)
    cpu_missed: dict[str, float] = field(default_factory=dict)
    others_cpu: float = 0.0  # CPU seconds the rest of the machine spent meanwhile
    host_cpu: float = 0.0  # CPU seconds the machine had meanwhile (busy or idle)

    @property
    def completed(self) -> int:
        return len(self.lat_us)


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def _per_req_us(seconds: float, n: int) -> float | None:
    return round(seconds * 1e6 / n, 1) if n else None


def _others_cores(runs: Sequence[Run]) -> float | None:
    """Cores busy outside the benchmark on average, as a share of the machine's capacity."""
    cap = sum(r.host_cpu for r in runs)
    return round(sum(r.others_cpu for r in runs) / cap * CORES, 2) if cap > 0 else None


def cpu_rounds(runs: Sequence[Run], role: str = "target") -> dict[int, float]:
    """Round -> CPU microseconds per request of role, for the rounds that completed some."""
    return {r.round: r.cpu[role] * 1e6 / r.completed
            for r in runs if r.completed and role in r.cpu}


def ratio_rounds(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """a over b round by round, for the rounds that both have (and b > 0), in round order."""
    return [round(a[k] / b[k], 3) for k in sorted(a.keys() & b.keys()) if b[k] > 0]


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarise_cell(runs: Sequence[Run], median_cpu: bool = False) -> dict[str, Any]:
    """Pool the rounds of one (mode, concurrency, target); CPU per request pooled too,
    or the median of the rounds' if median_cpu."""
    first = runs[0]
    lat = [x for r in runs for x in r.lat_us]
    ttfb = [x for r in runs for x in r.ttfb_us]
    n = len(lat)
    elapsed = sum(r.elapsed for r in runs)
    roles = sorted({k for r in runs for k in r.cpu})
    by_round = {role: cpu_rounds(runs, role) for role in roles}
    if median_cpu:
        cpu = {role: round(statistics.median(v.values()), 1) if v else None
               for role, v in by_round.items()}
    else:
        cpu = {role: _per_req_us(sum(r.cpu.get(role, 0.0) for r in runs), n) for role in roles}
    spent = sum(r.cpu.get("target", 0.0) for r in runs)
    out: dict[str, Any] = {
        "mode": first.mode,
        "concurrency": first.concurrency,
        "target": first.target,
        "rounds": len(runs),
        "requests": n,
        "errors": sum(r.errors for r in runs),
        "error_samples": [s for r in runs for s in r.error_samples][:5],
        "truncated": any(r.truncated for r in runs),
        "rps": round(n / elapsed, 1) if elapsed > 0 else None,
        "rps_rounds": [round(r.completed / r.elapsed, 1) for r in runs if r.elapsed > 0],
        "p50_ms": _ms(percentile(lat, 50)),
        "p90_ms": _ms(percentile(lat, 90)),
        "p99_ms": _ms(percentile(lat, 99)),
        "p50_ms_rounds": [_ms(percentile(r.lat_us, 50)) for r in runs],
        # cores busy outside the benchmark's processes: other load on a shared machine
        "others_cores": _others_cores(runs),
        "cpu_us_per_req": cpu,
        "cpu_us_per_req_rounds": {role: [round(v[k], 1) for k in sorted(v)]
                                  for role, v in by_round.items()},
        # the target's CPU that the per-thread figures missed, as a share of what they read
        "cpu_missed_share": round(sum(r.cpu_missed.get("target", 0.0) for r in runs) / spent, 4)
        if spent > 0 else None,
    }
    if ttfb:
        out["ttfb_p50_ms"] = _ms(percentile(ttfb, 50))
        out["ttfb_p99_ms"] = _ms(percentile(ttfb, 99))
    return out


def summarise(
    runs: Sequence[Run], gateway: str | None = None, compare: str | None = None
) -> list[dict[str, Any]]:
    """One row per (mode, concurrency, target) in first-seen order, CPU per request the
    median of the rounds'; proxies compared with the direct target of the same mode and
    concurrency, and with the gateway if named (req/s, pooled, and proxy CPU per request,
    median of the rounds' ratios: the target's over the gateway's). If compare names
    another target (another tree's gateway), the gateway's row also gets its CPU per
    request over compare's, median of the rounds' ratios."""
    cells: dict[tuple[str, int, str], list[Run]] = {}
    for r in runs:
        cells.setdefault((r.mode, r.concurrency, r.target), []).append(r)
    rows = {key: summarise_cell(rs, median_cpu=True) for key, rs in cells.items()}
    for (mode, c, target), row in rows.items():
        base = rows.get((mode, c, DIRECT))
        if target == DIRECT or base is None:
            continue
        if row["rps"] and base["rps"]:
            row["rps_ratio"] = round(row["rps"] / base["rps"], 3)
        row["added_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)
        row["added_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 3)
        pairs = zip(row["p50_ms_rounds"], base["p50_ms_rounds"], strict=False)
        row["added_p50_ms_rounds"] = [round(a - b, 3) for a, b in pairs]
    for (mode, c, target), row in rows.items():
        gw = rows.get((mode, c, gateway)) if gateway else None
        if target == DIRECT or gw is None:
            continue
        if row["rps"] and gw["rps"]:
            row["rps_vs_gateway"] = round(row["rps"] / gw["rps"], 3)
        ratios = ratio_rounds(cpu_rounds(cells[mode, c, target]),
                              cpu_rounds(cells[mode, c, str(gateway)]))
        if ratios:
            row["cpu_vs_gateway"] = _median(ratios)
            row["cpu_vs_gateway_rounds"] = ratios
        if target == gateway and compare and (mode, c, compare) in cells:
            ratios = ratio_rounds(cpu_rounds(cells[mode, c, target]),
                                  cpu_rounds(cells[mode, c, compare]))
            row["cpu_vs_compare"] = _median(ratios)
            row["cpu_vs_compare_rounds"] = ratios
    return list(rows.values())
