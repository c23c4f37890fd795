"""SimReplica: an aiohttp server that looks like a vLLM OpenAI server on the wire."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from warmgw.sim import api
from warmgw.sim.api import ApiError, Kind
from warmgw.sim.control import add_control_routes, add_info_routes
from warmgw.sim.engine import RequestRecord, SimProcess, SimStats
from warmgw.sim.faults import Faults
from warmgw.sim.generate import Generation
from warmgw.sim.model import SimConfig

log = logging.getLogger(__name__)

WARMUP_HEADER = "X-Warmgw-Warmup"
LOG_SIZE = 100_000
MAX_BODY = 64 * 1024 * 1024  # vLLM sets no small request body limit
KEEPALIVE_TIMEOUT = 5.0  # uvicorn's default: real vLLM 0.32 closes idle connections after 5 s

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimReplica:
    """One simulated vLLM replica. See the package docs for routes and faults."""

    def __init__(
        self,
        config: SimConfig,
        name: str = "sim",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = SimStats()
        self.log: deque[RequestRecord] = deque(maxlen=LOG_SIZE)
        self.host = "127.0.0.1"
        self.port = 0
        self._clock = clock
        self._wall = wall_clock
        self._rng = random.Random(config.seed)
        self._id_rng = random.Random(f"ids-{config.seed}")
        self._faults = Faults()
        self._hang_released = asyncio.Event()
        self._hang_released.set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._listening = asyncio.Event()  # set while self._site is not None
        self._tasks: set[asyncio.Task[None]] = set()
        self._process = self._new_process()
        self._inflight = 0  # API requests being handled (not /sim/ ones)
        self._quiet = asyncio.Event()  # set while none is
        self._quiet.set()
        # the other replicas of this simulator process (SimFleet sets it), whose prefix
        # caches held_elsewhere() reads for the request log
        self.siblings: list[SimReplica] = []

    # ------------------------------------------------------------ inspection

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def process(self) -> SimProcess:
        """The current simulated process (queue, cold-start model, metrics)."""
        return self._process

    @property
    def process_start_time(self) -> float:
        return self._process.start_wall

    @property
    def loaded(self) -> bool:
        return self._clock() >= self._process.ready_at

    @property
    def listening(self) -> bool:
        return self._site is not None

    @property
    def faults(self) -> Faults:
        return self._faults

    # ------------------------------------------------------------ faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change faults at runtime, e.g. ``set_faults(error_rate=0.5, hang=True)``."""
        self._faults = self._faults.updated(changes)
        if self._faults.hang:
            self._hang_released.clear()
        else:
            self._hang_released.set()
        log.info("sim %s: faults now %s", self.name, self._faults)
        return self._faults

    def clear_faults(self) -> Faults:
        return self.set_faults(**Faults().as_json())

    async def stop_listening(
        self, drop_connections: bool = True, keep: asyncio.BaseTransport | None = None
    ) -> None:
        """Close the listening socket: new connections are refused (like a dead process).

        ``drop_connections`` also aborts open connections except ``keep``.
        """
        if drop_connections:
            self._drop_connections(keep)
        if self._site is not None:
            site, self._site = self._site, None
            self._listening.clear()
            await site.stop()
            log.info("sim %s: stopped listening on %s", self.name, self.url)

    async def resume_listening(self) -> None:
        """Listen again on the same host and port."""
        if self._runner is None:
            raise RuntimeError(f"sim {self.name} is not started")
        if self._site is None:
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await site.start()
            self._site = site
            self._listening.set()
            log.info("sim %s: listening on %s", self.name, self.url)

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError(f"sim {self.name} already started")
        app = web.Application(middlewares=[self._gate], client_max_size=MAX_BODY)
        self._add_routes(app)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=1.0,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        self._runner = runner
        self.host = host
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._site = site
        self._listening.set()
        self.port = int(runner.addresses[0][1])
        self._process = self._new_process()
        await self._begin_loading(keep=None)
        log.info("sim %s: serving model %s at %s", self.name, self.config.model, self.url)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            self._drop_connections(keep=None)
            await self._runner.cleanup()
        self._runner = None
        self._site = None
        self._listening.clear()

    async def drain(self, timeout: float) -> int:
        """Stop as uvicorn (so vLLM) does on SIGTERM: stop accepting connections, close the
        idle keep-alive ones, let the requests in flight finish (their connections close
        after the response), then stop. Requests still running after ``timeout`` seconds
        are cut; returns how many were."""
        if self._runner is None:
            return 0
        await self.stop_listening(drop_connections=False)
        server = self._runner.server
        for conn in list(server.connections if server is not None else ()):
            conn.close()  # now if idle, after its response otherwise
        log.info("sim %s: draining %d requests", self.name, self._inflight)
        try:
            async with asyncio.timeout(timeout):
                await self._quiet.wait()
        except TimeoutError:
            pass
        cut = self._inflight
        await self.stop()
        return cut

    async def restart(self, keep: asyncio.BaseTransport | None = None) -> None:
        """Simulate a process restart: reset every connection (but ``keep``) with a TCP RST,
        as a SIGKILLed process would, cancel running requests, reset metrics and
        process_start_time, load for ``load_time`` seconds, and come back cold."""
        if self._runner is None:
            raise RuntimeError(f"sim {self.name} is not started")
        for task in list(self._tasks):
            task.cancel()
        self._drop_connections(keep, reset=True)
        self._process = self._new_process()
        self.stats.restarts += 1
        log.info("sim %s: restarted, loading for %.3fs", self.name, self.config.load_time)
        await self._begin_loading(keep)

    async def wait_loaded(self) -> None:
        """Wait until loading ends and the port listens (wrap in asyncio.timeout)."""
        while True:
            delay = self._process.ready_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif not self.listening:
                await self._listening.wait()
            else:
                return

    async def __aenter__(self) -> SimReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ internals

    def _new_process(self) -> SimProcess:
        ready_at = self._clock() + self.config.load_time
        return SimProcess(self.config, self._rng, self._wall(), ready_at, self._wall)

    async def _begin_loading(self, keep: asyncio.BaseTransport | None) -> None:
        if self.config.refuse_while_loading and self.config.load_time > 0:
            await self.stop_listening(True, keep)
            self.spawn(self.resume_later(self.config.load_time))

    async def resume_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.resume_listening()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task owned by this replica (cancelled by stop and restart)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop_connections(self, keep: asyncio.BaseTransport | None, reset: bool = False) -> None:
        """Abort TCP connections (idle keep-alive ones too); their handlers get cancelled.

        ``reset`` sends an RST instead of a FIN (SO_LINGER 0), like a killed process."""
        server = self._runner.server if self._runner is not None else None
        for conn in list(server.connections if server is not None else ()):
            transport = conn.transport
            if transport is not None and transport is not keep:
                if reset:
                    _linger_zero(transport)
                transport.abort()

    @web.middleware
    async def _gate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """503 while loading; FastAPI-style JSON for unknown routes and methods."""
        api_request = not request.path.startswith("/sim/")
        if api_request and not self.loaded:
            return api.json_response(api.error_body(503, "The model is still loading."), 503)
        if api_request:
            self._inflight += 1
            self._quiet.clear()
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return api.json_response({"detail": "Not Found"}, 404)
        except web.HTTPMethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.allowed_methods))  # e.g. "GET", as real vLLM 0.32
            return api.json_response({"detail": "Method Not Allowed"}, 405, {"Allow": allow})
        finally:
            if api_request:
                self._inflight -= 1
                if not self._inflight:
                    self._quiet.set()

    def _add_routes(self, app: web.Application) -> None:
        add_info_routes(app, self)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        add_control_routes(app, self)

    # ------------------------------------------------------------ vLLM routes

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, Kind.CHAT)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, Kind.COMPLETION)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, Kind.EMBEDDING)

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        try:
            return api.json_response(api.parse_tokenize(await request.read(), self.config))
        except ApiError as exc:
            return api.json_response(exc.body(), exc.status)

    async def _inference(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        warmup = request.headers.get(WARMUP_HEADER, "").strip().lower() in ("1", "true", "yes")
        if warmup:
            self.stats.warmup_requests += 1
        else:
            self.stats.user_requests += 1
        gen = Generation(request, kind, warmup, self, self._process, self._clock())
        try:
            if self._faults.hang:
                await self._hang_released.wait()
            error_rate = self._faults.error_rate
            if error_rate > 0 and self._rng.random() < error_rate:
                self.stats.injected_errors += 1
                raise ApiError(500, "Simulated internal server error (fault injection).")
            return await gen.run()
        except ApiError as exc:
            gen.status, gen.outcome = exc.status, "error"
            return api.json_response(exc.body(), exc.status)
        finally:
            self.log.append(gen.record(self._clock()))

    def next_hex_id(self) -> str:
        """16 hex characters, as real vLLM 0.32's ``cmpl-``/``chatcmpl-`` ids."""
        return f"{self._id_rng.getrandbits(64):016x}"

    def now_wall(self) -> float:
        return self._wall()

    def now(self) -> float:
        return self._clock()

    def held_elsewhere(self, token_ids: Sequence[int]) -> int:
        """The most of a prompt's leading tokens another replica of this simulator process
        holds in its prefix cache (-1: no other replica)."""
        return max((s.process.prefix.held(token_ids) for s in self.siblings), default=-1)


def _linger_zero(transport: asyncio.BaseTransport) -> None:
    """Make the coming close send an RST (the peer sees a connection reset)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # already closed
            pass
