"""Run one scenario for each strategy, each on a fresh simulated fleet with the same seeds.

One strategy's run, all within the scenario's `limit` once the load starts:

1. start the simulator (every replica of the scenario, newcomers too) in its own process;
2. prewarm the initial replicas directly, so every strategy starts equally warm;
3. start the balancer over the initial replicas and wait until it routes to all of them;
4. start the load: `warmup` seconds (not measured), then `steady`; the event time T0 is
   the end of steady, later if the balancer still ramps its initial replicas (time-based
   slow start ramps them after its own start too);
5. run the events at T0 + at, one after the other; `during` lasts until T0 + during, or
   until `settle` seconds after the last event action if that is later; then `after`;
6. stop the load, let requests in flight end, read the simulator's counters, stop every
   process.

The simulator's counters (GET /sim/stats) are read when the load starts, at T0, at the
end of `during` and at the end, so cold hits are known per phase; at the end, the
newcomers' own request logs say which user requests on them paid a first-use cost, and
for what (GET /sim/requests), and the balancer says what it counted itself, if it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.balancers import Balancer, BalancerError, Unavailable, Warmgw
from loadtest.envoy_epp import WarmEnvoy
from loadtest.peer_balancers import PEERS
from loadtest.procs import ChildFailed, Children, cpu_seconds, host_cpu
from loadtest.progress import Progress
from loadtest.router_balancers import ROUTERS
from loadtest.sessions import SessionLoad
from loadtest.simfleet import SimFleet
from loadtest.spec import Event, Scenario
from loadtest.workload import Load, Sample

WARMGW = ("warm", "slow_start", "round_robin")
STRATEGIES = (*WARMGW, *PEERS, "warm_envoy")  # the default run order (warm_envoy: Envoy's EPP)
KNOWN = (*STRATEGIES, *ROUTERS)  # and a scenario's variants (Scenario.variants)
READY_TIMEOUT = 90.0  # s for the balancer to route to the initial replicas
TRACE_EVERY = 0.5  # s between two looks at the balancer's view of the replicas
GRACE = 30.0  # s for requests in flight at the end


@dataclass
class StrategyRun:
    strategy: str
    status: str = "ok"  # ok | skipped | failed
    note: str = ""
    samples: list[Sample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # t, what, note
    phases: dict[str, list[float]] = field(default_factory=dict)  # name -> [t0, t1]
    sim: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # when -> stats
    trace: list[dict[str, Any]] = field(default_factory=list)
    replica_urls: dict[str, str] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)  # s spent on each setup step
    cpu: dict[str, float] = field(default_factory=dict)  # cores busy while the load ran
    truncated: bool = False
    # newcomer -> its user requests that paid a first-use cost (SimFleet.user_cold)
    newcomer_cold: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    balancer: dict[str, Any] = field(default_factory=dict)  # Balancer.report() at the end
    turns: list[dict[str, Any]] = field(default_factory=list)  # SessionLoad.turns


def known(s: Scenario) -> tuple[str, ...]:
    return (*KNOWN, *(v.name for v in s.variants if v.name not in KNOWN))


def default_strategies(s: Scenario) -> tuple[str, ...]:
    return s.strategies or STRATEGIES


def make_balancer(strategy: str, kids: Children, workdir: Path, s: Scenario,
                  *args: Any) -> Balancer:
    if strategy in WARMGW or s.variant(strategy) is not None:
        return Warmgw(strategy, kids, workdir, s, *args)
    if strategy in PEERS:
        return PEERS[strategy](kids, workdir, s, *args)
    if strategy in ROUTERS:
        return ROUTERS[strategy](kids, workdir, s, *args)
    if strategy == "warm_envoy":
        return WarmEnvoy(kids, workdir, s, *args)
    raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(known(s))})")


class Clock:
    """Sleeps measured on the load's clock, never past the run's hard limit."""

    def __init__(self, load: Load, limit: float) -> None:
        self.load = load
        self.limit = limit

    def now(self) -> float:
        return self.load.now()

    def left(self) -> float:
        return self.limit - self.now()

    async def until(self, t: float) -> bool:
        """Sleep until t; False (at once) if t is past the limit."""
        if t > self.limit:
            await asyncio.sleep(max(0.0, self.left()))
            return False
        await asyncio.sleep(max(0.0, t - self.now()))
        return True


async def run_strategy(
    s: Scenario, strategy: str, workdir: Path, progress: Progress
) -> StrategyRun:
    run = StrategyRun(strategy)
    with Children(workdir) as kids:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            try:
                await _run(s, strategy, workdir, kids, session, run, progress)
            except Unavailable as e:
                run.status, run.note = "skipped", f"{strategy}: {e}"
            except (BalancerError, ChildFailed, RuntimeError, aiohttp.ClientError,
                    TimeoutError, OSError) as e:
                run.status, run.note = "failed", f"{type(e).__name__}: {e}"
    return run


async def _run(s: Scenario, strategy: str, workdir: Path, kids: Children,
               session: aiohttp.ClientSession, run: StrategyRun, progress: Progress) -> None:
    t = time.monotonic()
    progress.phase("simulator")
    fleet = SimFleet(kids, s.fleet, session)
    await fleet.start()
    run.replica_urls = {n: r.url for n, r in fleet.replicas.items()}
    initial = [r.name for r in s.fleet.initial]
    progress.phase("prewarm")
    await fleet.prewarm(initial, s.workload)
    run.setup["prewarm"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    progress.phase("balancer")
    bal = make_balancer(strategy, kids, workdir, s, session, fleet.replicas)
    try:
        await bal.start(fleet.of(s.fleet.initial))
        await bal.wait_routable(initial, READY_TIMEOUT)
    except BalancerError as e:
        raise Unavailable(str(e)) from e
    run.setup["balancer"] = round(time.monotonic() - t, 2)
    run.sim["start"] = await fleet.stats()

    load: Load | SessionLoad
    if s.workload.prefix is not None:
        load = SessionLoad(bal.url, s.workload, s.fleet.sim.model, bal.replica_of)
    else:
        load = Load(bal.url, s.workload, s.fleet.sim.model, bal.replica_of)
    cpu0 = _cpu()
    await load.start(stop_at=s.limit)
    clock = Clock(load, s.limit)
    progress.attach(load)
    tracer = asyncio.create_task(_trace(bal, load, run))
    try:
        await _timeline(s, bal, fleet, clock, run, progress)
    finally:
        load.stop_at(load.now())  # normally the end already; sooner on an error
        progress.phase("finishing")
        await load.wait(GRACE)
        tracer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tracer
        run.samples = load.samples
        progress.detach()
        run.cpu = _cpu_used(cpu0, _cpu())
    run.sim["end"] = await fleet.stats()
    run.newcomer_cold = await fleet.user_cold(newcomers(s))
    run.balancer = await bal.report()
    if isinstance(load, SessionLoad):
        run.turns, run.samples = await served_by(fleet, load)


async def served_by(fleet: SimFleet, load: SessionLoad
                    ) -> tuple[list[dict[str, Any]], list[Sample]]:
    """The session load's records and samples with the replica that served each request,
    from the replicas' own request logs (by X-Request-Id): a balancer need not say; and
    `fleet_cached`: the most of the prompt another replica held cached at that moment."""
    where = await fleet.served_by()
    turns, samples = [], []
    for rec, smp in zip(load.turns, load.samples, strict=True):
        name, held = where.get(rec["rid"], (rec["replica"], -1))
        turns.append({**rec, "replica": name, "fleet_cached": held})
        samples.append(smp if smp.replica == name else dataclasses.replace(smp, replica=name))
    return turns, samples


def newcomers(s: Scenario) -> list[str]:
    return [r.name for r in s.fleet.replicas if not r.initial]


async def _timeline(s: Scenario, bal: Balancer, fleet: SimFleet, clock: Clock,
                    run: StrategyRun, progress: Progress) -> None:
    p = s.phases
    progress.phase("warmup")
    await clock.until(p.warmup)
    progress.phase("steady")
    rest = p.during + p.after
    await clock.until(p.warmup + p.steady)
    # time-based slow start also ramps the initial replicas after the balancer started:
    # the event waits (within the limit) until they are at full weight
    if not await bal.wait_settled(max(0.0, clock.left() - rest)):
        run.note = "initial replicas not at full weight before the event (limit reached)"
    t0 = clock.now()
    run.phases["warmup"] = [0.0, p.warmup]
    run.phases["steady"] = [p.warmup, t0]
    run.sim["event"] = await fleet.stats()
    served = {n: st.get("user_requests", 0) + st.get("warmup_requests", 0)
              for n, st in run.sim["event"].items() if n in newcomers(s)}
    if any(served.values()):  # a newcomer must join cold
        run.note = (run.note + "; " if run.note else "") + "not cold at T0: " + ", ".join(
            f"{n} had served {k} request(s)" for n, k in served.items() if k)
    progress.phase("event")
    last = t0
    for ev in s.events:
        if not await clock.until(t0 + ev.at):
            run.truncated = True
            break
        await _event(ev, bal, fleet, clock, run)
        last = clock.now()
    during_end = max(t0 + p.during, last + p.settle)
    run.phases["during"] = [t0, during_end]
    progress.phase("during")
    if not await clock.until(during_end):
        run.truncated = True
    run.sim["during_end"] = await fleet.stats()
    end = min(during_end + p.after, s.limit)
    run.phases["after"] = [during_end, end]
    progress.phase("after")
    clock.load.stop_at(end)
    await clock.until(end)


def _cpu() -> tuple[float, float, float, float]:
    """(monotonic, CPU s of this process and its children, host busy s, host total s)."""
    busy, total = host_cpu()
    return time.monotonic(), cpu_seconds([os.getpid()]), busy, total


def _cpu_used(a: tuple[float, ...], b: tuple[float, ...]) -> dict[str, float]:
    """Cores busy on average while the load ran: this benchmark's processes, and every
    other process of the machine (noise from outside the benchmark)."""
    wall = b[0] - a[0]
    if wall <= 0:
        return {}
    ours = (b[1] - a[1]) / wall
    busy = (b[2] - a[2]) / wall
    return {"wall_s": round(wall, 1), "cores": round((b[3] - a[3]) / wall, 1),
            "ours_cores": round(ours, 2), "others_cores": round(max(0.0, busy - ours), 2)}


def _record(run: StrategyRun, clock: Clock, what: str, note: str = "") -> None:
    run.events.append({"t": round(clock.now(), 3), "what": what, "note": note})


async def _event(ev: Event, bal: Balancer, fleet: SimFleet, clock: Clock,
                 run: StrategyRun) -> None:
    timeout = min(ev.timeout, max(1.0, clock.left()))

    async def step(what: str, action: Callable[[], Any], at_end: bool = False) -> bool:
        """Run one action and record it (at its start, or at its end for a wait)."""
        t = clock.now()
        try:
            note = await action()
        except (BalancerError, aiohttp.ClientError, TimeoutError, OSError,
                RuntimeError) as e:
            run.events.append({"t": round(clock.now() if at_end else t, 3), "what": what,
                               "note": f"FAILED: {type(e).__name__}: {e}"})
            return False
        run.events.append({"t": round(clock.now() if at_end else t, 3), "what": what,
                           "note": note or "", "took": round(clock.now() - t, 3)})
        return True

    if ev.action == "add":
        await step(ev.label(), lambda: bal.add(fleet_reps(fleet, ev.replicas)))
    elif ev.action == "remove":
        await step(ev.label(), lambda: bal.remove(list(ev.replicas)))
    elif ev.action == "restart" and ev.signal:
        for n in ev.replicas:  # one at a time, each routable again before the next
            async def stop_start(n: str = n) -> str:
                return await fleet.signal(n, ev.signal)

            async def back(n: str = n) -> str:
                took = await bal.wait_routable([n], min(ev.timeout, max(1.0, clock.left())))
                return f"routable {took:.1f} s after it was serving"

            if await step(f"{ev.signal} {n}", stop_start):
                await step(f"{n} routable", back, at_end=True)
    elif ev.action == "restart":
        async def restart() -> str:
            for n in ev.replicas:
                await fleet.restart(n)
            return "POST /sim/restart (the replica comes back cold)"
        await step(ev.label(), restart)
    elif ev.action == "cutover":
        # recorded when the switch happened (warmgw refuses it until green is warm)
        await step(ev.label(), lambda: bal.cutover(ev.frm, ev.to, timeout), at_end=True)
    elif ev.action == "rolling":
        for old, new in ev.pairs:
            await _replace(old, new, ev, bal, fleet, clock, step)


async def _replace(old: str, new: str, ev: Event, bal: Balancer, fleet: SimFleet,
                   clock: Clock, step: Callable[..., Awaitable[bool]]) -> None:
    """One step of a rolling update: add new, wait until it is routable, hold, remove old."""

    async def add() -> str:
        return await bal.add(fleet_reps(fleet, (new,)))

    async def routable() -> str:
        took = await bal.wait_routable([new], min(ev.timeout, max(1.0, clock.left())))
        return f"routable {took:.1f} s after it was added"

    async def remove() -> str:
        return await bal.remove([old])

    await step(f"add {new}", add)
    await step(f"{new} routable", routable, at_end=True)
    await asyncio.sleep(min(ev.hold, max(0.0, clock.left())))
    await step(f"remove {old}", remove)


def fleet_reps(fleet: SimFleet, names: tuple[str, ...]) -> list[Any]:
    return [fleet.get(n) for n in names]


async def _trace(bal: Balancer, load: Load, run: StrategyRun) -> None:
    while True:
        try:
            view = await bal.observe()
        except (aiohttp.ClientError, TimeoutError, OSError, BalancerError):
            view = {}
        if view:
            run.trace.append({"t": round(load.now(), 3), "replicas": view})
        await asyncio.sleep(TRACE_EVERY)


def keep_logs(workdir: Path, logs: Path, strategy: str) -> None:
    """Each process's log and config, as logs/STRATEGY-NAME."""
    logs.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("*"):
        if f.is_file() and f.suffix in (".log", ".yaml", ".cfg", ".json"):
            shutil.copy(f, logs / f"{strategy}-{f.name}")


async def run_all(s: Scenario, strategies: list[str], out: Path,
                  progress: Progress) -> list[StrategyRun]:
    runs = []
    logs = out / "logs"
    for i, strategy in enumerate(strategies):
        progress.start(strategy, i, len(strategies))
        with tempfile.TemporaryDirectory(prefix=f"loadtest-{strategy}-") as tmp:
            run = await run_strategy(s, strategy, Path(tmp), progress)
            keep_logs(Path(tmp), logs, strategy)
        progress.done(run.status, run.note)
        runs.append(run)
    return runs
