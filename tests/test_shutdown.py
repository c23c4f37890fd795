"""SIGTERM: stop accepting, finish in-flight streams, exit 0 (a rolling update drops nothing)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time

import aiohttp
import yaml

from warmgw.sim import SimConfig, SimFleet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_finishes_streams_then_exits_zero(tmp_path):
    async with SimFleet(SimConfig(ttft_base=0.01, itl=0.02), replicas=1) as fleet:
        port = free_port()
        cfg = {"listen": {"port": port, "shutdown_timeout": 20}, "strategy": "round_robin",
               "replicas": [{"name": "r0", "url": fleet.urls[0]}]}
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warmgw", "serve", "--config", str(path),
            stderr=asyncio.subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        async with s.get(url + "/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    assert time.monotonic() < deadline, "gateway did not become ready"
                    await asyncio.sleep(0.1)
                body = {"model": "tiny", "prompt": "x", "max_tokens": 75, "stream": True}
                async with s.post(url + "/v1/completions", json=body) as r:
                    first = await r.content.readany()
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    async with aiohttp.ClientSession() as fresh:
                        try:
                            async with fresh.get(url + "/healthz") as r2:
                                refused = False
                                del r2
                        except aiohttp.ClientConnectionError:
                            refused = True
                    rest = await r.content.read()
                data = first + rest
            assert refused, "a new connection was accepted after SIGTERM"
            assert data.rstrip().endswith(b"data: [DONE]")  # the stream ran to its end
            assert data.count(b'"text"') == 75
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert "1 request(s) in flight" in err and "stopped" in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
