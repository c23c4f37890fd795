"""Other proxies to compare with, run only if already installed (never installed here).

Each runs one worker (one thread) with keep-alive to the replica and no buffering, like
the gateway. These configs have not been run on the benchmark's machine (none of the three
is installed there): treat a first result with care.
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import urlsplit

from loadtest.procs import Children, free_port
from loadtest.targets import Starter, Target, Unavailable

READY_TIMEOUT = 15.0


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def nginx(kids: Children, replica_url: str) -> Target | Unavailable:
    exe = shutil.which("nginx")
    if exe is None:
        return Unavailable("nginx", "not installed")
    d = kids.workdir / "nginx"
    d.mkdir(exist_ok=True)
    host, port = _hostport(replica_url)
    listen = free_port()
    temps = "".join(
        f"    {kind}_temp_path {d}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (d / "nginx.conf").write_text(
        f"worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n    access_log off;\n" + temps
        + f"    upstream replica {{ server {host}:{port}; keepalive 256; }}\n"
        f"    server {{\n        listen 127.0.0.1:{listen};\n"
        "        location / {\n            proxy_pass http://replica;\n"
        "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
        "            proxy_buffering off;\n            proxy_request_buffering off;\n"
        "            proxy_read_timeout 300s;\n        }\n    }\n}\n"
    )
    child = kids.start("nginx", [exe, "-p", str(d), "-c", str(d / "nginx.conf")])
    url = f"http://127.0.0.1:{listen}"
    child.wait_http(url + "/v1/models", READY_TIMEOUT)
    return Target("nginx", url, (child.pid,))


def haproxy(kids: Children, replica_url: str) -> Target | Unavailable:
    exe = shutil.which("haproxy")
    if exe is None:
        return Unavailable("haproxy", "not installed")
    host, port = _hostport(replica_url)
    listen = free_port()
    cfg = kids.workdir / "haproxy.cfg"
    cfg.write_text(
        "global\n    nbthread 1\n    maxconn 4096\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 300s\n"
        "    timeout server 300s\n    http-reuse always\n"
        f"frontend fe\n    bind 127.0.0.1:{listen}\n    default_backend be\n"
        f"backend be\n    server r0 {host}:{port}\n"
    )
    child = kids.start("haproxy", [exe, "-db", "-f", str(cfg)])
    url = f"http://127.0.0.1:{listen}"
    child.wait_http(url + "/v1/models", READY_TIMEOUT)
    return Target("haproxy", url, (child.pid,))


def envoy(kids: Children, replica_url: str) -> Target | Unavailable:
    exe = shutil.which("envoy")
    if exe is None:
        return Unavailable("envoy", "not installed")
    host, port = _hostport(replica_url)
    listen = free_port()
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    address = {"socket_address": {"address": host, "port_value": port}}
    config = {
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
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
    cfg = kids.workdir / "envoy.json"
    cfg.write_text(json.dumps(config, indent=1))
    argv = [exe, "-c", str(cfg), "--concurrency", "1", "--base-id", str(listen),
            "--log-level", "warn"]
    child = kids.start("envoy", argv)
    url = f"http://127.0.0.1:{listen}"
    child.wait_http(url + "/v1/models", READY_TIMEOUT)
    return Target("envoy", url, (child.pid,))


PEERS: dict[str, Starter] = {"nginx": nginx, "haproxy": haproxy, "envoy": envoy}
