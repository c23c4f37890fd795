"""How the gateway's cost grows with the fleet: 2, 100 and 1,000 replicas side by side.

    .venv/bin/python -m loadtest.scale [--quick] [--fleets 2,100,1000] [--rounds 5]

A. The gateway (`python -m warmgw serve`) in front of N simulated replicas with (almost)
   no latency, all N in one simulator process (`python -m warmgw.sim --replicas N`), each
   on its own loopback address (127.0.0.1, 127.0.0.2, ...; `--addressing ports`: one
   address, N ports). Per N, in rounds (the order of the N's rotating, each N's stack
   started afresh in every round, so that a noisy machine slows them alike): the time until
   all N replicas are READY at full weight (polled on the admin status API), the gateway's
   and the simulator's CPU while idle (health checks and /metrics reads of N replicas), then
   the same closed-loop load (`concurrency` clients, JSON completions) sent straight to one
   replica of that fleet and through the gateway, in turns. Reported per N: req/s, p50/p99
   latency, the latency added over direct, the gateway's CPU per request from /proc
   (whole, and net of its idle rate), its idle CPU, the time one /metrics scrape and one
   admin status call take, its open file descriptors, and any ejection; ratios against
   the first N. "Direct" is replica r0 of the same simulator process, which also answers
   the gateway's N health checks a second: its latency grows with N too, so the added
   latency is the gateway's, not the simulator's.
B. The registry and picker alone, in process, on a fake clock (loadtest.scale_core): cost
   per pick with all replicas ready and while replicas keep changing state, per state
   change (with the snapshot rebuild it causes), per tick and per discovery sync.

Writes loadtest/results/scale.json. Exit status 1 if a request failed, a replica was
ejected, or the time limit cut the run short.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from loadtest import scale_core, scale_report
from loadtest.driver import LoadGen
from loadtest.procs import (
    Child,
    ChildFailed,
    Children,
    cpu_seconds,
    free_port,
    host_cpu,
    run_main,
)
from loadtest.scale_watch import Watcher
from loadtest.scale_watch import get as _get
from loadtest.stats import Run
from loadtest.targets import TINY_WARMUP
from warmgw import loopsteps
from warmgw.fdlimit import raise_open_files_limit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "results"
PATH = "/v1/completions"
MODEL = "tiny"
WORDS = "the quick brown fox jumps over the lazy dog and then some more words to read".split()
_SIM_LINE = re.compile(rb"^sim replica (\S+) serving model \S+ at (http://\S+)$", re.M)
_EJECTED = re.compile(rb'^warmgw_replica_transitions_total\{to="ejected"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Options:
    fleets: tuple[int, ...] = (2, 100, 1000)
    rounds: int = 5
    requests: int = 15000  # per (N, target), split over the rounds
    concurrency: int = 16
    idle: float = 5.0  # s of idle CPU per (N, round): a multiple of the 5 s /metrics cycle
    settle: float = 1.0  # s after all are READY, before the idle window
    addressing: str = "hosts"  # hosts: one loopback address per replica; ports: one port each
    warm_concurrent: int = 16  # warmup.max_concurrent: replicas warmed at once
    max_tokens: int = 8
    prompt_words: int = 16
    warmup: int | None = None  # requests per run before measuring; None: max(2c, 100, 3N)
    time_limit: float = 270.0
    run_limit: float = 60.0
    ready_timeout: float = 180.0
    profile: bool = False  # the gateway under cProfile: figures not comparable
    src: Path | None = None  # run the warmgw package of this source tree instead
    health_interval: float | None = None  # the gateway's health.interval; None: its default
    loop_steps: bool = True  # time each loop step (the gateway then runs on asyncio's loop)
    watch_every: float = 1.0  # s between /metrics scrapes and status reads under load
    gateway: bool = True  # part A
    core: scale_core.CoreOptions | None = field(default_factory=scale_core.CoreOptions)
    out: Path = RESULTS / "scale.json"
    quick: bool = False

    def warmup_for(self, n: int) -> int:
        if self.warmup is not None:
            return self.warmup
        c = self.concurrency
        # every replica's pooled connection opened before measuring (3N: ~95 % of them)
        return max(c, 10, n) if self.quick else max(2 * c, 100, 3 * n)


QUICK: dict[str, Any] = {
    "rounds": 1, "requests": 150, "idle": 1.0, "settle": 0.3, "time_limit": 45.0,
    "run_limit": 10.0, "ready_timeout": 30.0, "watch_every": 0.3,
    "core": scale_core.CoreOptions(rounds=1, picks=5000, ops=30),
}


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtest.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleets", default="2,100,1000", help="fleet sizes (2,100,1000)")
    p.add_argument("--rounds", type=int, help="rounds, the order of the N's rotating (5)")
    p.add_argument("--requests", type=int, help="per N and target, over the rounds (15000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--idle", type=float, help="seconds of idle CPU per N and round (5)")
    p.add_argument("--addressing", choices=["hosts", "ports"], default="hosts")
    p.add_argument("--warm-concurrent", type=int, default=16,
                   help="the gateway's warmup.max_concurrent (16)")
    p.add_argument("--time-limit", type=float, help="seconds for part A (270)")
    p.add_argument("--profile", action="store_true",
                   help="run the gateway under cProfile (gateway-N-rR.prof beside --out); "
                        "its figures are then not comparable")
    p.add_argument("--src", type=Path, metavar="DIR",
                   help="run the gateway from this source tree (e.g. `git archive` of another "
                        "commit, unpacked) instead of this one")
    p.add_argument("--health-interval", type=float, metavar="S",
                   help="the gateway's health.interval (default: the gateway's own, 1 s); "
                        "e.g. 3600 to see the fleet without its health checks")
    p.add_argument("--no-loop-steps", action="store_true",
                   help="run the gateway on uvloop, its loop steps untimed (by default "
                        "WARMGW_LOOP_STEPS=1: asyncio's loop, each step's thread CPU timed)")
    p.add_argument("--no-gateway", action="store_true", help="skip part A")
    p.add_argument("--no-core", action="store_true", help="skip part B")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument("--quick", action="store_true", help="a small run for CI (< 40 s)")
    a = p.parse_args(argv)
    try:
        fleets = tuple(int(x) for x in a.fleets.split(",") if x.strip())
    except ValueError:
        p.error(f"--fleets: expected numbers like 2,100,1000, got {a.fleets!r}")
    if not fleets or min(fleets) < 1 or max(fleets) > 4000:
        p.error(f"--fleets: expected sizes from 1 to 4000, got {a.fleets!r}")
    opts = Options(quick=a.quick, **(QUICK if a.quick else {}))
    given = {"rounds": a.rounds, "requests": a.requests, "idle": a.idle,
             "time_limit": a.time_limit}
    opts = replace(
        opts, fleets=fleets, concurrency=a.concurrency, addressing=a.addressing,
        warm_concurrent=a.warm_concurrent, profile=a.profile, gateway=not a.no_gateway,
        src=a.src.resolve() if a.src else None, health_interval=a.health_interval,
        loop_steps=not a.no_loop_steps,
        core=None if a.no_core else replace(opts.core or scale_core.CoreOptions(),
                                            fleets=fleets),
        out=a.out, **{k: v for k, v in given.items() if v is not None},
    )
    if opts.rounds < 1 or opts.requests < opts.rounds or opts.concurrency < 1:
        p.error("need rounds >= 1, requests >= rounds and concurrency >= 1")
    return opts


# -- one fleet: the simulator and the gateway ------------------------------------------------


@dataclass
class Stack:
    n: int
    sim: Child
    gateway: Child
    urls: list[str]
    url: str
    admin: str
    token: str
    sim_s: float
    ready_s: float


def start_stack(kids: Children, n: int, opts: Options, rnd: int) -> Stack:
    t0 = time.monotonic()
    argv = [
        sys.executable, "-m", "warmgw.sim", "--replicas", str(n), "--base-port", "0",
        "--model", MODEL, "--ttft-base", "0", "--ttft-per-prompt-token", "0", "--itl", "0",
        "--max-running", "4096", "--default-max-tokens", str(opts.max_tokens),
        "--log-level", "warning",
    ]
    if opts.addressing == "hosts":
        argv.append("--distinct-hosts")
    sim = kids.start(f"sim-{n}", argv, cwd=REPO)
    urls = _sim_urls(sim, n, opts.ready_timeout)
    sim_s = time.monotonic() - t0

    t1 = time.monotonic()
    port, admin_port, token = free_port(), free_port(), secrets.token_hex(16)
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port, "token": token},
        "replicas": [{"name": f"r{i}", "url": u, "pool": "blue"} for i, u in enumerate(urls)],
        "warmup": {**TINY_WARMUP, "max_concurrent": opts.warm_concurrent},
        "ramp": {"initial_weight": 1.0, "doubling_time": 0.1},
    }
    if opts.health_interval is not None:
        config["health"] = {"interval": opts.health_interval}
    path = kids.workdir / f"gateway-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    wrap = []
    if opts.profile:
        prof = opts.out.with_name(f"gateway-{n}-r{rnd}.prof")
        wrap = ["-m", "cProfile", "-o", str(prof)]
    env = dict(os.environ)
    if opts.src is not None:
        env["PYTHONPATH"] = str(opts.src)
    if opts.loop_steps:
        env[loopsteps.ENV] = "1"
    gw = kids.start(f"gateway-{n}",
                    [sys.executable, *wrap, "-m", "warmgw", "serve", "--config", str(path)],
                    env=env, cwd=opts.src or REPO, grace=30.0)
    stack = Stack(n, sim, gw, urls, f"http://127.0.0.1:{port}",
                  f"http://127.0.0.1:{admin_port}", token, sim_s, 0.0)
    gw.wait_http(stack.url + "/healthz", opts.ready_timeout)
    deadline = t1 + opts.ready_timeout
    while (ready := _ready(stack)) < n:
        if not gw.alive() or time.monotonic() > deadline:
            raise ChildFailed(f"gateway with {n} replicas: {ready} READY after "
                              f"{time.monotonic() - t1:.0f} s:\n{gw.tail()}")
        time.sleep(0.2)
    stack.ready_s = time.monotonic() - t1
    return stack


def _sim_urls(sim: Child, n: int, timeout: float) -> list[str]:
    """The replicas' URLs, from the lines the simulator prints once all of them listen."""
    deadline = time.monotonic() + timeout
    while True:
        found = _SIM_LINE.findall(sim.log.read_bytes())
        if len(found) >= n:
            by_name = {name.decode(): url.decode() for name, url in found}
            return [by_name[f"r{i}"] for i in range(n)]
        if not sim.alive() or time.monotonic() > deadline:
            raise ChildFailed(f"simulator of {n} replicas: {len(found)} listening:\n{sim.tail()}")
        time.sleep(0.05)


def _status(stack: Stack) -> tuple[dict[str, Any], float]:
    body, took = _get(stack.admin + "/admin/v1/status", stack.token)
    data: dict[str, Any] = json.loads(body)
    return data, took


def _ready(stack: Stack) -> int:
    try:
        data, _ = _status(stack)
    except OSError:
        return 0
    return int(data.get("pools", {}).get("blue", {}).get("ready", 0))


# -- measuring ---------------------------------------------------------------------------


def _idle(stack: Stack, seconds: float) -> dict[str, float]:
    """CPU the gateway and the simulator spend per second with no traffic at all."""
    g0, s0, t0 = cpu_seconds([stack.gateway.pid]), cpu_seconds([stack.sim.pid]), time.monotonic()
    time.sleep(seconds)
    g1, s1, t1 = cpu_seconds([stack.gateway.pid]), cpu_seconds([stack.sim.pid]), time.monotonic()
    return {"gateway": (g1 - g0) / (t1 - t0), "sim": (s1 - s0) / (t1 - t0),
            "seconds": t1 - t0}


def measure(loadgen: LoadGen, stack: Stack, target: str, n_req: int, opts: Options,
            rnd: int) -> Run:
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(opts.prompt_words))
    body = {"model": MODEL, "prompt": prompt, "max_tokens": opts.max_tokens, "stream": False}
    url = stack.url if target == "gateway" else stack.urls[0]
    spec = {"url": url, "path": PATH, "body": body, "stream": False,
            "concurrency": opts.concurrency,
            "warmup": opts.warmup_for(stack.n if target == "gateway" else 1),
            "requests": n_req, "time_limit": opts.run_limit}
    roles = {"gateway": (stack.gateway.pid,), "sim": (stack.sim.pid,),
             "loadgen": (loadgen.child.pid,)}

    def probe() -> dict[str, float]:
        out = {role: cpu_seconds(pids) for role, pids in roles.items()}
        out["host_busy"], out["host_all"] = host_cpu()
        out["bench"] = time.process_time()
        return out

    done, before, after = loadgen.measure(spec, probe, opts.run_limit + 30.0)
    d = {k: after[k] - before[k] for k in after}
    ours = d["gateway"] + d["sim"] + d["loadgen"] + d["bench"]
    return Run(
        target=target, mode=f"n{stack.n}", concurrency=opts.concurrency, round=rnd,
        elapsed=done["elapsed"], lat_us=tuple(done["lat_us"]),
        errors=done["errors"] + done["warmup_errors"],
        error_samples=tuple(done["error_samples"] + done["warmup_error_samples"]),
        truncated=done["truncated"], cpu={role: d[role] for role in roles},
        others_cpu=max(0.0, d["host_busy"] - ours), host_cpu=d["host_all"],
    )


def one_fleet(loadgen: LoadGen, kids: Children, n: int, opts: Options,
              rnd: int) -> dict[str, Any]:
    """Start N's stack, measure it idle and under load, read its O(N) views, stop it."""
    share = opts.requests // opts.rounds + (rnd < opts.requests % opts.rounds)
    stack = start_stack(kids, n, opts, rnd)
    time.sleep(opts.settle)
    idle = _idle(stack, opts.idle)
    targets = ["direct", "gateway"] if rnd % 2 == 0 else ["gateway", "direct"]
    runs, watched = [], {}
    for t in targets:
        if t != "gateway":
            runs.append(measure(loadgen, stack, t, share, opts, rnd))
            continue
        watcher = Watcher(stack.url + "/metrics", stack.admin + "/admin/v1/status", stack.token,
                          opts.watch_every)
        with watcher:  # scraped and read while loaded; the loop's longest step meanwhile
            runs.append(measure(loadgen, stack, t, share, opts, rnd))
        watched = watcher.summary()
    metrics, metrics_s = _get(stack.url + "/metrics")
    status, status_s = _status(stack)
    m = _EJECTED.search(metrics)
    return {
        "n": n, "round": rnd, "sim_s": stack.sim_s, "ready_s": stack.ready_s,
        "idle": idle, "runs": runs, "metrics_ms": metrics_s * 1e3,
        "metrics_bytes": len(metrics), "status_ms": status_s * 1e3,
        "ready_after": int(status["pools"]["blue"]["ready"]),
        "ejected": int(float(m.group(1))) if m else 0,
        "ejections": [f"{t['replica']}: {t['reason']}" for t in status.get("transitions", [])
                      if t.get("to") == "ejected"][:10],
        "gateway_fds": _fds(stack.gateway.pid),
        **watched,
    }


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def run_gateway(opts: Options) -> tuple[list[dict[str, Any]], bool]:
    """Every N once per round, the order rotating, each on a fresh stack."""
    deadline = time.monotonic() + opts.time_limit
    cells: list[dict[str, Any]] = []
    incomplete = False
    fleets = list(opts.fleets)
    with tempfile.TemporaryDirectory(prefix="warmgw-scale-") as tmp, Children(Path(tmp)) as top:
        loadgen = LoadGen(top.start("loadgen", [sys.executable, "-m", "loadtest.loadgen"],
                                    pipes=True, cwd=REPO))
        for rnd in range(opts.rounds):
            k = rnd % len(fleets)
            for n in fleets[k:] + fleets[:k]:
                if time.monotonic() > deadline:
                    incomplete = True
                    continue
                workdir = Path(tmp) / f"n{n}-r{rnd}"
                workdir.mkdir()
                with Children(workdir) as kids:  # stops this N's gateway, then simulator
                    cells.append(one_fleet(loadgen, kids, n, opts, rnd))
        loadgen.quit()
    return cells, incomplete


# -- the benchmark -------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    t0 = time.monotonic()
    out: dict[str, Any] = {"meta": _meta(opts)}
    if opts.gateway:
        cells, incomplete = run_gateway(opts)
        out["meta"]["incomplete"] = incomplete
        out["gateway"] = scale_report.summarise(cells, opts.fleets)
        out["gateway_cells"] = [scale_report.cell_json(c) for c in cells]
    if opts.core is not None:
        out["core"] = scale_core.run(opts.core)
        out["core"]["rows"] = scale_report.core_rows(out["core"]["rows"])
    out["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


def _meta(opts: Options) -> dict[str, Any]:
    d = asdict(opts)
    d["out"] = str(opts.out)
    d["src"] = str(opts.src) if opts.src else None
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "options": d, "cpus": os.cpu_count(),
            "loadavg_before": loadavg, "git": _git(), "profiled": opts.profile,
            "incomplete": False}


def _git() -> dict[str, Any]:
    """The commit measured, and the files under warmgw/ changed from it (what ran)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "warmgw")
    return {"commit": git("rev-parse", "HEAD"),
            "warmgw_changes": [line[3:] for line in changed.splitlines()]}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    raise_open_files_limit()  # the simulator of 1,000 replicas inherits it (~3,000 sockets)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = run(opts)
    except ChildFailed as e:
        print(f"scale: {e}", file=sys.stderr)
        return 2
    opts.out.write_text(json.dumps(results, indent=1) + "\n")
    print(scale_report.text(results))
    print(f"wrote {opts.out}")
    m = results["meta"]
    failed = m["incomplete"] or any(
        r["errors"] or r["ejected"] or r["ready_after"] < r["n"]
        for r in results.get("gateway", [])
    )
    if m["incomplete"]:
        print("the time limit stopped the benchmark early", file=sys.stderr)
    for r in results.get("gateway", []):
        for e in r["ejections"]:
            print(f"N={r['n']}: ejected {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
