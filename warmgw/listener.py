"""The user listener: the OpenAI API under /v1 (the proxy), and the gateway's own
/metrics, /healthz and /readyz."""

from __future__ import annotations

import json
from collections.abc import Awaitable

from warmgw import metrics
from warmgw.config import ClientLimits
from warmgw.core.registry import Registry
from warmgw.h1.server import Request, Server
from warmgw.proxy import Proxy

TEXT = [(b"Content-Type", b"text/plain")]


class UserListener:
    def __init__(self, proxy: Proxy, registry: Registry, scraper: metrics.Scraper,
                 limits: ClientLimits, max_body: int) -> None:
        self.proxy = proxy
        self.registry = registry
        self.scraper = scraper
        self.server = Server(self.dispatch, limits, max_body)

    async def listen(self, host: str, port: int) -> int:
        return await self.server.listen(host, port)

    async def stop(self, timeout: float) -> None:
        await self.server.stop(timeout)

    def dispatch(self, req: Request) -> Awaitable[None] | None:
        if req.path.startswith("/v1/"):
            # what the proxy returns is awaited by the connection's task itself: a
            # coroutine less to make, and to pass through at each wake-up
            return self.proxy.handle(req)
        return self._own(req)

    async def _own(self, req: Request) -> None:
        path = req.path
        if path == "/metrics" and req.method == "GET":
            body = await self.scraper.render()  # built off the loop
            req.conn.respond(200, [(b"Content-Type", metrics.CONTENT_TYPE.encode())], body)
        elif path == "/healthz" and req.method == "GET":
            req.conn.respond(200, [(b"Content-Type", b"text/plain; charset=utf-8")], b"ok\n")
        elif path == "/readyz" and req.method == "GET":
            routes = self.registry.snapshot.routes
            ready = bool(routes) and not self.server.stopping
            body = json.dumps({"ready": ready, "models": sorted(routes)}).encode()
            req.conn.respond(200 if ready else 503, [(b"Content-Type", b"application/json")],
                             body)
        elif path in ("/metrics", "/healthz", "/readyz"):
            req.conn.respond(405, [(b"Allow", b"GET"), *TEXT], b"405: Method Not Allowed\n")
        else:
            req.conn.respond(404, TEXT, b"404: Not Found\n")
