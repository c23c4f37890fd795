"""Test-side plumbing around the official client: open it from a kubeconfig, collect watch
events, and a raw HTTP session for checking the wire format itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client, config, watch

from .fake_apiserver import FakeApiServer


@asynccontextmanager
async def open_api_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration()
    await config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        yield api


@asynccontextmanager
async def raw_session(server: FakeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession(base_url=server.url, headers=headers) as session:
        yield session


async def watch_events(func: Callable[..., Any], *args: Any, count: int,
                       timeout: float = 5.0, **kwargs: Any) -> list[dict[str, Any]]:
    """The first `count` events of `Watch().stream(func, ...)`, or fewer if it ends first."""
    events: list[dict[str, Any]] = []
    async with watch.Watch() as w, asyncio.timeout(timeout):  # type: ignore[no-untyped-call]
        async for event in w.stream(func, *args, **kwargs):
            events.append(event)
            if len(events) == count:
                break
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(type, name) per event; a BOOKMARK has no name."""
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in events]
