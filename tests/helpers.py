"""Shared test helpers: a gateway config over simulated replicas, and waiting on state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from warmgw.app import Gateway
from warmgw.config import Config, parse
from warmgw.core.lifecycle import State
from warmgw.core.registry import Registry, Transition

# Warmup small enough for tests: 2 prompt lengths x chat/completions x stream/not + bursts.
FAST_WARMUP: dict[str, Any] = {
    "prompt_lengths": [16, 256],
    "max_tokens": [4],
    "concurrency": [1, 2, 4],
    "tolerance": 0.3,
    "abs_tolerance": 0.01,
    "deadline": 30,
}


def gateway_config(urls: list[str] | dict[str, str], **extra: Any) -> Config:
    """urls: a list of replica URLs (pool "blue"), or {name: url}."""
    if isinstance(urls, dict):
        replicas = [{"name": n, "url": u, "pool": "blue"} for n, u in urls.items()]
    else:
        replicas = [{"name": f"r{i}", "url": u, "pool": "blue"} for i, u in enumerate(urls)]
    data: dict[str, Any] = {
        "listen": {"port": 0},
        "replicas": replicas,
        "warmup": dict(FAST_WARMUP),
        "health": {"interval": 0.2, "timeout": 1.0},
        "ramp": {"doubling_time": 0.3, "initial_weight": 0.1},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse(data)


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        await asyncio.sleep(0.02)


async def wait_state(gw: Gateway, name: str, state: State, timeout: float = 10.0) -> None:
    def ok() -> bool:
        ep = gw.registry.endpoints.get(name)
        return ep is not None and ep.state is state

    await wait_for(ok, timeout, f"{name} to be {state}")


async def wait_all_ready(gw: Gateway, timeout: float = 15.0) -> None:
    await wait_for(
        lambda: bool(gw.registry.endpoints)
        and all(e.state is State.READY for e in gw.registry.endpoints.values()),
        timeout,
        "every replica to be ready",
    )


def observe(registry: Registry, fn: Callable[[Transition], None]) -> Callable[[], None]:
    """A test's eye on the registry's transitions: fn sees each one as it is published (an
    inbox whose wake drains it at once, so a test can read a counter at that moment).
    Returns a function that stops observing."""
    inbox = registry.subscribe()

    def drain() -> None:
        for t in inbox.take():
            fn(t)

    inbox.wake = drain
    return lambda: registry.transitions.unsubscribe(inbox)
