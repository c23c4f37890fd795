"""The overhead benchmark's peers: how each is configured and started, found or not, and
when a failing one is left out. None of the peers needs to be installed here."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import peers
from loadtest.overhead import peer_failure
from loadtest.procs import Children, running
from loadtest.stats import Run, summarise
from loadtest.targets import Target, Unavailable

REPLICA = "http://127.0.0.1:8100"
PORTS = peers.Ports(listen=9001, extra=9002)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(
    ("build", "subcommand"), [(peers.vllm_router, None), (peers.sglang_router, "launch")]
)
def test_routers_run_round_robin_on_one_tokio_worker_with_loopback_metrics(
    build: peers.Builder, subcommand: str | None, tmp_path: Path
) -> None:
    launch = build("/bin/router", tmp_path, REPLICA, PORTS)
    argv = launch.argv
    assert argv[0] == "/bin/router"
    assert (argv[1] == subcommand) if subcommand else argv[1].startswith("--")
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "9001"
    assert _flag(argv, "--worker-urls") == REPLICA
    assert _flag(argv, "--policy") == "round_robin"
    # both default to port 29000, and sglang-router to 0.0.0.0
    assert _flag(argv, "--prometheus-host") == "127.0.0.1"
    assert _flag(argv, "--prometheus-port") == "9002"
    assert int(_flag(argv, "--health-check-interval-secs")) >= 3600
    assert "--service-discovery" not in argv
    assert launch.env == {"TOKIO_WORKER_THREADS": "1"}


def test_sglang_router_is_ready_when_a_worker_is_not_when_it_listens(tmp_path: Path) -> None:
    # it answers /v1/models itself before the replica is registered
    assert peers.sglang_router("x", tmp_path, REPLICA, PORTS).ready_path == "/readiness"
    assert peers.vllm_router("x", tmp_path, REPLICA, PORTS).ready_path == "/v1/models"


def test_haproxy_one_thread_and_streams_without_delay(tmp_path: Path) -> None:
    launch = peers.haproxy("/usr/sbin/haproxy", tmp_path, REPLICA, PORTS)
    cfg = launch.files["haproxy.cfg"]
    for line in ("nbthread 1", "option http-no-delay", "http-reuse always",
                 "bind 127.0.0.1:9001", "server r0 127.0.0.1:8100"):
        assert line in cfg
    assert launch.argv == ["/usr/sbin/haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")]


def test_nginx_one_worker_unbuffered_logs_in_its_workdir(tmp_path: Path) -> None:
    launch = peers.nginx("/usr/sbin/nginx", tmp_path, REPLICA, PORTS)
    conf = launch.files["nginx.conf"]
    for line in ("worker_processes 1;", "daemon off;", "proxy_buffering off;",
                 "proxy_request_buffering off;", "listen 127.0.0.1:9001;",
                 "server 127.0.0.1:8100; keepalive 256;"):
        assert line in conf
    assert _flag(launch.argv, "-e") == str(tmp_path / "error.log")
    assert _flag(launch.argv, "-c") == str(tmp_path / "nginx.conf")


def test_envoy_one_worker_in_front_of_the_replica(tmp_path: Path) -> None:
    launch = peers.envoy("/bin/envoy", tmp_path, REPLICA, PORTS)
    assert _flag(launch.argv, "--concurrency") == "1"
    assert _flag(launch.argv, "--base-id") == "9001"
    config = json.loads(launch.files["envoy.json"])
    static = config["static_resources"]
    assert static["listeners"][0]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 9001}
    endpoint = static["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 8100}


@pytest.mark.parametrize(
    ("environ", "want_venv"),
    [({"PATH": "/a:/b"}, "/home/u/.cache/warmgw/peers-venv"),
     ({"PATH": "/a::/b", "WARMGW_PEERS_VENV": "/opt/pv"}, "/opt/pv")],
)
def test_search_dirs_path_then_peers_venv_then_this_venv(
    environ: dict[str, str], want_venv: str
) -> None:
    dirs = peers.search_dirs(environ, Path("/home/u"), Path("/w/.venv/bin/python"))
    assert dirs == [Path("/a"), Path("/b"), Path(want_venv) / "bin", Path("/w/.venv/bin"),
                    Path("/usr/sbin")]


def test_find_binary_takes_the_first_executable(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    (a / "envoy").write_text("not executable")
    for d in (b, c):
        (d / "envoy").write_text("#!/bin/sh\n")
        (d / "envoy").chmod(stat.S_IRWXU)
    assert peers.find_binary("envoy", [a, b, c]) == str(b / "envoy")
    assert peers.find_binary("nginx", [a, b, c]) is None


# -- starting, and failing --------------------------------------------------------------


def test_a_peer_not_installed_is_unavailable(tmp_path: Path) -> None:
    start = peers.starter("ghost", "warmgw-no-such-peer", peers.nginx)
    with Children(tmp_path) as kids:
        got = start(kids, REPLICA)
    assert got == Unavailable("ghost", "not installed (scripts/install-peers.sh)")


def test_a_peer_that_exits_at_start_is_unavailable_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "broken-peer"
    exe.write_text("#!/bin/sh\necho 'bad config line 3' >&2\nexit 3\n")
    exe.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    start = peers.starter("broken", "broken-peer", peers.haproxy)
    with Children(tmp_path) as kids:
        got = start(kids, REPLICA)
    assert isinstance(got, Unavailable) and got.name == "broken"
    assert got.note.startswith("failed to start: broken exited with 3")
    assert "bad config line 3" in got.note
    assert (tmp_path / "broken" / "haproxy.cfg").is_file()


def _run(completed: int, errors: int = 0, truncated: bool = False) -> Run:
    return Run("nginx", "stream", 16, 2, elapsed=1.0, lat_us=(500,) * completed,
               errors=errors, error_samples=("HTTP 502: bad gateway",) if errors else (),
               truncated=truncated)


def test_peer_failure_names_the_run_a_peer_failed() -> None:
    alive = Target("nginx", "http://127.0.0.1:1", (os.getpid(),))
    assert peer_failure(alive, _run(10)) is None
    assert peer_failure(alive, _run(9, errors=1)) is None  # reported, not left out
    assert peer_failure(alive, _run(0, errors=10)) == (
        "no request completed in stream c=16 round 2 (10 errors; HTTP 502: bad gateway)")
    assert peer_failure(alive, _run(3, truncated=True)) == (
        "too slow: stream c=16 round 2 hit the run time limit")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Target("nginx", "http://127.0.0.1:1", (os.getpid(), gone.pid))
    assert peer_failure(dead, _run(10)) == "exited during stream c=16 round 2"


def test_running_sees_a_zombie_as_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not running(child.pid)
        assert running(os.getpid())
    finally:
        child.wait()


# -- ratios against the gateway -------------------------------------------------------------


def test_summary_ratios_against_the_gateway() -> None:
    def run(target: str, lat: tuple[int, ...], cpu: float) -> Run:
        return Run(target, "json", 4, 0, elapsed=1.0, lat_us=lat, cpu={"target": cpu})

    rows = summarise([run("direct", (100,) * 4, 0.0), run("warmgw", (400,) * 2, 0.002),
                      run("nginx", (200,) * 4, 0.0004)], gateway="warmgw")
    direct, gw, nginx = rows
    assert "rps_vs_gateway" not in direct
    assert (gw["rps_vs_gateway"], gw["cpu_vs_gateway"]) == (1.0, 1.0)
    assert (nginx["rps_vs_gateway"], nginx["cpu_vs_gateway"]) == (2.0, 0.1)
    assert nginx["rps_ratio"] == 1.0
    assert "rps_vs_gateway" not in summarise([run("nginx", (1,), 0.0)])[0]
