"""The edge side of core.events: a task that drains one inbox and hands each event to its
owner's handler, outside the call that published it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from warmgw.core.events import Inbox

log = logging.getLogger("warmgw")

T = TypeVar("T")


async def consume(inbox: Inbox[T], handle: Callable[[T], None]) -> None:
    """Run until cancelled: every event, in order, through `handle`. A handler that raises
    is logged; the events after it are still handled."""
    ready = asyncio.Event()
    inbox.wake = ready.set
    try:
        while True:
            if not inbox.items:
                await ready.wait()
            ready.clear()
            for item in inbox.take():
                try:
                    handle(item)
                except Exception:
                    log.exception("handling %r failed", item)
    finally:
        inbox.wake = None
