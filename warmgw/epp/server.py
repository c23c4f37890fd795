"""warmgw as the Endpoint Picker behind Envoy (Gateway API Inference Extension): the
ext_proc gRPC service over the same Router, registry, warmup, ramp and policy as the HTTP
proxy, and grpc.health.v1 (SERVING once a model routes).

Each ext_proc stream is one request: an `Exchange` (warmgw.epp.exchange) turns its
messages into Router calls and answers; its ticket is closed when the stream ends, however
it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from warmgw.core.routing import Router
from warmgw.epp import wire
from warmgw.epp.exchange import Exchange, Phase
from warmgw.epp.wire import Event, Reply

log = logging.getLogger("warmgw.epp")

READY_SERVICES = ("", "readiness", wire.EXT_PROC_SERVICE)


def address(url: str) -> str:
    """A replica's ip:port as Envoy's original-destination cluster takes it."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EndpointPicker:
    def __init__(self, router: Router, max_body: int, fallbacks: int = 0) -> None:
        self.router = router
        self.max_body = max_body
        self.fallbacks = fallbacks
        self._addr: dict[str, str] = {}
        self._server = wire.Server(self.process, self.health)
        self.streams = 0  # ext_proc streams open now

    def _address(self, url: str) -> str:
        a = self._addr.get(url)
        if a is None:
            if len(self._addr) > 4096:
                self._addr.clear()
            a = self._addr[url] = address(url)
        return a

    def health(self, service: str) -> int:
        if service == "liveness":
            return wire.SERVING
        if service in READY_SERVICES:
            return wire.SERVING if self.router.registry.snapshot.routes else wire.NOT_SERVING
        return wire.SERVICE_UNKNOWN

    async def process(self, events: AsyncIterator[Event]) -> AsyncIterator[Reply]:
        task = asyncio.current_task()
        ex = Exchange(self.router, self._address, self.max_body, self.fallbacks,
                      task.cancel if task is not None else None)
        self.streams += 1
        try:
            async for ev in events:
                for reply in ex.on(ev):
                    yield reply
                if ex.phase is Phase.DONE and ex.answered_here:
                    return  # an ImmediateResponse: nothing more follows on this stream
        finally:  # the stream ended, was cancelled by Envoy, or was cut (a drain)
            self.streams -= 1
            ex.close()

    async def start(self, host: str, port: int) -> int:
        return await self._server.start(host, port)

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
