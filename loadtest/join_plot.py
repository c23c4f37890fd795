"""join.png: the join benchmark over time, every run aligned on the join (T = 0).

Top: p99 of user request latency per 0.5 s window (log scale), one line per run.
Bottom (warmgw's run): newcomers in rotation (ramping or ready) and at full weight, from
the gateway's status every 0.5 s, and replicas being warmed at once, from the replicas'
own request logs (right axis).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadtest.join_report import LABELS, timeline
from loadtest.plot import series

COLOURS = {"warm": "#1b7837", "round_robin": "#d6604d", "prewarmed": "#2166ac"}


def plot(data: Mapping[str, Any], path: Path) -> bool:
    """Write the plot; False when matplotlib is missing or nothing ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = {k: v for k, v in data["runs"].items()
            if v["status"] == "ok" and "during" in v["phases"]}
    if not runs:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    for name, rec in runs.items():
        t0 = rec["phases"]["during"][0]
        xs, ps, _ = series(rec["samples"], t0, rec["phases"]["steady"][0],
                           rec["phases"]["after"][1])
        s = rec["summary"]
        top.plot(xs, ps, color=COLOURS.get(name), linewidth=2.0 if name == "warm" else 1.2,
                 label=f"{LABELS.get(name, name)} (user requests on a cold replica: "
                       f"{s['user_cold_hits']})", zorder=3 if name == "warm" else 2)
    top.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
    top.set_yscale("log")
    top.set_ylabel("p99 latency per 0.5 s (ms)")
    p = data["params"]
    top.set_title(f"{p['join']} cold replicas join a warm fleet of {p['fleet']} at T = 0 "
                  f"(warmup.max_concurrent {p['max_concurrent']})", fontsize=11)
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="upper right", fontsize=8)

    warm = runs.get("warm")
    if warm is not None:
        t0 = warm["phases"]["during"][0]
        tr = [x for x in warm["trace"] if x["t"] >= warm["phases"]["steady"][0]]
        ts = [x["t"] - t0 for x in tr]
        n = warm["summary"]["join"]["replicas"]
        inrot = [min(n, x["newcomers"].get("ramping", 0) + x["newcomers"].get("ready", 0))
                 for x in tr]
        full = [min(n, x["newcomers"].get("ready", 0)) for x in tr]
        bottom.plot(ts, inrot, color="#1b7837", label="newcomers in rotation")
        bottom.plot(ts, full, color="#1b7837", linestyle=":", label="at full weight")
        bottom.set_ylabel("replicas (warmgw)")
        right = bottom.twinx()
        end = warm["phases"]["after"][1]
        counts = timeline(warm["requests"], t0, end)
        right.step([i * 1.0 for i in range(len(counts))], counts, where="post",
                   color="#e08214", label="being warmed at once")
        right.set_ylim(0, max(p["max_concurrent"], *counts, 1) + 1)
        right.set_ylabel("being warmed", color="#e08214")
        lines = bottom.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        bottom.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    bottom.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
    bottom.set_xlabel("seconds since the join")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
