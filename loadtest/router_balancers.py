"""vllm-router (PyPI `vllm-router`, installed by `make peers`) in front of the simulated
fleet, with one of its routing policies:

- `vllm_router_cache_aware`: `--policy cache_aware` (an approximate radix tree of the
  request text per worker; load balancing takes over when the gap between the most and the
  least loaded worker exceeds --balance-abs-threshold AND their ratio exceeds
  --balance-rel-threshold; the defaults, 64 and 1.5, are kept: they are what a user gets);
- `vllm_router_consistent_hash`: `--policy consistent_hash`, which hashes the session
  header (it looks for `x-session-id`, `session-id`, `x-claude-code-session-id`, then the
  body's `session_params.session_id` and `user`; seen in its log, "Hash key
  'header:x-session-id:...'"), so the scenario's `session_header` must be `x-session-id`.

Membership at run time through its HTTP API (checked against 0.1.17):
`POST /add_worker?url=URL` ("Successfully added worker: URL"), `POST /remove_worker?url=URL`,
`GET /list_workers` ({"urls": [...]}). vllm-router has no slow start: a worker is routable
once it is listed (it health-checks workers itself, every --health-check-interval-secs).
It does not say which worker answered; the runner finds out from the replicas' own logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from loadtest.balancers import BalancerError, Unavailable, wait_http
from loadtest.peer_balancers import START_TIMEOUT, Peer
from loadtest.peers import default_dirs, find_binary
from loadtest.procs import free_port
from loadtest.simfleet import Replica

POLICIES = {"vllm_router_cache_aware": "cache_aware",
            "vllm_router_consistent_hash": "consistent_hash"}


class VllmRouter(Peer):
    how_add = "HTTP API: POST /add_worker?url=URL"
    how_remove = "HTTP API: POST /remove_worker?url=URL"
    policy = ""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.exe = find_binary("vllm-router", default_dirs())
        self.workers: set[str] = set()  # URLs the router was given

    async def start(self, initial: list[Replica]) -> None:
        if self.exe is None:
            raise Unavailable("vllm-router not installed (make peers)")
        self.rotation = {r.name: r for r in initial}
        port, prom = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        h = self.s.health
        argv = [self.exe, "--host", "127.0.0.1", "--port", str(port), "--policy", self.policy,
                "--worker-urls", *[r.url for r in initial],
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom),
                "--health-check-interval-secs", str(max(1, round(h.interval))),
                "--health-check-timeout-secs", str(max(1, round(h.timeout))),
                "--log-level", "warning"]
        # one runtime worker thread, as the overhead benchmark runs it (peers.py)
        env = dict(os.environ, TOKIO_WORKER_THREADS="1")
        child = self.kids.start(self.name, argv, env=env)
        self.logs.append(child.log)
        await wait_http(self.session, self.url + "/list_workers", START_TIMEOUT, child)
        self.workers = {r.url for r in initial}

    async def _post(self, path: str, url: str) -> str:
        async with self.session.post(f"{self.url}{path}?url={quote(url, safe='')}",
                                     timeout=aiohttp.ClientTimeout(total=10.0)) as r:
            text = await r.text()
            if r.status != 200:
                raise BalancerError(f"vllm-router {path} {url}: HTTP {r.status}: {text[:200]}")
            return text

    async def listed(self) -> set[str]:
        async with self.session.get(self.url + "/list_workers",
                                    timeout=aiohttp.ClientTimeout(total=5.0)) as r:
            data = await r.json(content_type=None)
        urls = data.get("urls") if isinstance(data, dict) else None
        return {u.rstrip("/") for u in urls} if isinstance(urls, list) else set()

    async def _apply(self) -> None:
        want = {r.url for r in self.rotation.values()}
        for url in sorted(want - self.workers):
            await self._post("/add_worker", url)
        for url in sorted(self.workers - want):
            await self._post("/remove_worker", url)
        self.workers = want

    async def _health(self) -> dict[str, bool]:
        listed = await self.listed()
        return {n: r.url in listed for n, r in self.rotation.items()}

    async def settled(self) -> bool:
        return True  # no slow start

    def replica_of(self, headers: Mapping[str, str]) -> str:
        return ""  # not said; found in the replicas' logs after the run

    async def observe(self) -> dict[str, Any]:
        try:
            listed = await self.listed()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        return {r.name: {"state": "listed"} for r in self.all.values() if r.url in listed}


class CacheAware(VllmRouter):
    name = strategy = "vllm_router_cache_aware"
    policy = "cache_aware"


class ConsistentHash(VllmRouter):
    name = strategy = "vllm_router_consistent_hash"
    policy = "consistent_hash"


ROUTERS: dict[str, type[VllmRouter]] = {c.name: c for c in (CacheAware, ConsistentHash)}
