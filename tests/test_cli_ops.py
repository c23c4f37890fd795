"""The operator CLI against a running gateway: readable tables, exit codes on refusal."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.helpers import gateway_config, wait_all_ready, wait_for
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet

TOKEN = "cli-token"


async def warmgw(gw: Gateway, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    env = {**os.environ, "WARMGW_ADMIN_TOKEN": token, "WARMGW_ADMIN_URL": gw.admin_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmgw", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_status_cutover_rollback_drain_from_the_cli():
    async with SimFleet(SimConfig(ttft_base=0.002, itl=0.001), replicas=3) as fleet:
        replicas = [
            {"name": "blue-0", "url": fleet.urls[0], "pool": "blue"},
            {"name": "blue-1", "url": fleet.urls[1], "pool": "blue"},
            {"name": "green-0", "url": fleet.urls[2], "pool": "green"},
        ]
        cfg = gateway_config({}, replicas=replicas, admin={"port": 0, "token": TOKEN},
                             cutover={"min_warm_fraction": 0.5})
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=30)
            code, out, _ = await warmgw(gw, "status")
            assert code == 0
            assert "active pool: blue" in out
            lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
            assert lines["blue-0"][1:3] == ["blue", "ready"]
            assert lines["green-0"][1:4] == ["green", "ready", "0.00"]  # warm, no share

            code, _, err = await warmgw(gw, "status", token="wrong")
            assert code == 3 and "401" in err

            code, out, _ = await warmgw(gw, "cutover", "green", "--from", "blue")
            assert code == 0 and "blue -> green" in out and gw.bluegreen.active == "green"
            code, _, err = await warmgw(gw, "cutover", "green", "--from", "blue")
            assert code == 1 and "409" in err  # refused: exit 1
            code, _, err = await warmgw(gw, "cutover", "purple")
            assert code == 2 and "no pool named 'purple'" in err

            code, out, _ = await warmgw(gw, "rollback")
            assert code == 0 and "green -> blue" in out and gw.bluegreen.active == "blue"

            code, out, _ = await warmgw(gw, "drain", "blue-1")
            assert code == 0 and "draining" in out
            assert [e.name for g in gw.registry.snapshot.routes["tiny"].groups
                    for e in g.endpoints] == ["blue-0"]
            code, out, _ = await warmgw(gw, "undrain", "blue-1")
            assert code == 0
            await wait_for(lambda: gw.registry.endpoints["blue-1"].state.value == "ready", 20)
            code, _, err = await warmgw(gw, "drain", "nope")
            assert code == 2 and "no replica named 'nope'" in err
            code, out, _ = await warmgw(gw, "status", "--json")
            assert code == 0 and '"active": "blue"' in out
