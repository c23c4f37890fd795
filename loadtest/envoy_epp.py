"""Envoy in front, warmgw as its endpoint picker (ext_proc): the second way to run warmgw,
in the scenario runner (strategy `warm_envoy`) and in the overhead benchmark (target
`envoy+epp`).

Envoy is configured as tests/epp configures it (loadtest.envoy.config): the ext_proc
filter with bodies FULL_DUPLEX_STREAMED, and an ORIGINAL_DST cluster that goes where the
EPP's `x-gateway-destination-endpoint` says; `--concurrency 1`, as the other Envoy runs.
warmgw is one process, `python -m warmgw serve` with `epp.listen` set: it discovers, warms,
ramps and cuts over exactly as with strategy `warm`, driven through the same admin API,
but users' requests go through Envoy. Envoy adds `x-upstream` (the replica's ip:port) to
each response, which says which replica served it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadtest import envoy as envoy_cfg
from loadtest.balancers import Unavailable, Warmgw, wait_http
from loadtest.peer_balancers import find_envoy as find_peer_envoy
from loadtest.procs import ChildFailed, Children, free_port
from loadtest.targets import Target, _wait_log, gateway_config
from loadtest.targets import Unavailable as NoTarget

UPSTREAM = "x-upstream"
START_TIMEOUT = 30.0


def find_envoy() -> str | None:
    """tests/epp's Envoy ($WARMGW_ENVOY, scripts/install-envoy.sh's venv), else the peers'."""
    return envoy_cfg.find_envoy() or find_peer_envoy()


def envoy_argv(exe: str, cfg: Path) -> list[str]:
    # --disable-hot-restart: no shared memory, so it never meets another Envoy
    return [exe, "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1",
            "--log-level", "warning"]


def write_envoy_config(workdir: Path, epp_port: int) -> tuple[Path, int, int]:
    """Envoy's config on two free ports: (path, listener port, admin port)."""
    port, admin = free_port(), free_port()
    cfg = workdir / "envoy.json"
    cfg.write_text(json.dumps(envoy_cfg.config(epp_port, listen_port=port, admin_port=admin,
                                               upstream_header=UPSTREAM), indent=1))
    return cfg, port, admin


class WarmEnvoy(Warmgw):
    """Strategy `warm_envoy`: warmgw's `warm` strategy as the EPP of a real Envoy."""

    def __init__(self, *args: Any) -> None:
        super().__init__("warm", *args)
        self.name = "warm_envoy"
        self.exe = find_envoy()
        self.epp_port = 0

    def config(self, initial: list[Any]) -> dict[str, Any]:
        cfg = super().config(initial)
        self.epp_port = free_port()
        cfg["epp"] = {"listen": {"host": "127.0.0.1", "port": self.epp_port}}
        return cfg

    async def start(self, initial: list[Any]) -> None:
        if self.exe is None:
            raise Unavailable("envoy not installed (scripts/install-envoy.sh, or make peers)")
        await super().start(initial)  # the gateway: self.http is its HTTP listener
        cfg, port, admin = write_envoy_config(self.workdir, self.epp_port)
        child = self.kids.start("envoy", envoy_argv(self.exe, cfg))
        self.logs.append(child.log)
        await wait_http(self.session, f"http://127.0.0.1:{admin}/ready", START_TIMEOUT, child)
        self.url = f"http://127.0.0.1:{port}"  # users go through Envoy

    def replica_of(self, headers: Mapping[str, str]) -> str:
        addr = headers.get(UPSTREAM, "")
        for r in self.all.values():
            if r.url == "http://" + addr:
                return r.name
        return addr


def envoy_epp_starter(workdir: Path, strategy: str = "warm", src: Path | None = None,
                      timeout: float = 40.0) -> Any:
    """The overhead benchmark's target `envoy+epp`: warmgw (this source tree with src) as the
    EPP of one Envoy; its CPU is both processes', and each one's apart (Target.parts)."""
    name = "envoy+epp"

    def start(kids: Children, replica_url: str) -> Target | NoTarget:
        exe = find_envoy()
        if exe is None:
            return NoTarget(name, "envoy not installed (scripts/install-envoy.sh)")
        d = kids.workdir / "envoy-epp"
        d.mkdir(exist_ok=True)
        epp_port = free_port()
        gw = gateway_config(replica_url, free_port(), strategy)
        gw["epp"] = {"listen": {"host": "127.0.0.1", "port": epp_port}}
        conf = d / "epp.yaml"
        conf.write_text(json.dumps(gw))  # JSON is YAML
        env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
        epp = kids.start("epp", [sys.executable, "-m", "warmgw", "serve", "--config", str(conf)],
                         env=env, cwd=src)
        cfg, port, _ = write_envoy_config(d, epp_port)
        proxy = kids.start("envoy-epp", envoy_argv(exe, cfg))
        url = f"http://127.0.0.1:{port}"
        try:
            epp.wait_http(f"http://127.0.0.1:{gw['listen']['port']}/readyz", timeout)
            _wait_log(epp.log, re.compile(rb"-> ready\b"), 5.0)
            proxy.wait_http(url + "/v1/models", timeout)
        except ChildFailed as e:
            proxy.stop()
            epp.stop()
            return NoTarget(name, f"failed to start: {str(e).splitlines()[0]}")
        return Target(name, url, (proxy.pid, epp.pid),
                      parts=(("envoy", (proxy.pid,)), ("epp", (epp.pid,))))

    return start
