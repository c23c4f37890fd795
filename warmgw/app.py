"""The composition root: builds every part from the config and owns every background task."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import aiohttp
from aiohttp import web

from warmgw.config import Config
from warmgw.core.clock import Clock, MonotonicClock
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import Registry, Strategy
from warmgw.proxy import Proxy
from warmgw.supervisor import Supervisor
from warmgw.warmup import Warmer

log = logging.getLogger("warmgw")


def initial_policy(config: Config) -> TrafficPolicy:
    pools = config.pools
    return TrafficPolicy.single(config.active_pool or (pools[0] if pools else "default"))


class Gateway:
    """The running gateway: `async with Gateway(cfg) as gw:` serves on gw.url."""

    def __init__(
        self, config: Config, clock: Clock | None = None, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.registry = Registry(config.lifecycle, self.clock, initial_policy(config))
        self._runner: web.AppRunner | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self.supervisor: Supervisor | None = None
        self.proxy: Proxy | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.listen.host}:{self.port}"

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        cfg = self.config
        up = cfg.upstream
        proxy_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=up.connect_timeout, sock_read=up.read_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        control_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=up.connect_timeout),
        )
        self._sessions = [proxy_session, control_session]
        naive = cfg.lifecycle.strategy is Strategy.ROUND_ROBIN
        self.proxy = Proxy(self.registry, proxy_session, up, self.clock, self.rng, naive)
        warmer = Warmer(control_session, cfg.warmup, self.clock)
        self.supervisor = Supervisor(
            self.registry, control_session, warmer, cfg.warmup, cfg.health, self.clock
        )
        self.registry.sync(cfg.replicas)
        await self.supervisor.start()

        app = web.Application(client_max_size=up.max_body_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/v1/{tail:.*}", self.proxy.handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen.host, cfg.listen.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.listen.port
        log.info("warmgw serving on %s (strategy %s)", self.url, cfg.lifecycle.strategy)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.supervisor is not None:
            await self.supervisor.stop()
        for s in self._sessions:
            await s.close()
        self._sessions = []

    def reload(self, config: Config) -> None:
        """Apply a re-read config's replica list: add new replicas, drain removed ones."""
        self.config = config
        self.registry.sync(config.replicas)

    # -- own endpoints -------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        routes = self.registry.snapshot.routes
        body: dict[str, Any] = {"ready": bool(routes), "models": sorted(routes)}
        return web.Response(
            status=200 if routes else 503, text=json.dumps(body), content_type="application/json"
        )


async def serve_forever(config: Config) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP re-reads the config's replica list."""
    import signal

    from warmgw.config import ConfigError, load

    gw = Gateway(config)
    await gw.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def reload() -> None:
        if not config.source:
            return
        try:
            gw.reload(load(config.source))
            log.info("config %s re-read", config.source)
        except ConfigError as e:
            log.error("config not reloaded: %s", e)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await gw.stop()
