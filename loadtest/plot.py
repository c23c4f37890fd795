"""plot.png: latency over time, one line per strategy, aligned on the event time (T0 = 0).

Top: p99 of whole-request latency in 0.5 s windows (log scale). Bottom: successful
requests per second (by start time) in the same windows. Dashed vertical lines: each
strategy's events (in its colour); the shaded span is the `during` phase of the first
strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadtest.summary import percentile

BIN = 0.5  # s
COLOURS = {"warm": "#1b7837", "slow_start": "#762a83", "round_robin": "#d6604d",
           "envoy": "#2166ac", "haproxy": "#e08214"}


def series(samples: list[Mapping[str, Any]], t0: float, t_from: float, t_to: float,
           q: float = 99.0) -> tuple[list[float], list[float], list[float]]:
    """(bin centres relative to t0, p_q latency in ms, completed req/s) per BIN window."""
    n = max(1, math.ceil((t_to - t_from) / BIN))
    lat: list[list[float]] = [[] for _ in range(n)]
    for s in samples:
        i = int((s["t"] - t_from) // BIN)
        if 0 <= i < n and s["ok"] and s["lat"] is not None:
            lat[i].append(s["lat"])
    xs, ps, rates = [], [], []
    for i, bucket in enumerate(lat):
        xs.append(t_from + (i + 0.5) * BIN - t0)
        ps.append(percentile(bucket, q) * 1000.0 if bucket else math.nan)
        rates.append(len(bucket) / BIN)
    return xs, ps, rates


def plot(data: Mapping[str, Any], path: Path) -> bool:
    """Write the plot; False when matplotlib is missing or nothing ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = {k: v for k, v in data["strategies"].items()
            if v["status"] == "ok" and "during" in v["phases"]}
    if not runs:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    shaded = False
    for name, rec in runs.items():
        colour = COLOURS.get(name)
        t0 = rec["phases"]["during"][0]
        t_from = rec["phases"]["steady"][0]
        t_to = rec["phases"]["after"][1] if "after" in rec["phases"] else t0
        xs, ps, rates = series(rec["samples"], t0, t_from, t_to)
        cold = rec["summary"].get("cold_hits", 0)
        width, z = (2.2, 3) if name == "warm" else (1.3, 2)  # warmgw drawn on top
        top.plot(xs, ps, label=f"{name} (cold hits {cold})", color=colour, linewidth=width,
                 zorder=z)
        bottom.plot(xs, rates, color=colour, linewidth=1.0, zorder=z)
        for e in rec["events"]:
            for ax in (top, bottom):
                ax.axvline(e["t"] - t0, color=colour or "grey", linestyle="--",
                           linewidth=0.8, alpha=0.7)
        if not shaded:
            d0, d1 = rec["phases"]["during"]
            for ax in (top, bottom):
                ax.axvspan(0.0, d1 - d0, color="grey", alpha=0.08)
            shaded = True
    top.set_yscale("log")
    top.set_ylabel(f"p99 latency per {BIN:g} s (ms)")
    events = "; ".join(dict.fromkeys(e["what"] for r in runs.values() for e in r["events"]))
    title = f"{data['scenario']}: {events}" if events else data["scenario"]
    top.set_title(title[:110], fontsize=11)
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    bottom.set_ylabel("ok req/s")
    bottom.set_xlabel("seconds since the event (T0); dashed: events; shaded: during")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
