"""A real Envoy in front of warmgw's endpoint picker, for tests/epp and `make envoy-demo`:
the binary from scripts/install-envoy.sh (or $WARMGW_ENVOY, or PATH), a config with the
ext_proc filter and an original-destination cluster that goes where
`x-gateway-destination-endpoint` says, started on loopback ports it picks itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

VENV_ENVOY = Path.home() / ".cache" / "warmgw" / "envoy-venv" / "bin" / "envoy"


def find_envoy() -> str | None:
    env = os.environ.get("WARMGW_ENVOY")
    if env:
        return env
    if VENV_ENVOY.exists():
        return str(VENV_ENVOY)
    return shutil.which("envoy")


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    for word in out.stdout.split():
        parts = word.split("/")
        if len(parts) > 2:
            return parts[1]
    return out.stdout.strip()


def config(epp_port: int, request_body: str = "FULL_DUPLEX_STREAMED",
           response_body: str = "FULL_DUPLEX_STREAMED", listen_port: int = 0,
           admin_port: int = 0, upstream_header: str = "") -> dict[str, Any]:
    """Envoy's config; ports 0 are picked by Envoy (read them from its admin API). With
    upstream_header, each response carries the ip:port of the replica that served it
    (how a benchmark tells which replica answered)."""
    duplex = "FULL_DUPLEX_STREAMED" in (request_body, response_body)
    mode = {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": request_body,
        "response_body_mode": response_body,
        # full duplex wants the trailers too (Envoy refuses the config otherwise)
        "request_trailer_mode": "SEND" if duplex else "SKIP",
        "response_trailer_mode": "SEND" if duplex else "SKIP",
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "replicas", "timeout": "300s"}}],
            **({"response_headers_to_add": [{"header": {
                "key": upstream_header, "value": "%UPSTREAM_REMOTE_ADDRESS%"}}]}
               if upstream_header else {})}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
                         ".ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "10s"},
                "failure_mode_allow": False,
                # the EPP's dynamic metadata (envoy.lb: the pick and its fallbacks, for an
                # override-host cluster); Envoy drops every namespace not listed here
                "metadata_options": {"receiving_namespaces": {"untyped": ["envoy.lb"]}},
                "message_timeout": "300s",
                "processing_mode": mode}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1",
                                               "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": [
                {"name": "replicas", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                 "connect_timeout": "2s",
                 "original_dst_lb_config": {
                     "use_http_header": True,
                     "http_header_name": "x-gateway-destination-endpoint"}},
                {"name": "epp", "type": "STATIC", "connect_timeout": "2s",
                 "typed_extension_protocol_options": {
                     "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                         "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                                  ".HttpProtocolOptions",
                         "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "epp", "endpoints": [{"lb_endpoints": [{
                     "endpoint": {"address": {"socket_address": {
                         "address": "127.0.0.1", "port_value": epp_port}}}}]}]}},
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
    }


def _open_log(path: Path) -> BinaryIO:
    return path.open("wb")


class Envoy:
    """`async with Envoy(binary, cfg, tmp) as envoy:` serves on envoy.url."""

    def __init__(self, binary: str, cfg: dict[str, Any], workdir: Path) -> None:
        self.binary = binary
        self.cfg = cfg
        self.dir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.admin = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Envoy:
        cfg_path = self.dir / "envoy.json"
        cfg_path.write_text(json.dumps(self.cfg))
        admin_path = self.dir / "admin-address"
        self.log = _open_log(self.dir / "envoy.log")
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", str(cfg_path), "--disable-hot-restart", "--concurrency", "1",
            "--admin-address-path", str(admin_path), "-l", "warning",
            stdout=self.log, stderr=subprocess.STDOUT)
        try:
            async with asyncio.timeout(30):
                while not admin_path.exists() or not admin_path.read_text().strip():
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"envoy exited: {self.output()}")
                    await asyncio.sleep(0.05)
                self.admin = "http://" + admin_path.read_text().strip()
                async with aiohttp.ClientSession() as s:
                    while not self.port:
                        async with s.get(self.admin + "/listeners?format=json") as r:
                            data = await r.json()
                        for lst in data.get("listener_statuses", []):
                            self.port = int(lst["local_address"]["socket_address"]
                                            .get("port_value", 0))
                        if not self.port:
                            await asyncio.sleep(0.05)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "envoy.log").read_text(errors="replace")[-4000:]

    async def __aexit__(self, *exc: object) -> None:
        p = self.proc
        if p is not None and p.returncode is None:
            p.terminate()
            try:
                async with asyncio.timeout(10):
                    await p.wait()
            except TimeoutError:
                p.kill()
                await p.wait()
        self.log.close()
