"""Join benchmark (issue #9): 100 cold replicas added at once to a warm fleet under load.

    python -m loadtest.join [--quick] [--strategies warm,round_robin,prewarmed]
                            [--join N] [--max-concurrent M] [--out DIR] [--no-progress]

One run per strategy, each on fresh processes with the same seeds:

- a fleet of warm simulated replicas f0.. (one `loadtest.joinsim` process: the simulator
  plus a recorder of every request it served), prewarmed directly as the scenario runner
  does, behind the gateway (`python -m warmgw serve`), serving open-loop Poisson user load;
- the newcomers s0, n000.. (a second joinsim process, all cold), added to the gateway at
  once: the config file rewritten with all of them and one POST /admin/v1/reload.

warm:        strategy warm. First s0 joins alone (the warmup of 1), then n000.. at once; a
             few seconds later a rewarm of fleet replica f0 is asked (admin API), to see
             whether a replica that was serving waits behind the newcomers for a warmup slot.
round_robin: strategy round_robin, newcomers cold: what users get without warmup.
prewarmed:   strategy round_robin, newcomers with no cold start at all: the same join and
             load without warmup traffic or cold starts, i.e. what the join costs the
             machine (probes, health checks, more replicas) apart from warming.

Measured: user latency per phase, user requests that paid a cold start (the simulator's
counters), errors, how many replicas the gateway warmed at once (from the requests the
replicas saw), when the newcomers became routable and reached full weight (the admin
status every 0.5 s), and CPU per process. Writes loadtest/results/join-TIMESTAMP/
(result.json, report.md, logs/). Exit status 1 when a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

from loadtest import join_plot, join_report
from loadtest.balancers import BalancerError, Warmgw
from loadtest.procs import CLK_TCK, ChildFailed, Children, cpu_ticks, free_port, host_cpu
from loadtest.progress import Progress
from loadtest.runner import GRACE, keep_logs
from loadtest.simfleet import Replica, SimFleet, sim_argv
from loadtest.spec import Fleet, Scenario, SpecError, merge, parse
from loadtest.workload import Load, Sample

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("warm", "round_robin", "prewarmed")
TRACE_EVERY = 0.5  # s between two looks at the gateway's status and the CPU counters
READY_TIMEOUT = 60.0  # s for the gateway to route to the initial fleet

# The fleet, workload and gateway settings, in the scenario files' format (loadtest/spec.py)
SCENARIO: dict[str, Any] = {
    "name": "join",
    "description": "Cold replicas join a warm fleet at once, under open-loop user load.",
    "limit": 600,
    "fleet": {
        "sim": {"ttft_base": 0.03, "ttft_per_prompt_token": 0.00005, "itl": 0.004,
                "max_running": 8, "jitter": 0.05, "cold_shape_penalty": 0.3,
                "cold_batch_penalty": 0.15, "seed": 11},
        "replicas": [],  # filled in from the join parameters
    },
    "workload": {"seed": 7, "prompt_words": {8: 1, 100: 1, 600: 1}, "max_tokens": {8: 1},
                 "stream_fraction": 0.5, "chat_fraction": 0.5,
                 "arrivals": {"kind": "poisson", "rate": 40, "max_inflight": 256}},
    "phases": {"warmup": 3, "steady": 10, "during": 15, "after": 5},
    "health": {"interval": 1.0, "timeout": 2.0},
    "gateway": {
        # the simulator's cold start is per prompt bucket and batch size, not per kind:
        # completions alone cover the chat requests' buckets too
        "warmup": {"prompt_lengths": [16, 256, 1024], "max_tokens": [8],
                   "kinds": ["completions"], "concurrency": [1, 2, 4, 8],
                   "tolerance": 0.3, "abs_tolerance": 0.01, "deadline": 60},
        "ramp": {"initial_weight": 0.05, "doubling_time": 2},
    },
    "quick": {
        "fleet": {"sim": {"cold_shape_penalty": 0.2, "cold_batch_penalty": 0.1}},
        "workload": {"arrivals": {"rate": 30}},
        "phases": {"warmup": 1, "steady": 3, "during": 5, "after": 2},
        "health": {"interval": 0.5},
        "gateway": {"warmup": {"abs_tolerance": 0.05},
                    "ramp": {"initial_weight": 0.1, "doubling_time": 0.3}},
    },
}


@dataclass(frozen=True)
class JoinParams:
    fleet: int = 4  # warm replicas serving users
    join: int = 100  # cold replicas added at once
    max_concurrent: int = 4  # the gateway's warmup.max_concurrent
    gap: float = 3.0  # s between the solo join at full weight and the big join
    join_timeout: float = 150.0  # s for every newcomer to reach full weight
    rewarm_at: float | None = 5.0  # s after the join: rewarm f0 (warm strategy only)
    metrics_every: int | None = None  # the gateway's health.metrics_every (None: its default)


FULL = JoinParams()
QUICK = JoinParams(fleet=2, join=10, gap=1.0, join_timeout=40.0, rewarm_at=1.0)


def fleet_names(p: JoinParams) -> list[str]:
    return [f"f{i}" for i in range(p.fleet)]


def new_names(p: JoinParams) -> list[str]:
    """s0 (joins alone first), then the newcomers that join at once."""
    return ["s0", *(f"n{i:03d}" for i in range(p.join))]


def scenario(p: JoinParams, quick: bool) -> Scenario:
    reps = [{"name": n} for n in fleet_names(p)]
    reps += [{"name": n, "initial": False} for n in new_names(p)]
    gateway: dict[str, Any] = {"warmup": {"max_concurrent": p.max_concurrent}}
    if p.metrics_every is not None:
        gateway["health"] = {"metrics_every": p.metrics_every}
    data = merge(SCENARIO, {"fleet": {"replicas": reps}, "gateway": gateway})
    return parse(data, quick)


@dataclass
class JoinRun:
    strategy: str
    status: str = "ok"  # ok | failed
    note: str = ""
    samples: list[Sample] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)  # name -> [t0, t1]
    events: list[dict[str, Any]] = field(default_factory=list)  # t, what, note
    trace: list[dict[str, Any]] = field(default_factory=list)  # newcomers' states over time
    cpu: list[dict[str, float]] = field(default_factory=list)  # CPU s per process over time
    times: dict[str, float | None] = field(default_factory=dict)  # named moments (load clock)
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # first routable, ready
    sim: dict[str, dict[str, Any]] = field(default_factory=dict)  # when -> replica -> counters
    requests: dict[str, list[list[Any]]] = field(default_factory=dict)  # recorder, load clock
    gateway_metrics: dict[str, float] = field(default_factory=dict)


class Gateway(Warmgw):
    """The gateway as the scenario runner runs it, plus an add of many replicas at once."""

    def staged(self, groups: list[list[Replica]]) -> list[str]:
        """The config file's text once each group of replicas is added, in turn. Made
        before the load starts: YAML is slow, and the load generator shares this process."""
        conf = yaml.safe_load((self.workdir / f"{self.name}.yaml").read_text())
        out = []
        for reps in groups:
            conf["replicas"] += [{"name": r.name, "url": r.url, "pool": r.pool} for r in reps]
            out.append(yaml.safe_dump(conf, sort_keys=False))
        return out

    async def add_at_once(self, config: str, n: int) -> str:
        """Write the config file with n more replicas, then one reload adds them all."""
        (self.workdir / f"{self.name}.yaml").write_text(config)
        code, data = await self._call("POST", "/reload")
        if code != 200 or len(data.get("added", ())) != n:
            raise BalancerError(f"reload: HTTP {code}: {str(data)[:300]}")
        return f"config rewritten, POST /admin/v1/reload: {n} added"

    async def rewarm(self, name: str) -> str:
        code, data = await self._call("POST", f"/replicas/{name}/rewarm")
        if code != 200:
            raise BalancerError(f"rewarm {name}: HTTP {code}: {str(data)[:200]}")
        return "POST /admin/v1/replicas/NAME/rewarm"

    async def metrics(self) -> str:
        async with self.session.get(self.url + "/metrics",
                                    timeout=aiohttp.ClientTimeout(total=5.0)) as r:
            return await r.text()


class Recorded(SimFleet):
    """A simulator process with the join recorder (loadtest.joinsim)."""

    def __init__(self, kids: Children, fleet: Fleet, session: aiohttp.ClientSession,
                 name: str) -> None:
        self.control = f"http://127.0.0.1:{free_port()}"
        argv = sim_argv(fleet.sim, len(fleet.replicas))
        argv[argv.index("warmgw.sim")] = "loadtest.joinsim"
        argv += ["--control-port", self.control.rsplit(":", 1)[1]]
        super().__init__(kids, fleet, session, name=name, argv=argv)

    async def log(self) -> dict[str, Any]:
        """Every replica's counters and finished requests, keyed by the scenario's names."""
        async with self.session.get(self.control + "/join/log",
                                    timeout=aiohttp.ClientTimeout(total=30.0)) as r:
            data = await r.json()
        names = [d.name for d in self.fleet.replicas]
        return {names[int(k[1:])]: v for k, v in data["replicas"].items()}


class Tracker:
    """The gateway's view of the replicas and every process's CPU, every TRACE_EVERY s."""

    def __init__(self, run: JoinRun, bal: Gateway, load: Load, pids: dict[str, int]) -> None:
        self.run = run
        self.bal = bal
        self.load = load
        self.pids = pids
        self.states: dict[str, tuple[str, float]] = {}  # name -> (state, weight)
        self.changed = asyncio.Event()

    def routable(self, name: str) -> bool:
        state, weight = self.states.get(name, ("", 0.0))
        return state in ("ramping", "ready") and weight > 0

    def ready(self, name: str) -> bool:
        return self.states.get(name, ("", 0.0))[0] == "ready"

    async def loop(self) -> None:
        while True:
            t = self.load.now()
            busy, total = host_cpu()
            # one process each (reading every process of the machine for descendants
            # would stall the load generator in this process)
            cpu = {k: cpu_ticks(pid) / CLK_TCK for k, pid in self.pids.items()}
            self.run.cpu.append({"t": round(t, 3), **cpu, "host_busy": busy, "host_total": total})
            try:
                reps = (await self.bal.status())["replicas"]
            except (aiohttp.ClientError, TimeoutError, BalancerError):
                reps = []
            if reps:
                self.states = {r["name"]: (r["state"], r["weight"]) for r in reps}
                self._note(t)
            self.changed.set()
            self.changed = asyncio.Event()
            await asyncio.sleep(TRACE_EVERY)

    def _note(self, t: float) -> None:
        counts: dict[str, int] = {}
        for name, (state, _) in self.states.items():
            if not name.startswith("n"):  # the fleet, s0
                continue
            counts[state] = counts.get(state, 0) + 1
            seen = self.run.seen.setdefault(name, {})
            if self.routable(name):
                seen.setdefault("routable", t)
            if state == "ready":
                seen.setdefault("ready", t)
        fleet = {n: s for n, (s, _) in self.states.items() if n.startswith("f")}
        self.run.trace.append({"t": round(t, 3), "newcomers": counts, "fleet": fleet})

    async def until(self, names: list[str], what: str, deadline: float) -> float | None:
        """Load-clock time when every name was routable (or ready); None past deadline."""
        test = self.routable if what == "routable" else self.ready
        while not all(test(n) for n in names):
            if self.load.now() > deadline:
                return None
            await self.changed.wait()
        return self.load.now()


async def run_strategy(s: Scenario, p: JoinParams, strategy: str, workdir: Path,
                       progress: Progress) -> JoinRun:
    run = JoinRun(strategy)
    with Children(workdir) as kids:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            try:
                await _run(s, p, strategy, kids, workdir, session, run, progress)
            except (BalancerError, ChildFailed, RuntimeError, aiohttp.ClientError,
                    TimeoutError, OSError, ValueError) as e:
                run.status, run.note = "failed", f"{type(e).__name__}: {e}"
    return run


async def _run(s: Scenario, p: JoinParams, strategy: str, kids: Children, workdir: Path,
               session: aiohttp.ClientSession, run: JoinRun, progress: Progress) -> None:
    progress.phase("simulators")
    initial = [r for r in s.fleet.replicas if r.initial]
    later = [r for r in s.fleet.replicas if not r.initial]
    new_sim = s.fleet.sim
    if strategy == "prewarmed":
        new_sim = replace(new_sim, cold_shape_penalty=0.0, cold_batch_penalty=0.0)
    new_sim = replace(new_sim, seed=new_sim.seed + len(initial))
    fleet = Recorded(kids, Fleet(tuple(initial), s.fleet.sim), session, "sim-fleet")
    newcomers = Recorded(kids, Fleet(tuple(later), new_sim), session, "sim-new")
    await fleet.start()
    await newcomers.start()
    progress.phase("prewarm")
    await fleet.prewarm([r.name for r in initial], s.workload)

    progress.phase("gateway")
    bal = Gateway("round_robin" if strategy == "prewarmed" else strategy, kids, workdir, s,
                  session, {**fleet.replicas, **newcomers.replicas})
    bal.name = strategy
    await bal.start(fleet.of(list(initial)))
    await bal.wait_routable([r.name for r in initial], READY_TIMEOUT)
    run.sim["start"] = {**await fleet.stats(), **await newcomers.stats()}
    solo, *joining = list(newcomers.replicas.values())
    configs = bal.staged([[solo], joining] if strategy == "warm" else [joining])

    load = Load(bal.url, s.workload, s.fleet.sim.model, bal.replica_of)
    await load.start(stop_at=s.limit)
    progress.attach(load)
    pids = {"gateway": bal.pid, "sim_fleet": fleet.pid, "sim_new": newcomers.pid,
            "loadgen": os.getpid()}
    tracker = Tracker(run, bal, load, pids)
    tracing = asyncio.create_task(tracker.loop())
    try:
        await _timeline(s, p, strategy, bal, configs, [solo, *joining], load, tracker, run,
                        progress)
    finally:
        load.stop_at(load.now())
        progress.phase("finishing")
        await load.wait(GRACE)
        tracing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tracing
        progress.detach()
        run.samples = load.samples
    run.sim["end"] = {**await fleet.stats(), **await newcomers.stats()}
    run.gateway_metrics = join_report.gateway_counters(await bal.metrics())
    for rec in (fleet, newcomers):
        for name, r in (await rec.log()).items():
            run.requests[name] = [[a - load.t0, b - load.t0, *rest]
                                  for a, b, *rest in r["requests"]]


async def _event(run: JoinRun, load: Load, what: str, action: Awaitable[str]) -> float:
    """Run an action; record it at the time it began, and return that time."""
    t = load.now()
    note = await action
    run.events.append({"t": round(t, 3), "what": what, "note": note,
                       "took": round(load.now() - t, 3)})
    return t


async def _sleep_until(load: Load, t: float) -> None:
    await asyncio.sleep(max(0.0, t - load.now()))


async def _timeline(s: Scenario, p: JoinParams, strategy: str, bal: Gateway,
                    configs: list[str], newcomers: list[Replica], load: Load,
                    tracker: Tracker, run: JoinRun, progress: Progress) -> None:
    ph = s.phases
    progress.phase("warmup")
    await _sleep_until(load, ph.warmup)
    progress.phase("steady")
    await _sleep_until(load, ph.warmup + ph.steady)
    t = load.now()
    run.phases["steady"] = [ph.warmup, t]
    solo, *joining = newcomers
    if strategy == "warm":  # the warmup of one replica, alone, as the yardstick
        progress.phase("solo")
        t = await _event(run, load, "add s0", bal.add_at_once(configs.pop(0), 1))
        run.times["solo_added"] = t
        run.times["solo_routable"] = await tracker.until([solo.name], "routable",
                                                         t + p.join_timeout)
        run.times["solo_ready"] = end = await tracker.until([solo.name], "ready",
                                                            t + p.join_timeout)
        if end is None:
            raise RuntimeError(f"s0 not at full weight {p.join_timeout:g} s after it was added")
        run.phases["solo"] = [t, end]
        await _sleep_until(load, end + p.gap)
        t = load.now()
        run.phases["gap"] = [end, t]

    progress.phase("join")
    names = [r.name for r in joining]
    run.times["join_added"] = t = await _event(run, load, f"add {len(names)} at once",
                                               bal.add_at_once(configs.pop(0), len(names)))
    rewarm = None
    if strategy == "warm" and p.rewarm_at is not None:
        rewarm = asyncio.create_task(_rewarm(bal, load, tracker, run, t + p.rewarm_at,
                                             t + p.join_timeout))
    try:
        if strategy == "warm":
            deadline = t + p.join_timeout
            run.times["all_routable"] = await tracker.until(names, "routable", deadline)
            run.times["all_ready"] = end = await tracker.until(names, "ready", deadline)
            if end is None:
                run.note = f"not every newcomer at full weight after {p.join_timeout:g} s"
                end = load.now()
        else:  # routable at once; when they were is in run.seen
            await _sleep_until(load, t + ph.during)
            end = load.now()
        run.phases["during"] = [t, end]
        progress.phase("after")
        await _sleep_until(load, end + ph.after)
        run.phases["after"] = [end, load.now()]
    finally:
        if rewarm is not None:
            if not rewarm.done():
                rewarm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rewarm


async def _rewarm(bal: Gateway, load: Load, tracker: Tracker, run: JoinRun, at: float,
                  deadline: float) -> None:
    """Rewarm f0 during the join: how long is a replica that was serving out of rotation?"""
    await _sleep_until(load, at)
    run.times["rewarm_asked"] = await _event(run, load, "rewarm f0", bal.rewarm("f0"))
    for _ in range(2):  # a look at the status that began after the call
        await tracker.changed.wait()
    run.times["rewarm_back"] = await tracker.until(["f0"], "routable", deadline)
    run.times["rewarm_ready"] = await tracker.until(["f0"], "ready", deadline)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    a = argparse.ArgumentParser(prog="python -m loadtest.join", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--quick", action="store_true",
                   help=f"{QUICK.join} replicas join a fleet of {QUICK.fleet}, short phases (CI)")
    a.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"comma-separated, in run order (default {','.join(STRATEGIES)})")
    a.add_argument("--join", type=int, help="replicas that join at once "
                                             f"(default {FULL.join}; --quick {QUICK.join})")
    a.add_argument("--max-concurrent", type=int,
                   help=f"the gateway's warmup.max_concurrent (default {FULL.max_concurrent})")
    a.add_argument("--metrics-every", type=int,
                   help="the gateway's health.metrics_every (default: the gateway's, 5); a "
                        "large value shows the run without the newcomers' simulator process "
                        "stalling when every replica's /metrics is read at once")
    a.add_argument("--out", type=Path, help="result directory (default loadtest/results/"
                                            "join-TIMESTAMP)")
    a.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return a.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    p = QUICK if args.quick else FULL
    if args.join is not None:
        p = replace(p, join=args.join)
    if args.max_concurrent is not None:
        p = replace(p, max_concurrent=args.max_concurrent)
    if args.metrics_every is not None:
        p = replace(p, metrics_every=args.metrics_every)
    if p.join < 1 or p.max_concurrent < 1 or (p.metrics_every or 1) < 1:
        raise SpecError("--join, --max-concurrent and --metrics-every must be >= 1")
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    for x in strategies:
        if x not in STRATEGIES:
            raise SpecError(f"--strategies: unknown {x!r} (known: {', '.join(STRATEGIES)})")
    s = scenario(p, args.quick)
    out = args.out or RESULTS / f"join-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    ph = s.phases
    progress = Progress("join", ph.warmup + ph.steady + ph.during + ph.after,
                        enabled=not args.no_progress)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = []
    for i, strategy in enumerate(strategies):
        progress.start(strategy, i, len(strategies))
        with tempfile.TemporaryDirectory(prefix=f"join-{strategy}-") as tmp:
            run = await run_strategy(s, p, strategy, Path(tmp), progress)
            keep_logs(Path(tmp), out / "logs", strategy)
        progress.done(run.status, run.note)
        runs.append(run)
    meta = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["python -m loadtest.join", *args.argv])}
    data = join_report.result(s, p, runs, meta)
    join_report.write_json(out / "result.json", data)
    text = join_report.markdown(data)
    (out / "report.md").write_text(text)
    plotted = join_plot.plot(data, out / "join.png")
    print(text)
    print(f"report: {out / 'report.md'}\nresult: {out / 'result.json'}"
          + (f"\nplot:   {out / 'join.png'}" if plotted else ""))
    return 1 if any(r.status == "failed" for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        return uvloop.run(main_async(args))
    except SpecError as e:
        print(f"loadtest.join: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nloadtest.join: interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
