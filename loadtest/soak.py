"""Soak: many thousands of mixed requests at high concurrency through the gateway, and
whether the gateway's process ends where it began (memory, sockets, threads, tasks).

    .venv/bin/python -m loadtest.soak --requests 20000 --concurrency 200
    .venv/bin/python -m loadtest.soak --quick          # a small run for CI (< 30 s)

Three processes: simulated replicas (`python -m warmgw.sim`), the gateway (`python -m
warmgw serve --config`), and this one, which generates the load (aiohttp on uvloop):
closed-loop workers sending a seeded mix of chat and completions, streamed and not, with
prompts of 8 to 2000 words and 1 to 64 output tokens. A request counts as an error unless
it is a 200 with the whole answer (a stream ends with [DONE] and carries no error event).

The gateway is measured from /proc/PID (RSS, open fds, threads, CPU) and its /metrics
(asyncio tasks, client connections) when the replicas are ready ("start"), four times a
second during the run (peaks), and once the run is over and idle connections have expired
("end"). Writes loadtest/results/soak.json. Exit status 1 on any failed request, on the
time limit, or when the gateway ends with more open fds than it started with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import select
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

from loadtest.procs import Child, ChildFailed, Children, cpu_seconds, free_port, run_main
from loadtest.stats import percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "results"
SIM_LINE = re.compile(rb"sim replica (\S+) serving model \S+ at (http://\S+)")
PROMPT_WORDS = (8, 64, 300, 1000, 2000)
MAX_TOKENS = (1, 8, 16, 64)
IDLE_WAIT = 9.0  # s: idle replica connections go unused after 4 s, closed by a sweep 4 s on
FD_SLACK = 2  # an fd or two may be a health check caught in flight


@dataclass(frozen=True)
class Options:
    requests: int = 20000
    concurrency: int = 200
    replicas: int = 3
    seed: int = 1
    time_limit: float = 600.0
    out: Path = RESULTS / "soak.json"
    quick: bool = False


QUICK: dict[str, Any] = {"requests": 3000, "concurrency": 50, "replicas": 2,
                         "time_limit": 25.0}


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, help="requests in all (20000; quick: 3000)")
    p.add_argument("--concurrency", type=int, help="clients at once (200; quick: 50)")
    p.add_argument("--replicas", type=int, help="simulated replicas (3; quick: 2)")
    p.add_argument("--seed", type=int, default=1, help="the request mix's seed (1)")
    p.add_argument("--time-limit", type=float, help="seconds for the load (600; quick: 25)")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    p.add_argument("--quick", action="store_true", help="a small run for CI")
    a = p.parse_args(argv)
    opts = Options(quick=a.quick, seed=a.seed, out=a.out, **(QUICK if a.quick else {}))
    given = {"requests": a.requests, "concurrency": a.concurrency, "replicas": a.replicas,
             "time_limit": a.time_limit}
    opts = Options(**{**asdict(opts), **{k: v for k, v in given.items() if v is not None}})
    if not (1 <= opts.concurrency <= 1000 and 1 <= opts.requests <= 1_000_000
            and 1 <= opts.replicas <= 16 and 0 < opts.time_limit <= 3600):
        p.error("need 1 <= concurrency <= 1000, 1 <= requests <= 1e6, 1 <= replicas <= 16 "
                "and 0 < time-limit <= 3600")
    return opts


# -- the gateway process, from outside ---------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def gauges(url: str) -> dict[str, float]:
    """From the gateway's /metrics: its asyncio tasks and client connections, and how many
    times a replica was ejected so far."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r"^(warmgw_asyncio_tasks|warmgw_client_connections) (\S+)$", text, re.M)
    out = {k: float(v) for k, v in found}
    ejected = re.search(r'^warmgw_replica_transitions_total\{to="ejected"\} (\S+)$', text, re.M)
    out["ejections"] = float(ejected.group(1)) if ejected else 0.0
    return out


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind: socket, pipe, anon_inode (epoll, eventfd), file."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def snapshot(pid: int, url: str) -> dict[str, Any]:
    """The gateway's figures now. Fds and tasks: the fewest of five looks 0.1 s apart, so
    that a health check's connection or task, or this scrape's, caught in passing does not
    count (what leaks stays in every look)."""
    looks = []
    scrapes = []
    for _ in range(5):
        looks.append(fd_kinds(pid))
        scrapes.append(gauges(url))
        time.sleep(0.1)
    kinds = min(looks, key=lambda k: sum(k.values()))
    st = proc_status(pid)
    g = dict(scrapes[-1])
    g["warmgw_asyncio_tasks"] = min(x.get("warmgw_asyncio_tasks", -1) for x in scrapes)
    return {
        "rss_kib": st["VmRSS"],
        "rss_peak_kib": st["VmHWM"],
        "fds": sum(kinds.values()),
        "fd_kinds": kinds,
        "threads": st["Threads"],
        "tasks": int(g.get("warmgw_asyncio_tasks", -1)),
        "client_connections": int(g.get("warmgw_client_connections", -1)),
        "ejections": int(g["ejections"]),
        "cpu_s": round(cpu_seconds([pid]), 2),
    }


# -- processes ----------------------------------------------------------------------------


def start_sims(kids: Children, n: int, timeout: float = 20.0) -> list[str]:
    child = kids.start(
        "sims",
        [sys.executable, "-m", "warmgw.sim", "--replicas", str(n), "--base-port", "0",
         "--ttft-base", "0.004", "--ttft-per-prompt-token", "0.000005", "--itl", "0.0005",
         "--max-running", "512", "--max-model-len", "4096", "--log-level", "warning"],
        pipes=True,
    )
    stdout = child.proc.stdout
    assert stdout is not None
    urls: list[str] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while len(urls) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not child.alive():
            raise ChildFailed(f"simulated replicas did not start:\n{child.tail()}")
        ready, _, _ = select.select([stdout], [], [], min(left, 0.5))
        if ready:
            buf += os.read(stdout.fileno(), 65536)
            urls = [m.group(2).decode() for m in SIM_LINE.finditer(buf)]
    return urls


def start_gateway(kids: Children, workdir: Path, urls: list[str]) -> tuple[Child, str]:
    port = free_port()
    cfg = {
        "listen": {"host": "127.0.0.1", "port": port, "shutdown_timeout": 5},
        "replicas": [{"name": f"r{i}", "url": u, "pool": "blue"} for i, u in enumerate(urls)],
        "warmup": {"prompt_lengths": [16, 512, 2048], "max_tokens": [8], "concurrency": [1, 4],
                   "deadline": 30},
        "ramp": {"initial_weight": 0.5, "doubling_time": 0.2},
        "upstream": {"read_timeout": 30},
    }
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg))
    child = kids.start("gateway", [sys.executable, "-m", "warmgw", "serve", "--config",
                                   str(config)], grace=10.0)
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/readyz", 30.0)
    return child, url


def wait_all_ready(url: str, n: int, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    pattern = re.compile(r'^warmgw_replica_state\{[^}]*state="ready"\} 1\.0$', re.M)
    while True:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            if len(pattern.findall(r.read().decode())) == n:
                return
        if time.monotonic() > deadline:
            raise ChildFailed(f"not every replica was ready after {timeout} s")
        time.sleep(0.2)


# -- load ---------------------------------------------------------------------------------


@dataclass
class Tally:
    latency: list[float] = field(default_factory=list)  # whole request, s
    ttfb: list[float] = field(default_factory=list)  # streams: first chunk, s
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    issued: int = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


def request_for(rng: random.Random) -> tuple[str, bytes, bool, str]:
    stream, chat = rng.random() < 0.5, rng.random() < 0.5
    words = rng.choice(PROMPT_WORDS)
    text = " ".join(f"w{i % 97}" for i in range(words))
    body: dict[str, Any] = {"model": "tiny", "max_tokens": rng.choice(MAX_TOKENS),
                            "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    kind = f"{'chat' if chat else 'completions'}/{'stream' if stream else 'json'}"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return path, json.dumps(body).encode(), stream, kind


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> None:
    path, body, stream, kind = request_for(rng)
    t.by_kind[kind] = t.by_kind.get(kind, 0) + 1
    t0 = time.perf_counter()
    try:
        async with s.post(url + path, data=body,
                          headers={"Content-Type": "application/json"}) as r:
            if stream:
                first, tail, bad = -1.0, b"", False
                async for chunk in r.content.iter_any():
                    if first < 0.0:
                        first = time.perf_counter()
                    bad = bad or b'"error"' in chunk
                    tail = (tail + chunk)[-64:]
                ok = r.status == 200 and not bad and tail.rstrip().endswith(b"data: [DONE]")
                what = tail.decode(errors="replace")
            else:
                data = await r.read()
                ok = r.status == 200 and b'"choices"' in data
                what = data[:300].decode(errors="replace")
                first = time.perf_counter()
    except (aiohttp.ClientError, TimeoutError) as e:
        t.error(f"{kind}: {e!r}")
        return
    if not ok:
        t.error(f"{kind}: HTTP {r.status}: {what}")
        return
    done = time.perf_counter()
    t.latency.append(done - t0)
    if stream:
        t.ttfb.append(first - t0)


async def load(url: str, gw_pid: int, opts: Options) -> tuple[Tally, float, bool,
                                                              dict[str, int]]:
    """Run the requests; (tally, elapsed s, cut short by the time limit, peaks)."""
    t = Tally()
    peaks = {"rss_kib": 0, "fds": 0, "threads": 0}
    deadline = time.monotonic() + opts.time_limit
    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def worker(i: int, s: aiohttp.ClientSession) -> None:
        rng = random.Random(opts.seed * 100_003 + i)
        while t.issued < opts.requests and time.monotonic() < deadline:
            t.issued += 1
            await one(s, url, rng, t)

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            st = proc_status(gw_pid)
            peaks["rss_kib"] = max(peaks["rss_kib"], st["VmRSS"])
            peaks["threads"] = max(peaks["threads"], st["Threads"])
            peaks["fds"] = max(peaks["fds"], len(os.listdir(f"/proc/{gw_pid}/fd")))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(stop))
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        await asyncio.gather(*(worker(i, s) for i in range(opts.concurrency)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await sampler
    return t, elapsed, t.issued < opts.requests, peaks


# -- the run ------------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="warmgw-soak-") as tmp, Children(Path(tmp)) as kids:
        urls = start_sims(kids, opts.replicas)
        gateway, url = start_gateway(kids, Path(tmp), urls)
        wait_all_ready(url, opts.replicas)
        time.sleep(0.5)
        ready_s = time.monotonic() - t_start
        start = snapshot(gateway.pid, url)
        tally, elapsed, cut, peaks = uvloop.run(load(url, gateway.pid, opts))
        time.sleep(IDLE_WAIT)  # let idle keep-alive connections to the replicas expire
        end = snapshot(gateway.pid, url)
        alive = gateway.alive()
        ejected = [line.split(": ", 1)[-1] for line in gateway.log.read_text().splitlines()
                   if "-> ejected" in line][:10]
    n = len(tally.latency)
    ms = 1000.0
    summary = {
        "requests": tally.issued,
        "completed": n,
        "concurrency": opts.concurrency,
        "replicas": opts.replicas,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "elapsed_s": round(elapsed, 2),
        "rps": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(tally.latency, 50) * ms, 2),
        "p99_ms": round(percentile(tally.latency, 99) * ms, 2),
        "max_ms": round(max(tally.latency, default=0.0) * ms, 2),
        "stream_ttfb_p50_ms": round(percentile(tally.ttfb, 50) * ms, 2),
        "stream_ttfb_p99_ms": round(percentile(tally.ttfb, 99) * ms, 2),
        "mix": dict(sorted(tally.by_kind.items())),
        "replica_ejections": end["ejections"] - start["ejections"],
        "ejection_log": ejected,
        "truncated": cut,
        "gateway_alive": alive,
    }
    return {
        "meta": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "options": {k: str(v) if isinstance(v, Path) else v
                        for k, v in asdict(opts).items()},
            "prompt_words": list(PROMPT_WORDS), "max_tokens": list(MAX_TOKENS),
            "wall_s": round(time.monotonic() - t_start, 1),
            "ready_after_s": round(ready_s, 1),
        },
        "summary": summary,
        "gateway": {"start": start, "end": end, "peak_during_run": peaks},
    }


def table(results: dict[str, Any]) -> str:
    s, g = results["summary"], results["gateway"]
    rows = [
        ("requests", s["requests"]), ("concurrency", s["concurrency"]),
        ("replicas", s["replicas"]), ("errors", s["errors"]),
        ("elapsed s", s["elapsed_s"]), ("req/s", s["rps"]),
        ("p50 ms", s["p50_ms"]), ("p99 ms", s["p99_ms"]), ("max ms", s["max_ms"]),
        ("stream TTFB p50 ms", s["stream_ttfb_p50_ms"]),
        ("stream TTFB p99 ms", s["stream_ttfb_p99_ms"]),
        ("replica ejections", s["replica_ejections"]),
    ]
    out = [f"{k:<20} {v:>12}" for k, v in rows]
    out.append("")
    out.append(f"{'gateway':<20} {'start':>12} {'peak':>12} {'end':>12}")
    for key, label in (("rss_kib", "RSS KiB"), ("fds", "open fds"), ("threads", "threads"),
                       ("tasks", "asyncio tasks"), ("client_connections", "client conns"),
                       ("cpu_s", "CPU s")):
        peak = g["peak_during_run"].get(key, "-")
        out.append(f"{label:<20} {g['start'][key]:>12} {peak:>12} {g['end'][key]:>12}")
    return "\n".join(out)


def verdict(results: dict[str, Any]) -> list[str]:
    """What makes the run a failure, if anything."""
    s, g = results["summary"], results["gateway"]
    bad = []
    if s["errors"]:
        bad.append(f"{s['errors']} request(s) failed: {s['error_samples']}")
    if s["truncated"]:
        bad.append("the time limit stopped the run early")
    if not s["gateway_alive"]:
        bad.append("the gateway died")
    if g["end"]["fds"] > g["start"]["fds"] + FD_SLACK:
        bad.append(f"open fds grew from {g['start']['fds']} to {g['end']['fds']}")
    if g["end"]["tasks"] > g["start"]["tasks"]:
        bad.append(f"asyncio tasks grew from {g['start']['tasks']} to {g['end']['tasks']}")
    return bad


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        results = run(opts)
    except ChildFailed as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(results, indent=1) + "\n")
    m = results["meta"]
    print(f"warmgw soak: {opts.replicas} simulated replicas, {m['cpus']} CPUs, "
          f"{m['wall_s']} s in all (ready after {m['ready_after_s']} s)")
    print(table(results))
    print(f"wrote {opts.out}")
    bad = verdict(results)
    for line in bad:
        print(f"soak: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    run_main(main)
