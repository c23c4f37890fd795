"""What a benchmark sends load to: a URL, and the processes whose CPU is the target's.

A `Starter` takes the replica's URL and returns a started `Target` (or `Unavailable` with
a note); adding a proxy to compare means writing one starter (see loadtest.peers).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadtest.procs import Children, free_port


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # base URL; requests go to url + /v1/completions
    pids: tuple[int, ...]  # this target's processes (their descendants are counted too)
    proxy: bool = True  # False for the replica itself
    # named groups of pids whose CPU is also reported apart (e.g. Envoy and its EPP)
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Unavailable:
    name: str
    note: str


Starter = Callable[[Children, str], Target | Unavailable]


@dataclass(frozen=True)
class ReplicaSpec:
    model: str = "tiny"
    max_tokens: int = 8
    max_running: int = 4096


def start_replica(kids: Children, spec: ReplicaSpec, timeout: float = 20.0) -> Target:
    """One simulated vLLM replica with (almost) no latency, in its own process."""
    port = free_port()
    child = kids.start(
        "replica",
        [
            sys.executable, "-m", "warmgw.sim", "--replicas", "1", "--base-port", str(port),
            "--model", spec.model, "--ttft-base", "0", "--ttft-per-prompt-token", "0",
            "--itl", "0", "--max-running", str(spec.max_running),
            "--default-max-tokens", str(spec.max_tokens), "--log-level", "warning",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/health", timeout)
    return Target("direct", url, (child.pid,), proxy=False)


# The gateway reaches READY quickly: a one-shape warmup, and a ramp that starts at full
# weight. What is measured is the steady-state request path, not the warmup.
TINY_WARMUP: dict[str, Any] = {
    "prompt_lengths": [16],
    "max_tokens": [4],
    "kinds": ["completions"],
    "concurrency": [1],
    "deadline": 30,
}


def gateway_config(replica_url: str, port: int, strategy: str,
                   routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """routing: the gateway's `routing` section (e.g. prefix affinity on), None: none."""
    return ({"routing": routing} if routing else {}) | {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "strategy": strategy,
        "replicas": [{"name": "r0", "url": replica_url, "pool": "blue"}],
        "warmup": TINY_WARMUP,
        "ramp": {"initial_weight": 1.0, "doubling_time": 0.1},
    }


def gateway_starter(
    workdir: Path,
    strategy: str = "warm",
    wrap: list[str] | None = None,
    name: str = "warmgw",
    src: Path | None = None,
    timeout: float = 40.0,
    routing: dict[str, Any] | None = None,
) -> Starter:
    """warmgw as `python -m warmgw serve --config FILE`.

    wrap goes before `-m warmgw` (e.g. ["-m", "cProfile", "-o", PATH] for a profiling
    run); src runs the warmgw package found in that source tree (e.g. an export of another
    commit) instead of the installed one, to compare two versions in one run; routing:
    the config's `routing` section.
    """

    def start(kids: Children, replica_url: str) -> Target:
        port = free_port()
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(gateway_config(replica_url, port, strategy,
                                                        routing)))
        argv = [sys.executable, *(wrap or []), "-m", "warmgw", "serve", "--config", str(config)]
        env = None
        if src is not None:
            env = {**os.environ, "PYTHONPATH": str(src)}
        # a profiled gateway writes its stats on the way out: give it time
        child = kids.start(name, argv, env=env, cwd=src, grace=15.0)
        url = f"http://127.0.0.1:{port}"
        child.wait_http(url + "/readyz", timeout)
        _wait_log(child.log, re.compile(rb"-> ready\b"), 5.0)
        return Target(name, url, (child.pid,))

    return start


def _wait_log(log: Path, pattern: re.Pattern[bytes], timeout: float) -> bool:
    """Until pattern shows in the log (here: the replica reached READY), at most timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern.search(log.read_bytes()):
            return True
        time.sleep(0.05)
    return False
