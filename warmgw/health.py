"""Health checks of the replicas that take (or are about to take) traffic: each watched
replica checked once an interval at its own offset in it (core.spread), a refused
connection ejecting it at once, `failures` failed checks in a row ejecting it, and, every
`metrics_every` checks, its start time compared (a restarted replica is cold)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from warmgw.config import HealthParams
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint
from warmgw.core.registry import Registry
from warmgw.core.spread import slice_count, slices
from warmgw.probe import out_of_fds
from warmgw.probe import what as _what
from warmgw.replicas import Replicas

log = logging.getLogger("warmgw.lifecycle")

WATCHED = frozenset({State.RAMPING, State.READY, State.WARMING})  # health-checked


class HealthChecks:
    def __init__(self, registry: Registry, replicas: Replicas, session: aiohttp.ClientSession,
                 health: HealthParams, clock: Clock,
                 marker: Callable[[Endpoint], Awaitable[float | None]],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.registry = registry
        self.replicas = replicas
        self.session = session
        self.health = health
        self.clock = clock
        self.marker = marker  # the replica's start time (process_start_time_seconds)
        self._sleep = sleep  # injected: tests walk the loop on a fake clock
        self.checking: dict[str, asyncio.Task[None]] = {}  # checks under way

    async def loop(self) -> None:
        """Every watched replica checked once an interval, each at its own offset in it
        (core.spread): a steady trickle of checks, not one burst of N each interval. A
        replica whose last check has not finished is not checked again meanwhile."""
        count = slice_count(self.health.interval)
        step = self.health.interval / count
        start = self.clock.now() + step
        while True:
            watched = [ep.name for ep in self.registry.endpoints.values() if ep.state in WATCHED]
            for i, group in enumerate(slices(watched, count)):
                if not group:
                    continue  # no wake-up for an empty slice (most are, with few replicas)
                await self._sleep(max(0.0, start + i * step - self.clock.now()))
                for name in group:
                    ep = self.registry.endpoints.get(name)
                    if ep is None or ep.state not in WATCHED or name in self.checking:
                        continue
                    task = asyncio.create_task(self._check(ep), name=f"warmgw-health-{name}")
                    self.checking[name] = task
                    task.add_done_callback(functools.partial(self._checked, name))
            end = start + self.health.interval  # the next pass's first slice
            await self._sleep(max(0.0, end - self.clock.now()))
            start = max(end, self.clock.now())  # no catching up

    def _checked(self, name: str, task: asyncio.Task[None]) -> None:
        if self.checking.get(name) is task:
            del self.checking[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("health check of %s failed", name, exc_info=task.exception())

    async def _check(self, ep: Endpoint) -> None:
        """One health check. A refused connection means the process is gone: out at once.
        A timeout or an error status counts; `failures` in a row eject (one slow answer on
        a busy machine does not make a replica cold). Every `metrics_every` checks, the
        replica's start time is compared: a new one means it restarted, cold."""
        down = False
        try:
            timeout = aiohttp.ClientTimeout(total=self.health.timeout)
            async with self.session.get(ep.url + "/health", timeout=timeout) as r:
                await r.read()
                ok = r.status == 200
                why = f"/health answered {r.status}"
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError) as e:
            if out_of_fds(e):  # the gateway's own shortage says nothing of the replica
                log.error("health check of %s skipped: the gateway is out of file "
                          "descriptors (raise its open-file limit)", ep.name)
                return
            ok, why = False, f"/health failed: {_what(e)}"
            down = isinstance(e, aiohttp.ClientConnectorError)
        rec = self.replicas.get(ep.name)
        if rec is None or ep.state not in WATCHED:
            return
        if not ok:
            rec.checks = -1  # the next good answer reads its start time again
            rec.health_failures += 1
            if down or rec.health_failures >= self.health.failures:
                rec.health_failures = 0
                self.registry.eject(ep, f"{why}; cold until proven warm", cold=True)
            return
        rec.health_failures = 0
        rec.checks += 1
        if rec.checks % self.health.metrics_every and ep.start_marker is not None:
            return
        marker = await self.marker(ep)
        if marker is not None and ep.start_marker is not None and marker != ep.start_marker:
            self.registry.eject(ep, "restarted (process_start_time_seconds changed)", cold=True)
