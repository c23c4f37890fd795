"""Replicas added and removed at run time: SIGHUP re-reads the config file, and so does the
admin call; removed replicas drain, new ones are warmed; no restart."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import aiohttp
import yaml

from tests.test_shutdown import free_port
from warmgw.sim import SimConfig, SimFleet

TOKEN = "reload-token"


async def status(s: aiohttp.ClientSession, admin: str) -> dict:
    async with s.get(admin + "/admin/v1/status",
                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return json.loads(await r.text())


async def test_sighup_and_admin_reload_add_and_drain(tmp_path):
    async with SimFleet(SimConfig(ttft_base=0.002, itl=0.001), replicas=3) as fleet:
        port, admin_port = free_port(), free_port()
        path = tmp_path / "gw.yaml"

        def write(names: list[int]) -> None:
            cfg = {"listen": {"port": port}, "admin": {"port": admin_port, "token": TOKEN},
                   "warmup": {"prompt_lengths": [16], "max_tokens": [2], "concurrency": [1, 2]},
                   "ramp": {"doubling_time": 0.2},
                   "replicas": [{"name": f"r{i}", "url": fleet.urls[i]} for i in names]}
            path.write_text(yaml.safe_dump(cfg))

        write([0, 1])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warmgw", "serve", "--config", str(path),
            stderr=asyncio.subprocess.DEVNULL,
        )
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            async with aiohttp.ClientSession() as s:

                async def states() -> dict[str, str]:
                    try:
                        st = await status(s, admin)
                    except aiohttp.ClientConnectionError:
                        return {}
                    return {r["name"]: r["state"] for r in st["replicas"]}

                async def until(want: dict[str, str]) -> None:
                    deadline = time.monotonic() + 20
                    while (got := await states()) != want:
                        assert time.monotonic() < deadline, got
                        await asyncio.sleep(0.1)

                await until({"r0": "ready", "r1": "ready"})
                write([1, 2])  # r0 leaves, r2 joins
                proc.send_signal(signal.SIGHUP)
                await until({"r1": "ready", "r2": "ready"})
                assert fleet.replicas[2].stats.warmup_requests > 0  # warmed, not just added
                write([1])
                async with s.post(admin + "/admin/v1/reload",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 200
                    assert await r.json() == {"added": [], "removed": ["r2"]}
                await until({"r1": "ready"})
                path.write_text("replicas: [{url: nope}]")
                async with s.post(admin + "/admin/v1/reload",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 400
                    assert "replicas[0].url" in (await r.json())["error"]["message"]
                assert await states() == {"r1": "ready"}  # a bad file changes nothing
            assert proc.returncode is None
        finally:
            proc.terminate()
            await proc.wait()
