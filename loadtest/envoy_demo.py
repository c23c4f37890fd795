"""`make envoy-demo` (python -m loadtest.envoy_demo): Envoy + warmgw as its endpoint
picker + four simulated vLLM replicas (two blue, two green), all on loopback, bounded.

It warms the replicas, sends users through Envoy, cuts over blue -> green through the
admin API while streams are open, sends more users, and says from the replicas' own logs
who served what. --serve S keeps the stack up S more seconds (at most 600) for curl.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.envoy import Envoy, config, find_envoy
from warmgw.app import Gateway
from warmgw.config import parse
from warmgw.core.lifecycle import State
from warmgw.sim import SimConfig, SimFleet

NAMES = (("b0", "blue"), ("b1", "blue"), ("g0", "green"), ("g1", "green"))


async def users(url: str, n: int, workers: int = 4) -> Counter[int]:
    """n streamed completions through Envoy; their statuses."""
    statuses: Counter[int] = Counter()
    left = iter(range(n))

    async def user(s: aiohttp.ClientSession) -> None:
        for i in left:
            body = {"model": "tiny", "prompt": f"hello {i}", "max_tokens": 16, "stream": True}
            async with s.post(url + "/v1/completions", json=body) as r:
                await r.read()
                statuses[r.status] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(user(s) for _ in range(workers)))
    return statuses


def served(fleet: SimFleet) -> dict[str, int]:
    return {name: sum(not r.warmup for r in rep.log)
            for (name, _), rep in zip(NAMES, fleet.replicas, strict=True)}


async def main(requests: int, serve: float) -> int:
    binary = find_envoy()
    if binary is None:
        print("no envoy binary: run `make envoy` (scripts/install-envoy.sh) or set "
              "WARMGW_ENVOY", file=sys.stderr)
        return 2
    token = secrets.token_hex(8)
    sim = SimConfig(ttft_base=0.01, itl=0.005)
    async with SimFleet(sim, replicas=4, distinct_hosts=True, host="127.0.0.61") as fleet:
        cfg = parse({
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0, "token": token},
            "epp": {"listen": {"host": "127.0.0.1", "port": 0}},
            "replicas": [{"name": n, "url": r.url, "pool": p}
                         for (n, p), r in zip(NAMES, fleet.replicas, strict=True)],
            "policy": {"active": "blue"},
            "warmup": {"prompt_lengths": [16, 256], "max_tokens": [4],
                       "concurrency": [1, 2, 4], "deadline": 30},
            "ramp": {"doubling_time": 0.3, "initial_weight": 0.1},
        })
        async with Gateway(cfg) as gw:
            print(f"endpoint picker (ext_proc gRPC) on 127.0.0.1:{gw.epp_port}; warming "
                  f"{len(NAMES)} replicas ...")
            t0 = time.monotonic()
            while not (gw.registry.endpoints and all(
                    e.state is State.READY for e in gw.registry.endpoints.values())):
                if time.monotonic() - t0 > 60:
                    print("replicas not ready after 60 s", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.1)
            print(f"warm and ready in {time.monotonic() - t0:.1f} s")
            with tempfile.TemporaryDirectory(prefix="warmgw-envoy-demo-") as tmp:
                async with Envoy(binary, config(gw.epp_port), Path(tmp)) as envoy:
                    print(f"Envoy on {envoy.url} (admin {envoy.admin})")
                    return await run(gw, envoy, fleet, token, requests, serve)
    return 1  # pragma: no cover


async def run(gw: Gateway, envoy: Envoy, fleet: SimFleet, token: str, requests: int,
              serve: float) -> int:
    first = await users(envoy.url, requests)
    before = served(fleet)
    print(f"{requests} users through Envoy with blue active: {dict(first)}; served {before}")
    load = asyncio.create_task(users(envoy.url, requests))  # streams open at the cutover
    await asyncio.sleep(0.05)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as s, s.post(
            gw.admin_url + "/admin/v1/cutover", json={"to": "green"}) as r:
        answer: dict[str, Any] = await r.json()
    print(f"cutover blue -> green: HTTP {r.status}, {answer.get('cutover', answer)}")
    during = await load
    mid = served(fleet)
    after = await users(envoy.url, requests)
    end = served(fleet)
    late = {n: end[n] - mid[n] for n in end}
    print(f"{requests} users across the cutover: {dict(during)}")
    print(f"{requests} users after it: {dict(after)}; served {late}")
    ok = (set(first) | set(during) | set(after)) == {200} and late["b0"] + late["b1"] == 0
    print("OK: no request failed, none reached blue after the cutover" if ok else "FAILED")
    if serve > 0:
        print(f"serving {serve:.0f} s more: curl {envoy.url}/v1/completions -d "
              "'{\"model\":\"tiny\",\"prompt\":\"hi\",\"max_tokens\":5}' "
              "-H 'Content-Type: application/json'")
        await asyncio.sleep(serve)
    return 0 if ok else 1


def cli() -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.envoy_demo", description=__doc__)
    ap.add_argument("--requests", type=int, default=40, help="users per phase (default 40)")
    ap.add_argument("--serve", type=float, default=0.0,
                    help="keep the stack up this many seconds after (max 600)")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(max(1, args.requests), min(max(args.serve, 0.0), 600.0))))


if __name__ == "__main__":
    cli()
