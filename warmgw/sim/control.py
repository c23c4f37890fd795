"""HTTP routes of a simulated replica other than inference.

vLLM's informational routes: GET /health, /ping (also POST), /version, /load, /v1/models,
/metrics. GET routes do not answer HEAD (vLLM answers 405).

Control routes, not part of vLLM's surface:

GET  /sim/faults   current faults, plus "refuse" (true while not listening)
POST /sim/faults   partial update, e.g. {"error_rate": 0.2, "hang": true,
                   "slow_drip": 0.5, "drop_mid_stream": 3, "unhealthy": true};
                   {"refuse": true} stops listening (only the Python API can resume);
                   {"refuse_for": S} stops listening for S seconds.
POST /sim/restart  simulated process restart; answers {"process_start_time": ...}
GET  /sim/stats    SimStats counters, queue sizes, the bucket grids and what is warm
GET  /sim/requests the request log (RequestRecord.as_json each), oldest end first;
                   ?limit=N keeps the last N, ?since=T those that started at T or later
                   (replica clock, as the records' "start")
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import web

from warmgw.sim.api import error_body, json_response
from warmgw.sim.engine import RequestRecord, SimProcess, SimStats
from warmgw.sim.faults import Faults
from warmgw.sim.metrics import CONTENT_TYPE
from warmgw.sim.model import SimConfig

VERSION = "0.32.0-sim"


class ReplicaControl(Protocol):
    """What these routes need from their replica (SimReplica; read live on each request)."""

    config: SimConfig
    stats: SimStats
    log: deque[RequestRecord]  # the last requests served, oldest first

    @property
    def process(self) -> SimProcess: ...

    @property
    def process_start_time(self) -> float: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def listening(self) -> bool: ...

    @property
    def faults(self) -> Faults: ...

    def set_faults(self, **changes: Any) -> Faults: ...

    async def stop_listening(
        self, drop_connections: bool = True, keep: asyncio.BaseTransport | None = None
    ) -> None: ...

    async def resume_later(self, delay: float) -> None: ...

    async def restart(self, keep: asyncio.BaseTransport | None = None) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


def add_info_routes(app: web.Application, replica: ReplicaControl) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(status=503 if replica.faults.unhealthy else 200)

    async def version(request: web.Request) -> web.Response:
        return json_response({"version": VERSION})

    async def load(request: web.Request) -> web.Response:
        s = replica.process.scheduler
        return json_response({"server_load": s.running + s.waiting})

    async def models(request: web.Request) -> web.Response:
        c = replica.config
        created = int(replica.process_start_time)
        card = {
            "id": c.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": c.model,
            "parent": None,
            "max_model_len": c.max_model_len,
            "permission": [],
        }
        # As vLLM lists --lora-modules: the adapter's path as root, the base model as parent.
        loras: list[dict[str, object]] = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": path,
                "parent": c.model,
                "max_model_len": None,
                "permission": [],
            }
            for name, path in c.adapters.items()
        ]
        return json_response({"object": "list", "data": [card, *loras]})

    async def metrics(request: web.Request) -> web.Response:
        body = replica.process.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    for path, handler in (
        ("/health", health),
        ("/ping", health),
        ("/version", version),
        ("/load", load),
        ("/v1/models", models),
        ("/metrics", metrics),
    ):
        app.router.add_get(path, handler, allow_head=False)
    app.router.add_post("/ping", health)


def add_control_routes(app: web.Application, replica: ReplicaControl) -> None:
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(replica.faults.as_json() | {"refuse": not replica.listening})

    async def post_faults(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            refuse = body.pop("refuse", None)
            refuse_for = body.pop("refuse_for", None)
            if refuse not in (None, True, False):
                raise ValueError(f"refuse must be a boolean, got {refuse!r}")
            if refuse_for is not None and (
                isinstance(refuse_for, bool)
                or not isinstance(refuse_for, int | float)
                or not refuse_for > 0
            ):
                raise ValueError(f"refuse_for must be a number > 0, got {refuse_for!r}")
            replica.set_faults(**body)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return web.json_response(error_body(400, str(exc)), status=400)
        if refuse or refuse_for is not None:
            # Spare this connection so the answer still reaches the caller.
            await replica.stop_listening(drop_connections=True, keep=request.transport)
            if refuse_for is not None:
                replica.spawn(replica.resume_later(float(refuse_for)))
        return await get_faults(request)

    async def post_restart(request: web.Request) -> web.Response:
        await replica.restart(keep=request.transport)
        return web.json_response({"process_start_time": replica.process_start_time})

    async def get_stats(request: web.Request) -> web.Response:
        p = replica.process
        return web.json_response(
            replica.stats.as_json()
            | {
                "loaded": replica.loaded,
                "running": p.scheduler.running,
                "waiting": p.scheduler.waiting,
                "warm_prompt_buckets": sorted(p.cold.warm_prompt_buckets),
                "warm_batch_buckets": sorted(p.cold.warm_batch_buckets),
                "warm_features": sorted(p.cold.warm_features),
                "loaded_adapters": list(p.cold.loaded_adapters),  # least recently used first
                "prompt_buckets": list(replica.config.prompt_grid),
                "batch_buckets": list(replica.config.batch_buckets),
                "process_start_time": p.start_wall,
            }
        )

    async def get_requests(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", len(replica.log)))
            since = float(request.query.get("since", "-inf"))
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
        except ValueError as exc:
            return web.json_response(error_body(400, str(exc)), status=400)
        records = [r.as_json() for r in replica.log if r.start >= since]
        return web.json_response({"requests": records[-limit:] if limit else []})

    app.router.add_get("/sim/faults", get_faults, allow_head=False)
    app.router.add_post("/sim/faults", post_faults)
    app.router.add_post("/sim/restart", post_restart)
    app.router.add_get("/sim/stats", get_stats, allow_head=False)
    app.router.add_get("/sim/requests", get_requests, allow_head=False)
