"""Runs what the lifecycle asks for: probes, warmups and health checks. A replica's probe or
warmup task lives in its record (warmgw.replicas), started when a transition asks for it
and cancelled when the replica leaves that state; the ticker and the health loop are owned
here, created on start and cancelled and awaited on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from warmgw.config import HealthParams
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint
from warmgw.core.profile import ProfileParams, TrafficProfile
from warmgw.core.registry import Registry, Transition
from warmgw.core.telemetry import Histogram
from warmgw.core.warm import OnDeadline, WarmProfile, WarmShape, extra_shapes
from warmgw.health import HealthChecks
from warmgw.probe import (
    Probe,
    ProbeFailed,
    base_model,
    engine_gauges,
    out_of_fds,
    start_marker,
)
from warmgw.probe import what as _what
from warmgw.replicas import Replica, Replicas
from warmgw.slots import Slots
from warmgw.warmup import Warmer, WarmupFailed

log = logging.getLogger("warmgw.lifecycle")

WARMUP_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class WarmCoordinator(Protocol):
    """Decides, across gateway replicas, who warms a replica (Kubernetes: a Lease)."""

    def warmed_elsewhere(self, name: str) -> bool: ...

    async def acquire(self, name: str) -> bool: ...

    def release(self, name: str) -> None: ...


class Supervisor:
    def __init__(
        self,
        registry: Registry,
        replicas: Replicas,
        session: aiohttp.ClientSession,
        warmer: Warmer,
        profile: WarmProfile,
        health: HealthParams,
        clock: Clock,
        coordinator: WarmCoordinator | None = None,
        traffic: TrafficProfile | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        prefixes: Callable[[Endpoint], Awaitable[int]] | None = None,
    ) -> None:
        self._sleep = sleep  # injected: tests walk the probe and health loops on a fake clock
        self._prefixes = prefixes  # replays the kept hot prefixes to a warmed replica
        self.coordinator = coordinator
        self.traffic = traffic or TrafficProfile(ProfileParams())  # what users send
        self.registry = registry
        self.replicas = replicas
        self.session = session
        self.warmer = warmer
        self.profile = profile
        self.health = health
        self.clock = clock
        self._loops: list[asyncio.Task[None]] = []
        self._warm_slots = Slots(profile.max_concurrent)
        self.warmups: dict[str, int] = {}  # outcome -> count
        self.warmup_seconds = Histogram(WARMUP_BUCKETS)
        self.checks = HealthChecks(registry, replicas, session, health, clock, self.marker,
                                   sleep)

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._ticker(), name="warmgw-tick"),
            asyncio.create_task(self.checks.loop(), name="warmgw-health"),
        ]

    async def stop(self) -> None:
        tasks = [*self._loops, *self.checks.checking.values()]
        for rec in self.replicas.records.values():
            if rec.task is not None:
                tasks.append(rec.task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops = []

    # -- reacting to the lifecycle -------------------------------------------------------

    def react(self, t: Transition, rec: Replica) -> None:
        log.info("replica %s: %s -> %s (%s)", t.name, t.frm, t.to, t.reason)
        ep = self.registry.endpoints.get(t.name)
        if ep is None or ep.state is not t.to:
            self._cancel(rec)  # gone, or moved on since: a later transition says what next
            return
        if t.to is State.PROBING:
            self._spawn(rec, self._probe(ep))
        elif t.to is State.WARMING:
            self._spawn(rec, self._warm(ep))
        elif t.to in (State.EJECTED, State.DRAINING, State.GONE):
            self._cancel(rec)

    def _spawn(self, rec: Replica, coro: Any) -> None:
        if not self._loops:  # stopped
            coro.close()
            return
        self._cancel(rec)
        task = asyncio.create_task(coro, name=f"warmgw-{rec.name}")
        rec.task = task
        task.add_done_callback(lambda t: self._done(rec, t))

    def _done(self, rec: Replica, task: asyncio.Task[None]) -> None:
        if rec.task is task:
            rec.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("replica %s: task failed", rec.name, exc_info=task.exception())

    def _cancel(self, rec: Replica) -> None:
        task = rec.task
        rec.task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    @property
    def requests_sent(self) -> int:
        return self.warmer.requests_sent

    @property
    def refused(self) -> int:
        return self.warmer.refused

    def engine(self, name: str) -> dict[str, float]:
        """The vLLM gauges last read from a replica (empty when never read)."""
        rec = self.replicas.get(name)
        return rec.engine if rec is not None else {}

    # -- probing -------------------------------------------------------------------------

    async def probe_once(self, ep: Endpoint) -> Probe:
        timeout = aiohttp.ClientTimeout(total=self.health.timeout)
        async with self.session.get(ep.url + "/health", timeout=timeout) as r:
            await r.read()
            if r.status != 200:
                raise ProbeFailed(f"/health answered {r.status}")
        async with self.session.get(ep.url + "/v1/models", timeout=timeout) as r:
            if r.status != 200:
                raise ProbeFailed(f"/v1/models answered {r.status}")
            data = await r.json(content_type=None)
        try:
            items = data["data"]
            models = frozenset(str(m["id"]) for m in items)
            lens = [m.get("max_model_len") for m in items if isinstance(m, dict)]
            # vLLM lists a LoRA adapter with its base model as parent
            adapters = frozenset(str(m["id"]) for m in items if m.get("parent"))
        except (KeyError, TypeError, AttributeError) as e:
            raise ProbeFailed(f"/v1/models is not an OpenAI model list: {e!r}") from None
        max_len = next((n for n in lens if isinstance(n, int)), None)
        return Probe(models, adapters, max_len, await self.marker(ep))

    async def marker(self, ep: Endpoint) -> float | None:
        """Read the replica's /metrics: its start time, and its queue and KV gauges."""
        try:
            timeout = aiohttp.ClientTimeout(total=self.health.timeout)
            async with self.session.get(ep.url + "/metrics", timeout=timeout) as r:
                if r.status != 200:
                    return None
                text = await r.read()
                rec = self.replicas.get(ep.name)
                if rec is not None:
                    rec.engine = engine_gauges(text)
                    tokens = rec.engine.get("cache_tokens")
                    if tokens is not None:
                        self.registry.cache_size(ep.name, int(tokens))
                return start_marker(text)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _probe(self, ep: Endpoint) -> None:
        delay = self.health.interval / 4
        failing = False
        while ep.state is State.PROBING:
            try:
                probe = await self.probe_once(ep)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ProbeFailed, ValueError) as e:
                if not failing:  # out of fds: the gateway's shortage, retried all the same
                    if out_of_fds(e):
                        log.error("replica %s: probe waits, the gateway is out of file "
                                  "descriptors (raise its open-file limit)", ep.name)
                    else:
                        log.info("replica %s: not answering yet (%s)", ep.name, _what(e))
                    failing = True
                await self._sleep(delay)
                delay = min(delay * 2, self.health.probe_backoff_max)
                continue
            if not probe.models:
                log.warning("replica %s: /v1/models lists no model", ep.name)
                await self._sleep(delay)
                continue
            self.registry.probe_ok(ep.name, probe.models, probe.max_model_len, probe.marker,
                                   probe.adapters)
            return

    # -- warming -------------------------------------------------------------------------

    async def _warm(self, ep: Endpoint) -> None:
        coord = self.coordinator
        if coord is None:
            await self._warm_here(ep)
            return
        waiting = False
        while True:
            if coord.warmed_elsewhere(ep.name):
                rec = self.replicas.get(ep.name)
                if rec is not None:
                    rec.warmed_here = False
                self.registry.warm_done(
                    ep.name, 0, {}, "warmed by another gateway replica (pod condition)"
                )
                return
            if await coord.acquire(ep.name):
                break
            if not waiting:
                log.info("replica %s: another gateway replica is warming it", ep.name)
                waiting = True
            await asyncio.sleep(self.health.interval)
        try:
            await self._warm_here(ep)
        finally:
            coord.release(ep.name)

    async def _warm_here(self, ep: Endpoint) -> None:
        """Warm, retrying with backoff while the gateway itself is out of file descriptors
        (EMFILE/ENFILE): its own shortage is no failure of the replica."""
        delay = self.health.interval / 4
        waited = False
        while await self._warm_once(ep):
            if not waited:
                log.error("replica %s: warmup waits, the gateway is out of file descriptors "
                          "(raise its open-file limit)", ep.name)
                waited = True
            await self._sleep(delay)
            delay = min(delay * 2, self.health.probe_backoff_max)
        if waited:
            log.info("replica %s: warmup resumed after the file descriptor shortage", ep.name)

    async def _warm_once(self, ep: Endpoint) -> bool:
        """One warmup; True if it could not connect for want of file descriptors (its
        slot given back meanwhile)."""
        # a replica that has served users goes first: the fleet is short of it now
        async with self._warm_slots.hold(priority=0 if ep.requests else 1):
            if ep.state is not State.WARMING:
                return False
            base = base_model(ep.models, ep.adapters)
            ref = self.registry.warm_reference.get(base)
            extra = self._extra_shapes(ep)
            started = self.clock.now()
            try:
                async with asyncio.timeout(self.profile.deadline):
                    result = await self.warmer.warm(ep.url, base, ep.max_model_len, ref, ep.name,
                                                    extra, self.traffic.specs)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self._count("deadline", started)
                self._deadline(ep, f"warmup deadline of {self.profile.deadline:g} s passed")
                return False
            except (aiohttp.ClientError, WarmupFailed) as e:
                if out_of_fds(e) or out_of_fds(e.__cause__ or e):
                    return True
                self._count("failed", started)
                self.registry.warm_failed(ep.name, f"warmup failed: {_what(e)}")
                return False
            if result.converged and self._prefixes is not None:
                await self._prefixes(ep)  # bounded by warm_seconds; its errors are logged
        self._count("converged" if result.converged else "not_converged", started)
        if result.converged:
            self._warmed_here(ep.name)
            why = (
                f"warm: converged after {result.rounds} round(s), {result.requests} requests"
                f" in {result.seconds:.1f} s"
            )
            self.registry.warm_done(ep.name, result.rounds, result.latencies, why, result.sent)
        else:
            left = ", ".join(result.unsettled[:3])
            self._deadline(ep, f"not converged after {result.rounds} round(s) ({left})")
        return False

    def _extra_shapes(self, ep: Endpoint) -> list[WarmShape]:
        p = self.profile
        top = self.traffic.top(self.clock.now(), ep.models) if p.learned else []
        lora = self.engine(ep.name).get("max_lora")
        return extra_shapes(p, top, ep.adapters, ep.max_model_len,
                            int(lora) if lora is not None else None)

    def _count(self, outcome: str, started: float) -> None:
        self.warmups[outcome] = self.warmups.get(outcome, 0) + 1
        self.warmup_seconds.observe(self.clock.now() - started)

    def _warmed_here(self, name: str) -> None:
        rec = self.replicas.get(name)
        if rec is not None:
            rec.warmed_here = True

    def _deadline(self, ep: Endpoint, why: str) -> None:
        if self.profile.on_deadline is OnDeadline.RAMP:
            self._warmed_here(ep.name)
            self.registry.warm_done(ep.name, 0, {}, f"{why}; ramping anyway")
        else:
            self.registry.warm_failed(ep.name, f"{why}; held out")

    # -- time and health -----------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.registry.tick()
