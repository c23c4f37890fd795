"""The composition root: builds every part from the config and owns every background task."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from warmgw import metrics, status
from warmgw.admin import Admin
from warmgw.config import ClientLimits, Config, KubeParams, load
from warmgw.core.bluegreen import BlueGreen
from warmgw.core.clock import Clock, MonotonicClock
from warmgw.core.lifecycle import WARM
from warmgw.core.model import Endpoint, EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import Registry, Strategy
from warmgw.discovery.kube import KubeDiscovery, default_identity, own_namespace
from warmgw.discovery.kube import api_client as kube_api_client
from warmgw.h1.client import Pool
from warmgw.h1.server import Request, Server
from warmgw.policy.configmap import ConfigMapStore
from warmgw.policy.keeper import PolicyKeeper
from warmgw.policy.stores import FileStore, MemoryStore
from warmgw.proxy import Proxy
from warmgw.supervisor import Supervisor
from warmgw.warmup import Warmer

log = logging.getLogger("warmgw")

# Idle pooled connections to replicas are dropped before vLLM's own keep-alive (uvicorn,
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s) closes them: a request sent on a connection the replica
# is closing at that moment would fail with no way to know whether it was taken.
UPSTREAM_KEEPALIVE = 4.0


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, but a client's malformed HTTP (answered 400 by the parser) at
    debug level: an error with a traceback per bad request would let any client flood the
    log. Errors in the gateway's own handlers stay errors."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug(f"{msg}: %s", *args, exc_info)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def first_pool(config: Config) -> str:
    pools = config.pools
    return config.active_pool or (pools[0] if pools else "default")


async def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or []:
            return int(sock.getsockname()[1])
    return 0


class Gateway:
    """The running gateway: `async with Gateway(cfg) as gw:` serves on gw.url."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        self.config = config
        self.limits = limits or config.clients
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.registry = Registry(
            config.lifecycle, self.clock, TrafficPolicy.single(first_pool(config))
        )
        self.bluegreen = BlueGreen(self.registry, config.cutover, self.clock, first_pool(config))
        store = FileStore(config.state_file) if config.state_file else MemoryStore()
        self.keeper = PolicyKeeper(self.bluegreen, store)
        self.bluegreen.on_change = self.keeper.changed
        self.kube: KubeDiscovery | None = None
        self._kube_api: Any = None
        self.static_specs: dict[str, EndpointSpec] = {s.name: s for s in config.replicas}
        self._runners: list[web.AppRunner] = []  # the admin listener
        self._server: Server | None = None  # the user listener
        self._pool: Pool | None = None  # connections to the replicas for user requests
        self._sessions: list[aiohttp.ClientSession] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.supervisor: Supervisor | None = None
        self.proxy: Proxy | None = None
        self.port = 0
        self.admin_port = 0
        self.stopping = False
        self._metrics_registry = metrics.registry_for(self)

    @property
    def url(self) -> str:
        return f"http://{self.config.listen.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin.host}:{self.admin_port}"

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # nothing half-started is left behind
            raise

    async def _start(self) -> None:
        cfg = self.config
        up = cfg.upstream
        self._pool = Pool(up.connect_timeout, up.read_timeout, UPSTREAM_KEEPALIVE)
        # Probes and health checks (about one request at a time per replica) apart from
        # warmup (bursts of up to the largest concurrency step): sharing one pool, the
        # checks would keep a whole burst's connections alive forever by taking them in turn.
        control_session, warm_session = (aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=up.connect_timeout),
        ) for _ in range(2))
        self._sessions = [control_session, warm_session]
        naive = cfg.lifecycle.strategy is Strategy.ROUND_ROBIN
        self.proxy = Proxy(self.registry, self._pool, up, self.clock, self.rng, naive)
        warmer = Warmer(warm_session, cfg.warmup, self.clock)
        if cfg.kubernetes is not None:
            await self._start_kube(cfg.kubernetes)
        await self.keeper.start()
        self.supervisor = Supervisor(
            self.registry, control_session, warmer, cfg.warmup, cfg.health, self.clock,
            coordinator=self.kube,
        )
        if self.kube is None:
            self.registry.sync(self.static_specs.values())
        await self.supervisor.start()
        if self.kube is not None:
            await self.kube.start()
        self._tasks = [
            asyncio.create_task(self._policy_loop(), name="warmgw-policy"),
        ]

        self._server = Server(self._dispatch, self.limits, up.max_body_bytes)
        self.port = await self._server.listen(cfg.listen.host, cfg.listen.port)
        log.info("warmgw serving on %s (strategy %s)", self.url, cfg.lifecycle.strategy)
        if cfg.admin.token:
            admin = Admin(self, cfg.admin.token).app()
            self.admin_port = await self._listen(admin, cfg.admin.host, cfg.admin.port)
            log.info("admin API on %s", self.admin_url)
        else:
            log.warning("admin API off: set admin.token or WARMGW_ADMIN_TOKEN to enable it")

    async def _listen(self, app: web.Application, host: str, port: int) -> int:
        lim = self.limits
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None,
            shutdown_timeout=self.config.listen.shutdown_timeout,
            keepalive_timeout=lim.idle_timeout, max_line_size=lim.max_line_size,
            max_field_size=lim.max_field_size, max_headers=lim.max_headers,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port).start()
        return await _bound_port(runner) or port

    @property
    def client_connections(self) -> int:
        """Client connections open on the gateway's listeners (user and admin)."""
        admin = sum(len(r.server.connections) for r in self._runners if r.server is not None)
        return admin + (len(self._server.connections) if self._server is not None else 0)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and streams finish (up to
        listen.shutdown_timeout), then stop the background work."""
        self.stopping = True
        stops = [r.cleanup() for r in self._runners]
        if self._server is not None:
            stops.append(self._server.stop(self.config.listen.shutdown_timeout))
        await asyncio.gather(*stops)
        self._runners = []
        self._server = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.kube is not None:
            await self.kube.stop()
        await self.keeper.stop()
        if self._kube_api is not None:
            await self._kube_api.close()
            self._kube_api = None
        for s in self._sessions:
            await s.close()
        self._sessions = []

    async def _start_kube(self, k: KubeParams) -> None:
        self._kube_api = await kube_api_client(k.kubeconfig)
        ns = k.namespace or own_namespace()
        self.kube = KubeDiscovery(
            self._kube_api, self.registry, ns, k.label_selector, k.pool_label, k.port,
            k.model, k.identity or default_identity(), k.readiness_gate, k.lease_duration,
            k.watch_timeout,
        )
        if k.policy_configmap:
            self.keeper.store = ConfigMapStore(self._kube_api, ns, k.policy_configmap,
                                               k.watch_timeout)

    # -- the traffic policy -----------------------------------------------------------------

    def policy_core(self) -> tuple[object, ...]:
        return self.keeper.core()

    async def commit_policy(self, base: tuple[object, ...] | None = None,
                            decided: tuple[object, ...] | None = None) -> bool:
        return await self.keeper.commit(base, decided)

    async def _policy_loop(self) -> None:
        last_keep = self.clock.now()
        while True:
            await asyncio.sleep(0.1)
            for pool in self.bluegreen.tick():
                cut = self.proxy.cut(pool) if self.proxy else 0
                log.warning("pool %s: drain deadline passed, %d request(s) cut", pool, cut)
            interval = self.config.cutover.keep_warm_interval
            if interval > 0 and self.clock.now() - last_keep >= interval:
                last_keep = self.clock.now()
                await self._keep_warm()

    async def _keep_warm(self) -> None:
        """Light synthetic traffic to the warm replicas of pools in their rollback window."""
        pools = self.bluegreen.kept_warm()
        if not pools or self.supervisor is None:
            return
        warmer = self.supervisor.warmer
        eps = [e for e in self.registry.endpoints.values()
               if e.pool in pools and e.state in WARM and e.models]
        results = await asyncio.gather(
            *(warmer.keep_warm(e.url, sorted(e.models)[0], e.max_model_len) for e in eps),
            return_exceptions=True,
        )
        for ep, res in zip(eps, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, BaseException):
                log.info("replica %s: keep-warm request failed: %s", ep.name, res)

    # -- replicas -------------------------------------------------------------------------

    def set_replicas(self, specs: Iterable[EndpointSpec]) -> None:
        self.static_specs = {s.name: s for s in specs}
        self.registry.sync(self.static_specs.values())

    def reload(self, config: Config) -> tuple[list[str], list[str]]:
        """Apply a re-read config's replica list: add new replicas, drain removed ones."""
        before = set(self.static_specs)
        self.config = config
        self.set_replicas(config.replicas)
        after = set(self.static_specs)
        return sorted(after - before), sorted(before - after)

    def reload_from_file(self) -> tuple[list[str], list[str]]:
        if not self.config.source:
            return [], []
        return self.reload(load(self.config.source))

    # -- state ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status.gateway(self.registry, self.bluegreen, str(self.config.lifecycle.strategy))

    def replica_status(self, ep: Endpoint) -> dict[str, Any]:
        return status.replica(ep, self.clock.now(), self.registry.policy.share(ep.pool))

    async def _dispatch(self, req: Request) -> None:
        """The user listener: the OpenAI API under /v1, and the gateway's own probes."""
        path = req.path
        if path.startswith("/v1/"):
            await self.proxy.handle(req) if self.proxy is not None else None
        elif path == "/metrics" and req.method == "GET":
            body = metrics.render(self._metrics_registry)
            req.conn.respond(200, [(b"Content-Type", metrics.CONTENT_TYPE.encode())], body)
        elif path == "/healthz" and req.method == "GET":
            req.conn.respond(200, [(b"Content-Type", b"text/plain; charset=utf-8")], b"ok\n")
        elif path == "/readyz" and req.method == "GET":
            routes = self.registry.snapshot.routes
            ready = bool(routes) and not self.stopping
            body = json.dumps({"ready": ready, "models": sorted(routes)}).encode()
            req.conn.respond(200 if ready else 503, [(b"Content-Type", b"application/json")],
                             body)
        elif path in ("/metrics", "/healthz", "/readyz"):
            req.conn.respond(405, [(b"Allow", b"GET"), (b"Content-Type", b"text/plain")],
                             b"405: Method Not Allowed\n")
        else:
            req.conn.respond(404, [(b"Content-Type", b"text/plain")], b"404: Not Found\n")


async def serve_forever(config: Config) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP re-reads the config's replica list."""
    import signal

    from warmgw.config import ConfigError

    gw = Gateway(config)
    await gw.start()  # on failure (e.g. an unreadable state file) it closes what it opened
    gc.freeze()  # what start-up built lives for good: keep it out of every collection
    gc.set_threshold(50_000, 20, 20)  # fewer young collections on the request path
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def reload() -> None:
        try:
            added, removed = gw.reload_from_file()
            log.info("config re-read: added %s, removed %s", added, removed)
        except ConfigError as e:
            log.error("config not reloaded: %s", e)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        inflight = sum(e.inflight for e in gw.registry.endpoints.values())
        log.info("stopping: no new connections; %d request(s) in flight get up to %g s",
                 inflight, config.listen.shutdown_timeout)
        await gw.stop()
        log.info("stopped")
