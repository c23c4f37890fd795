"""`python -m warmgw.sim` with a recorder: the same replicas, options and output, plus one
control listener that answers, for every replica of the process at once, what it served.

    python -m loadtest.joinsim --control-port P [any `python -m warmgw.sim` option]

GET http://127.0.0.1:P/join/log answers {"clock": now, "replicas": {name: {"stats": the
replica's /sim/stats counters, "requests": [[start, end, warmup, paid_cold, status], ...]}}}
with start and end on the replicas' clock (time.monotonic: CLOCK_MONOTONIC, the same clock
the load generator reads in another process). A request is listed once it has ended.

The join benchmark (loadtest.join) reads it once at the end to measure how many replicas
the gateway warmed at once, from what the replicas saw rather than from what the gateway
says; asking 100 replicas' /sim/stats often enough to see that would load the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any

import uvloop
from aiohttp import web

from warmgw.sim.cli import add_arguments, config_from_args
from warmgw.sim.fleet import SimFleet


def replica_log(fleet: SimFleet) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in fleet.replicas:
        out[r.name] = {
            "stats": r.stats.as_json(),
            "requests": [[round(x.start, 4), round(x.start + x.duration, 4), x.warmup,
                          x.paid_cold, x.status] for x in r.log],
        }
    return out


async def serve(fleet: SimFleet, control_port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def log(request: web.Request) -> web.Response:
        return web.json_response({"clock": time.monotonic(), "replicas": replica_log(fleet)})

    app = web.Application()
    app.router.add_get("/join/log", log)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", control_port).start()
        async with fleet:
            for r in fleet.replicas:
                print(f"sim replica {r.name} serving model {r.config.model} at {r.url}",
                      flush=True)
            print(f"join recorder at http://127.0.0.1:{control_port}/join/log", flush=True)
            await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.joinsim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    p.add_argument("--control-port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        fleet = SimFleet(config_from_args(args), args.replicas, host=args.host,
                         base_port=args.base_port, distinct_hosts=args.distinct_hosts)
    except ValueError as e:
        print(f"joinsim: {e}", file=sys.stderr)
        return 2
    return uvloop.run(serve(fleet, args.control_port))


if __name__ == "__main__":
    sys.exit(main())
