"""Pure summaries of benchmark runs: percentiles, rates, CPU per request, and each proxy
set against the direct target measured in the same rounds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
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


def summarise_cell(runs: Sequence[Run]) -> dict[str, Any]:
    """Pool the rounds of one (mode, concurrency, target)."""
    first = runs[0]
    lat = [x for r in runs for x in r.lat_us]
    ttfb = [x for r in runs for x in r.ttfb_us]
    n = len(lat)
    elapsed = sum(r.elapsed for r in runs)
    roles = sorted({k for r in runs for k in r.cpu})
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
        "cpu_us_per_req": {
            role: _per_req_us(sum(r.cpu.get(role, 0.0) for r in runs), n) for role in roles
        },
    }
    if ttfb:
        out["ttfb_p50_ms"] = _ms(percentile(ttfb, 50))
        out["ttfb_p99_ms"] = _ms(percentile(ttfb, 99))
    return out


def summarise(runs: Sequence[Run], gateway: str | None = None) -> list[dict[str, Any]]:
    """One row per (mode, concurrency, target) in first-seen order, proxies compared with
    the direct target of the same mode and concurrency, and with the gateway if named
    (req/s and proxy CPU per request as ratios: the target's over the gateway's)."""
    cells: dict[tuple[str, int, str], list[Run]] = {}
    for r in runs:
        cells.setdefault((r.mode, r.concurrency, r.target), []).append(r)
    rows = {key: summarise_cell(rs) for key, rs in cells.items()}
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
        cpu, gw_cpu = row["cpu_us_per_req"].get("target"), gw["cpu_us_per_req"].get("target")
        if cpu is not None and gw_cpu:
            row["cpu_vs_gateway"] = round(cpu / gw_cpu, 3)
    return list(rows.values())
