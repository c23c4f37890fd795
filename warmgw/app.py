"""The composition root: builds every part from the config, starts and stops them.

Everything is built in the constructor (which must run inside the event loop: the HTTP
sessions and listeners bind to it), so nothing is left to check for None later; start()
brings the parts up in dependency order and stop() takes them down in reverse, letting
in-flight requests finish first. What each part does lives in its own module:
docs/architecture.md has the map.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from warmgw import metrics, native, status
from warmgw.admin import Admin
from warmgw.config import ClientLimits, Config
from warmgw.core.bluegreen import BlueGreen
from warmgw.core.clock import Clock, MonotonicClock
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import Registry, Strategy
from warmgw.core.routing import Router
from warmgw.cutover import CutoverDriver
from warmgw.discovery.dns import DnsDiscovery
from warmgw.discovery.endpointslices import SliceDiscovery
from warmgw.discovery.gate import PodSource
from warmgw.discovery.httproute import RouteSwitch
from warmgw.discovery.inferencepool import PoolDiscovery
from warmgw.discovery.kapi import KubeApi, default_identity, own_namespace
from warmgw.discovery.kube import KubeDiscovery
from warmgw.discovery.static import StaticDiscovery
from warmgw.epp.server import EndpointPicker
from warmgw.h1.pool import Pool
from warmgw.listener import UserListener
from warmgw.loopsteps import LoopSteps
from warmgw.policy.configmap import ConfigMapStore
from warmgw.policy.keeper import PolicyKeeper
from warmgw.policy.stores import FileStore, MemoryStore, PolicyStore
from warmgw.prefixwarm import PrefixWarmup
from warmgw.probe import log_cold_hit
from warmgw.proxy import Proxy
from warmgw.reactor import consume
from warmgw.replicas import Reaction, Replicas
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


def _session(connect_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
    )


class Gateway:
    """The running gateway: `async with Gateway(cfg) as gw:` serves on gw.url."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        limits: ClientLimits | None = None,
        loop_steps: LoopSteps | None = None,
    ) -> None:
        cfg = self.config = config
        self.limits = limits or cfg.clients
        self.clock = clock = clock or MonotonicClock()
        self.rng = rng = rng or random.Random()
        up = cfg.upstream
        pool = first_pool(cfg)
        self.registry = Registry(cfg.lifecycle, clock, TrafficPolicy.single(pool))
        self.bluegreen = BlueGreen(self.registry, cfg.cutover, clock, pool)
        self.router = Router(self.registry, clock, rng,
                             naive=cfg.lifecycle.strategy is Strategy.ROUND_ROBIN,
                             profile=cfg.profile, routing=cfg.routing)
        # Probes and health checks (about one request at a time per replica) apart from
        # warmup (bursts of up to the largest concurrency step): sharing one pool, the
        # checks would keep a whole burst's connections alive forever by taking them in turn.
        self.control_session = _session(up.connect_timeout)
        self.warm_session = _session(up.connect_timeout)
        self.warmer = Warmer(self.warm_session, cfg.warmup, clock, self.router.ratios)
        self.replicas = Replicas(self.registry)
        # keep_prefixes: the kept hot prefixes replayed to newcomers and before cutovers
        self.prefix_warmup = PrefixWarmup(self.router, self.warmer, clock)
        replay = self.prefix_warmup if self.router.keeper is not None else None

        k = cfg.kubernetes
        self.kube_api = KubeApi(k.kubeconfig if k else None)
        self.kube: KubeDiscovery | SliceDiscovery | PoolDiscovery | None = None
        route: RouteSwitch | None = None
        store: PolicyStore = FileStore(cfg.state_file) if cfg.state_file else MemoryStore()
        if k is not None:
            ns = k.namespace or own_namespace()
            identity = k.identity or default_identity()
            src = PodSource(self.kube_api, self.registry, self.replicas, ns, identity,
                            k.pool_label, k.model, k.readiness_gate, k.lease_duration,
                            k.watch_timeout)
            if k.source == "endpointslices":
                self.kube = SliceDiscovery(src, k.slice_labels, k.label_selector,
                                           k.port_name, k.port)
            elif k.inference_pool is not None:
                self.kube = PoolDiscovery(src, k.inference_pool)
            else:
                self.kube = KubeDiscovery(src, k.label_selector, k.port)
            if k.http_route:
                route = RouteSwitch(self.kube_api, ns, k.http_route)
            if k.policy_configmap:
                store = ConfigMapStore(self.kube_api, ns, k.policy_configmap, k.watch_timeout)
        self.dns = DnsDiscovery(self.registry, cfg.dns) if cfg.dns is not None else None
        # replicas in the config file are the static source, unless another is configured
        self.static = StaticDiscovery(
            self.registry, cfg.replicas if k is None and cfg.dns is None else (), cfg.source)
        self.policy = PolicyKeeper(self.bluegreen, store)
        self.bluegreen.on_change = self.policy.changed
        self.supervisor = Supervisor(self.registry, self.replicas, self.control_session,
                                     self.warmer, cfg.warmup, cfg.health, clock,
                                     coordinator=self.kube.gate if self.kube else None,
                                     traffic=self.router.profile,
                                     prefixes=replay.warm if replay else None)
        self.cutover = CutoverDriver(self.bluegreen, self.registry, self.router, self.warmer,
                                     cfg.cutover, clock)
        self.pool = Pool(up.connect_timeout, up.read_timeout, UPSTREAM_KEEPALIVE)
        self.proxy = Proxy(self.router, self.pool, up, rng)
        reactions: list[Reaction] = [self.supervisor, self.proxy]
        if self.kube is not None:
            reactions.append(self.kube.gate)
        self.replicas.react_with(reactions)
        collectors = metrics.Scraper(
            metrics.GatewayCollector(self.registry, self.bluegreen, self.router,
                                     self.supervisor),
            metrics.RuntimeCollector(lambda: self.client_connections, loop_steps),
        )
        # the Envoy ext_proc front-end (config section epp), over the same router
        self.epp = EndpointPicker(self.router, up.max_body_bytes, cfg.epp.fallbacks
                                  ) if cfg.epp is not None else None
        self.listener = UserListener(self.proxy, self.registry, collectors, self.limits,
                                     up.max_body_bytes)
        self.admin = Admin(cfg.admin.token, self.registry, self.bluegreen, self.policy,
                           self.static, str(cfg.lifecycle.strategy),
                           self.router, route, replay.warm_pool if replay else None
                           ) if cfg.admin.token else None
        self._admin_runner: web.AppRunner | None = None
        self._cold_hits = self.router.cold.subscribe()
        self._cold_log: asyncio.Task[None] | None = None
        self.port = 0
        self.admin_port = 0
        self.epp_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.listen.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.config.admin.host}:{self.admin_port}"

    def status(self) -> dict[str, Any]:
        """The gateway's state as the admin API reports it."""
        return status.gateway(self.registry, self.bluegreen, str(self.config.lifecycle.strategy))

    @property
    def client_connections(self) -> int:
        """Client connections open on the gateway's listeners (user and admin)."""
        r = self._admin_runner
        admin = len(r.server.connections) if r is not None and r.server is not None else 0
        return admin + len(self.listener.server.connections)

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
        if self.kube is not None:
            await self.kube_api.start()
        await self.policy.start()
        await self.supervisor.start()
        await self.replicas.start()
        await self.static.start()
        if self.kube is not None:
            await self.kube.start()
        if self.dns is not None:
            await self.dns.start()
        await self.cutover.start()
        self._cold_log = asyncio.create_task(consume(self._cold_hits, log_cold_hit),
                                             name="warmgw-cold-hits")
        self.port = await self.listener.listen(cfg.listen.host, cfg.listen.port)
        log.info("warmgw serving on %s (strategy %s; %s)", self.url, cfg.lifecycle.strategy,
                 native.describe())
        stale = native.stale()
        if stale:
            log.warning("compiled modules older than their source run (%s): `make native` "
                        "builds them again", ", ".join(stale))
        if self.epp is not None and cfg.epp is not None:
            self.epp_port = await self.epp.start(cfg.epp.host, cfg.epp.port)
            log.info("endpoint picker (ext_proc) on %s:%d", cfg.epp.host, self.epp_port)
        if self.admin is not None:
            self.admin_port = await self._listen_admin(self.admin)
            log.info("admin API on %s", self.admin_url)
        else:
            log.warning("admin API off: set admin.token or WARMGW_ADMIN_TOKEN to enable it")

    async def _listen_admin(self, admin: Admin) -> int:
        lim = self.limits
        runner = web.AppRunner(
            admin.app(), handler_cancellation=True, access_log=None,
            shutdown_timeout=self.config.listen.shutdown_timeout,
            keepalive_timeout=lim.idle_timeout, max_line_size=lim.max_line_size,
            max_field_size=lim.max_field_size, max_headers=lim.max_headers,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        self._admin_runner = runner
        site = web.TCPSite(runner, self.config.admin.host, self.config.admin.port)
        await site.start()
        server = site._server
        for sock in getattr(server, "sockets", None) or []:
            return int(sock.getsockname()[1])
        return self.config.admin.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and streams finish (up to
        listen.shutdown_timeout), then stop the background work."""
        runner, self._admin_runner = self._admin_runner, None
        stops = [self.listener.stop(self.config.listen.shutdown_timeout)]
        if self.epp is not None:
            stops.append(self.epp.stop(self.config.listen.shutdown_timeout))
        if runner is not None:
            stops.append(runner.cleanup())
        await asyncio.gather(*stops)
        await self.pool.close()
        if self._cold_log is not None:
            self._cold_log.cancel()
            await asyncio.gather(self._cold_log, return_exceptions=True)
        await self.cutover.stop()
        await self.replicas.stop()
        await self.supervisor.stop()
        if self.kube is not None:
            await self.kube.stop()
        if self.dns is not None:
            await self.dns.stop()
        await self.policy.stop()
        await self.kube_api.close()
        for s in (self.control_session, self.warm_session):
            await s.close()
