"""The parameter sections of the gateway's own edges (listeners, upstream, clients,
health, admin, endpoint picker); read and validated by warmgw.config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_timeout: float = 30.0  # s: on SIGTERM, in-flight requests get this long


@dataclass(frozen=True, slots=True)
class UpstreamParams:
    connect_timeout: float = 2.0
    read_timeout: float = 300.0  # between two chunks, not for the whole response
    max_body_bytes: int = 8 * 1024 * 1024
    retries: int = 2  # other replicas tried when a connection cannot be made
    # sent once more, afresh, elsewhere if possible, when reset before any byte came back
    retry_unanswered: bool = True


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client request or connection may take (config section `clients`), so that
    slow, idle, bloated or stalled clients cannot hold sockets, handlers, memory or a
    replica's work. aiohttp's bound on reading a request head is its keep-alive timer,
    which starts when a connection opens and again after each response: a client has
    idle_timeout to send a whole head, and an idle connection is closed after it."""

    idle_timeout: float = 75.0  # s; above a cloud L7 balancer's usual 60 s idle timeout
    body_timeout: float = 60.0  # s for a whole request body, once its head has arrived
    # s a response may wait for a client that reads nothing of it (its socket buffers
    # full): then the request is cut, which frees the replica's work on it
    write_timeout: float = 60.0
    max_line_size: int = 8190  # the request line, and each header line (aiohttp: 400)
    max_field_size: int = 8190
    max_headers: int = 128  # header lines (aiohttp: 400)
    max_head_bytes: int = 32768  # all header names and values together (431), like nginx
    # client connections open at once on the API listener; one more is answered 503 and
    # closed (a flood of connections cannot take every file descriptor)
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class HealthParams:
    interval: float = 1.0
    timeout: float = 2.0
    probe_backoff_max: float = 10.0
    failures: int = 3  # consecutive failed checks (timeouts, non-200) before ejecting
    metrics_every: int = 5  # read the replica's /metrics every Nth check (it is large)


@dataclass(frozen=True, slots=True)
class AdminParams:
    host: str = "127.0.0.1"
    port: int = 8001
    token: str | None = None


@dataclass(frozen=True, slots=True)
class EppParams:
    """Config section `epp`: warmgw as the Endpoint Picker behind Envoy (ext_proc gRPC),
    beside the HTTP listener. `epp: {listen: {host, port}, fallbacks: N}`."""

    host: str = "127.0.0.1"
    port: int = 9002  # the port the Inference Extension's EPP uses
    # endpoints given after the picked one (x-gateway-destination-endpoint ip:port,ip:port):
    # 0 for Envoy's original-destination cluster, which takes exactly one ip:port
    fallbacks: int = 0
