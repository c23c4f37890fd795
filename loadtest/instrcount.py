"""Instructions per proxied request of the gateway, counted by valgrind (callgrind): a
repeatable measure of its CPU for a shared, noisy machine, where CPU time moves by 10 %
from run to run.

    PYTHONPATH=$PWD .venv/bin/python -m loadtest.instrcount [--requests N]
        [--concurrency 1,16] [--modes json,stream] [--src DIR] [--target vllm-router]

A simulated replica with no latency (as loadtest.overhead starts it), the gateway of this
tree (or of --src DIR) under `valgrind --tool=callgrind --instr-atstart=no`, and a small
client here: per cell, a warmup with the instrumentation off, then it is switched on
(callgrind_control -i on), N requests (16 prompt words, max_tokens 8, the overhead
benchmark's request), and it is switched off and dumped; the dump's total over N is the
figure. The gateway's background work in that window (probes, the Replicas task) is in
it, a few tenths of a percent at most. The gateway runs about 50 times slower than
natively: 2000 requests a cell take some 30 s.

--target vllm-router (or sglang-router, envoy: a peer of loadtest.peers, started as the
overhead benchmark starts it, one worker thread) counts a peer the same way, every thread
of its process: what it runs in user space per request, beside the gateway's. Instructions
are not CPU time (cache misses, and the kernel's share, which is alike for proxies making
the same syscalls, are not in them), but unlike CPU time on a shared machine they repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from loadtest.overhead import prompt_text
from loadtest.peers import BUILDS, starter
from loadtest.procs import Children, free_port
from loadtest.targets import ReplicaSpec, Unavailable, gateway_config, start_replica


def _request(port: int, stream: bool) -> bytes:
    body = json.dumps({"model": "tiny", "prompt": prompt_text(16), "max_tokens": 8,
                       "stream": stream}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (port, len(body), body))


async def _client(port: int, data: bytes, n: int) -> None:
    """n requests, one after the other, on one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {head[:200]!r}")
        low = head.lower()
        i = low.find(b"content-length:")
        if i >= 0:
            await reader.readexactly(int(low[i + 15:low.index(b"\r\n", i)]))
        else:  # chunked: read to the last chunk
            buf = b""
            while not buf.endswith(b"0\r\n\r\n"):
                buf += await reader.read(65536)
    writer.close()


async def _load(port: int, data: bytes, n: int, c: int) -> None:
    await asyncio.gather(*(_client(port, data, n // c) for _ in range(c)))


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _total(out: Path, wait: float = 0.0, keep: Path | None = None) -> int:
    """The summed Ir of the dumps made since the last look (callgrind.out.1, .2, ...),
    waiting up to `wait` s for one to be written to its end (its "totals:" line)."""
    deadline = time.monotonic() + wait
    while True:
        total = 0
        dumps = sorted(out.parent.glob(out.name + ".*"))
        for f in dumps:
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):  # at the end ("summary:" is 0 here)
                    total += int(line.split()[1])
        if total or time.monotonic() > deadline:
            for f in dumps:
                f.rename(keep) if keep is not None else f.unlink()
            return total
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.instrcount", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--modes", default="json,stream")
    p.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--keep", type=Path, help="copy each cell's dump there (for "
                   "callgrind_annotate), as MODE-C.callgrind")
    p.add_argument("--target", default="warmgw", choices=["warmgw", "vllm-router",
                                                          "sglang-router", "envoy"])
    a = p.parse_args(argv)
    cells = [(m, int(c)) for m in a.modes.split(",") for c in a.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp, Children(Path(tmp)) as kids:
        work = Path(tmp)
        replica = start_replica(kids, ReplicaSpec(max_tokens=8))
        out = work / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}"]
        if a.target == "warmgw":
            pid, port = _warmgw(kids, valgrind, replica.url, a.src)
        else:
            pid, port = _peer(kids, valgrind, replica.url, a.target)
        time.sleep(2.0)  # the warmup settles
        print(f"{a.target}" + (f" ({a.src})" if a.target == "warmgw" else ""), flush=True)
        for mode, c in cells:
            data = _request(port, mode == "stream")
            asyncio.run(_load(port, data, max(200, 2 * c), c))
            _total(out)  # drop earlier dumps
            _callgrind("-i", "on", str(pid))
            t0 = time.monotonic()
            asyncio.run(_load(port, data, a.requests, c))
            wall = time.monotonic() - t0
            _callgrind("-i", "off", str(pid))
            _callgrind("-d", str(pid))
            n = a.requests // c * c
            keep = a.keep / f"{mode}-{c}.callgrind" if a.keep else None
            print(f"{mode:6} c={c:<3} {_total(out, 30.0, keep) / n:10.0f} instructions/request "
                  f"({n} requests, {wall:.1f} s)", flush=True)
    return 0


def _warmgw(kids: Children, valgrind: list[str], replica: str, src: Path) -> tuple[int, int]:
    port = free_port()
    config = kids.workdir / "gw.yaml"
    config.write_text(yaml.safe_dump(gateway_config(replica, port, "warm")))
    gw = kids.start("warmgw", [*valgrind, sys.executable, "-m", "warmgw", "serve", "--config",
                               str(config)], env={**os.environ, "PYTHONPATH": str(src)},
                    cwd=src, grace=30.0)
    gw.wait_http(f"http://127.0.0.1:{port}/readyz", 300.0)
    return gw.pid, port


def _peer(kids: Children, valgrind: list[str], replica: str, name: str) -> tuple[int, int]:
    binary, build = BUILDS[name]
    t = starter(name, binary, build, wrap=valgrind, ready_timeout=300.0)(kids, replica)
    if isinstance(t, Unavailable):
        raise SystemExit(f"{name}: {t.note}")
    return t.pids[0], int(urlsplit(t.url).port or 0)


if __name__ == "__main__":
    sys.exit(main())
