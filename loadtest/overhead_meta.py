"""What the overhead benchmark's result says about how it was run: the trees measured, the
machine, the options, and whether the run meets the project's standard for a CPU
comparison (20,000 requests per cell or more, in 5 interleaved rounds or more)."""

from __future__ import annotations

import os
import platform
import runpy
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.stats import Run

STANDARD_REQUESTS = 20_000  # per cell (mode, concurrency, target)
STANDARD_ROUNDS = 5

CPU_SOURCE = (
    "/proc/PID/task/*/schedstat, first field (ns on CPU), every thread of the proxy's "
    "process and its descendants; the median of the rounds' CPU per request. Threads that "
    "exit within a round lose that round's time: the processes' CPU clocks, which keep it, "
    "are read too and the shortfall is reported as cpu_missed"
)


def run_json(r: Run) -> dict[str, Any]:
    """One run as the result file keeps it (without its latencies)."""
    d = asdict(r)
    del d["lat_us"], d["ttfb_us"]
    d["completed"] = r.completed
    d["cpu_us_per_req"] = {k: round(v * 1e6 / r.completed, 1) if r.completed else None
                           for k, v in r.cpu.items()}
    d["cpu_missed_us_per_req"] = {
        k: round(v * 1e6 / r.completed, 1) if r.completed else None
        for k, v in r.cpu_missed.items()
    }
    return d


def tree(src: Path) -> dict[str, Any]:
    """A warmgw source tree: its path and, if it is the top of a git checkout, its commit
    and the files under warmgw/ changed from it (what ran, if not the commit)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True,
                                 text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.rstrip("\n")  # keep the leading blank of " M file"

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != src.resolve():  # not a checkout (maybe inside one)
        return {"path": str(src), "commit": None, "short": None, "warmgw_changes": [],
                **build(src)}
    changed = git("status", "--porcelain", "--", "warmgw")
    return {"path": str(src), "commit": git("rev-parse", "HEAD") or None,
            "short": git("rev-parse", "--short", "HEAD") or None,
            "warmgw_changes": [line[3:] for line in changed.splitlines()], **build(src)}


def build(src: Path) -> dict[str, Any]:
    """How a tree's request path runs: compiled (its warmgw/native.py's modules with an
    extension beside them; none before that file existed) and which extensions are older
    than their source (the old code would run)."""
    f = src / "warmgw" / "native.py"
    if not f.exists():
        return {"compiled": 0, "compilable": 0, "stale": []}
    ns = runpy.run_path(str(f))  # its ROOT is src
    return {"compiled": sum(ns["extension"](m) is not None for m in ns["MODULES"]),
            "compilable": len(ns["MODULES"]), "stale": ns["stale"]()}


def build_label(t: Mapping[str, Any]) -> str:
    if not t["compilable"]:
        return "interpreted"
    if t["compiled"] == t["compilable"]:
        return "compiled (mypyc)"
    return "interpreted" if not t["compiled"] else f"{t['compiled']}/{t['compilable']} compiled"


def tree_label(t: dict[str, Any]) -> str:
    """A tree's short commit (+ "-dirty" if its warmgw/ differs from it), else its folder's
    name."""
    if not t["short"]:
        return Path(t["path"]).name
    return str(t["short"]) + ("-dirty" if t["warmgw_changes"] else "")


def stale_trees(*trees: dict[str, Any] | None) -> str | None:
    """Why the benchmark would measure old code, if it would."""
    for t in trees:
        if t is not None and t["stale"]:
            return (f"{t['path']}: compiled modules older than their source "
                    f"({', '.join(t['stale'])}): `make native` there")
    return None


def meets_standard(requests: int, rounds: int) -> bool:
    return requests >= STANDARD_REQUESTS and rounds >= STANDARD_ROUNDS


def meta(options: dict[str, Any], elapsed: float, incomplete: bool, repo: Path,
         compare: dict[str, Any] | None, clk_tck: int) -> dict[str, Any]:
    import aiohttp

    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": options,
        "elapsed_s": round(elapsed, 1),
        "incomplete": incomplete,
        "meets_cpu_standard": meets_standard(options["requests"], options["rounds"]),
        "cpus": os.cpu_count(),
        "loadavg_after": loadavg,
        "clk_tck": clk_tck,  # /proc/stat (the machine's busy time) is in clock ticks
        "git": tree(repo),
        "compare": compare,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpu_source": CPU_SOURCE,
    }
