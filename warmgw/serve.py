"""`warmgw serve`: one gateway until SIGINT/SIGTERM; SIGHUP re-reads the replica list."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from warmgw.app import Gateway
from warmgw.config import Config, ConfigError
from warmgw.loopsteps import LoopSteps

log = logging.getLogger("warmgw")


async def serve_forever(config: Config, loop_steps: LoopSteps | None = None) -> None:
    gw = Gateway(config, loop_steps=loop_steps)
    await gw.start()  # on failure (e.g. an unreadable state file) it closes what it opened
    gc.freeze()  # what start-up built lives for good: keep it out of every collection
    gc.set_threshold(50_000, 20, 20)  # fewer young collections on the request path
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def reload() -> None:
        try:
            added, removed = gw.static.reload_from_file()
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
