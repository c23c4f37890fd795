"""A fake Kubernetes API server for tests: real sockets, the real wire protocol.

The official client (`kubernetes.aio`) talks to it through a kubeconfig written by
`write_kubeconfig`, with a bearer token, exactly as it would talk to a cluster. See
/work/shared/k8s-wire.md for the protocol. Test-side helpers act as the kubelet, the scheduler
and other controllers would; each change bumps the resourceVersion and reaches the watches.

    async with FakeApiServer() as server:
        server.add_service("ns", "vllm", {"app": "vllm"}, 8000)
        server.add_pod(make_pod("vllm-0", {"app": "vllm"}, "10.0.0.1"), "ns")
        server.write_kubeconfig(tmp_path / "kubeconfig")

Layers: fake_store (objects, rv, history, watchers), fake_cluster (verb semantics, the
kubelet's Ready rule, the EndpointSlice controller), fake_http (REST, LIST, WATCH streams).
Where it knowingly differs from a real server: namespaces need not exist; a LIST/WATCH from
an rv ahead of the server fails/waits at once rather than after 3 s; no server-side apply;
no managedFields or generation; the kubelet and the slice controller react synchronously
(in writes of their own, right after the write that triggered them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from .fake_cluster import Cluster
from .fake_http import NOT_FOUND, ApiHandlers, status_response
from .fake_kinds import (
    CONFIGMAPS,
    ENDPOINTSLICES,
    HTTPROUTES,
    INFERENCEPOOLS,
    JSON,
    KINDS,
    LEASES,
    PODS,
    SERVICES,
    UNAUTHORIZED,
    ApiError,
    Kind,
)
from .fake_pods import SERVICE_NAME_LABEL, make_pod
from .fake_store import Store

__all__ = ["CONFIGMAPS", "ENDPOINTSLICES", "HTTPROUTES", "INFERENCEPOOLS", "LEASES", "PODS",
           "SERVICES", "FakeApiServer",
           "RecordedRequest", "make_pod"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any  # decoded JSON, else text, else None
    status: int | None = None  # set when answered (at once for a watch)


_RECORD = web.RequestKey("fake_apiserver_record", RecordedRequest)


class FakeApiServer:
    def __init__(self, *, token: str = "fake-token", history_limit: int = 1000,
                 bookmark_interval: float | None = None, max_endpoints_per_slice: int = 100,
                 default_watch_timeout: float | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        """history_limit: changes kept for watches (older rvs get 410 Expired);
        bookmark_interval: seconds between BOOKMARKs on watches that allow them (None: only
        on send_bookmarks()); default_watch_timeout: end watches without timeoutSeconds
        cleanly after this long (the real server's --min-request-timeout, None: never)."""
        self.token = token
        self.host = host
        self.port = port
        self.store = Store(history_limit)
        self.cluster = Cluster(self.store, max_endpoints_per_slice)
        self.handlers = ApiHandlers(self.cluster, bookmark_interval=bookmark_interval,
                                    default_watch_timeout=default_watch_timeout)
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self.handlers.add_routes(app.router)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        await self.resume_listening()

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._drop_connections()
        await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def stop_listening(self) -> None:
        """An outage: the port refuses connections, open connections (watches too) drop."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._drop_connections()

    async def resume_listening(self) -> None:
        """Listen again on the same port; the stored objects and history are intact."""
        if self._runner is None:
            raise RuntimeError("FakeApiServer.start() first")
        if self._site is not None:
            return
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self._site = site
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    def _drop_connections(self) -> None:
        self.store.abort_watches()
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                if conn.transport is not None:
                    conn.transport.abort()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str | Path, *, token: str | None = None,
                         namespace: str = "default", context: str = "fake") -> Path:
        """A kubeconfig whose current context reaches this server with a bearer token."""
        path = Path(path)
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake-cluster", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user",
                       "user": {"token": self.token if token is None else token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake-cluster",
                                                       "user": "fake-user",
                                                       "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }, sort_keys=False))
        return path

    # --- recording and auth --------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Any) -> web.StreamResponse:
        raw = await request.read() if request.body_exists else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = RecordedRequest(request.method, request.path, dict(request.query),
                                 request.headers.get("Content-Type", ""), body)
        self.requests.append(record)
        request[_RECORD] = record
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise UNAUTHORIZED
            response: web.StreamResponse = await handler(request)
        except ApiError as e:
            response = status_response(e)
        except web.HTTPNotFound:
            response = status_response(NOT_FOUND)
        record.status = response.status
        return response

    def calls(self, method: str | None = None, path: str | None = None, *,
              content_type: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered; `path` matches exactly."""
        return [r for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
                and (content_type is None or r.content_type.split(";")[0] == content_type)]

    def clear_requests(self) -> None:
        self.requests.clear()

    # --- state ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self.store.rv)

    def get(self, plural: str, namespace: str, name: str) -> JSON | None:
        return self.store.get(_kind(plural), namespace, name)

    def objects(self, plural: str, namespace: str | None = None) -> list[JSON]:
        return self.store.select(_kind(plural), namespace)

    def endpoint_slices(self, namespace: str, service: str) -> list[JSON]:
        return [s for s in self.store.select(ENDPOINTSLICES, namespace)
                if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == service]

    def compact(self) -> None:
        """Drop the change history: a watch from any earlier rv gets 410 Expired."""
        self.store.compact()

    def send_bookmarks(self) -> None:
        """A BOOKMARK at the current rv on every open watch that allows bookmarks."""
        self.store.bookmark()

    def open_watches(self, plural: str | None = None) -> int:
        return sum(1 for w in self.store.watchers if plural is None or w.kind.plural == plural)

    async def wait_for_watches(self, count: int, plural: str | None = None,
                               timeout: float = 5.0) -> None:
        """Until at least `count` watches (on `plural`) are open."""
        await _poll(lambda: self.open_watches(plural) >= count, timeout,
                    f"{count} open {plural or ''} watches")

    async def wait_for_calls(self, count: int, method: str | None = None,
                             path: str | None = None, timeout: float = 5.0) -> None:
        """Until at least `count` matching requests have arrived (see calls())."""
        await _poll(lambda: len(self.calls(method, path)) >= count, timeout,
                    f"{count} {method or ''} requests to {path or 'any path'}")

    # --- helpers acting as the kubelet, the scheduler and users --------------------------

    def add_pod(self, pod: JSON, namespace: str | None = None) -> JSON:
        """Store a pod as-is (scheduled and running, as make_pod builds it)."""
        return self.cluster.add_pod(pod, namespace)

    def set_pod_containers_ready(self, namespace: str, name: str, ready: bool) -> JSON:
        """The kubelet's readiness probes: ContainersReady and Ready recomputed, one write."""
        return self.cluster.set_pod_containers_ready(namespace, name, ready)

    def bump_restart_count(self, namespace: str, name: str, *,
                           containers_ready: bool = False) -> JSON:
        """Every container restarted: restartCount+1, not ready; other conditions kept."""
        return self.cluster.bump_restart_count(namespace, name,
                                               containers_ready=containers_ready)

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> JSON:
        return self.cluster.set_pod_labels(namespace, name, labels)

    def set_pod_condition(self, namespace: str, name: str, type_: str, ok: bool,
                          reason: str | None = None, message: str | None = None) -> JSON:
        """Another controller's condition; the kubelet then recomputes Ready (2nd write)."""
        return self.cluster.set_pod_condition(namespace, name, type_, ok, reason, message)

    def mark_deleting(self, namespace: str, name: str, grace_seconds: int = 30) -> JSON:
        """Graceful deletion begun: metadata.deletionTimestamp set, the pod stays."""
        return self.cluster.mark_deleting(namespace, name, grace_seconds)

    def remove(self, namespace: str, name: str, plural: str = "pods") -> JSON:
        """Really remove an object (a DELETED event)."""
        return self.cluster.remove(_kind(plural), namespace, name)

    def add_service(self, namespace: str, name: str, selector: Mapping[str, str], port: int,
                    *, target_port: int | None = None, port_name: str = "http",
                    publish_not_ready_addresses: bool = False,
                    labels: Mapping[str, str] | None = None) -> JSON:
        """A Service whose EndpointSlices the fake controller keeps up to date (they carry
        the Service's labels, as the real controller's do)."""
        return self.cluster.add_service(namespace, name, selector, port,
                                        target_port=target_port, port_name=port_name,
                                        publish_not_ready_addresses=publish_not_ready_addresses,
                                        labels=labels)

    def put_configmap(self, namespace: str, name: str, data: Mapping[str, str]) -> JSON:
        return self.cluster.put_configmap(namespace, name, data)

    def put_inference_pool(self, namespace: str, name: str, match_labels: Mapping[str, str],
                           port: int, *, picker: str = "warmgw-epp", picker_port: int = 9002,
                           failure_mode: str = "FailClose") -> JSON:
        """An InferencePool (inference.networking.k8s.io/v1), created or its spec replaced."""
        return self.cluster.put(INFERENCEPOOLS, namespace, {
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": dict(match_labels)},
                     "targetPorts": [{"number": port}],
                     "endpointPickerRef": {"name": picker, "port": {"number": picker_port},
                                           "failureMode": failure_mode}}})

    def put_http_route(self, namespace: str, name: str, gateway: str,
                       pools: Mapping[str, int]) -> JSON:
        """An HTTPRoute (gateway.networking.k8s.io/v1) whose one rule sends to InferencePools
        by weight (pool name -> weight)."""
        refs = [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                 "name": pool, "weight": weight} for pool, weight in pools.items()]
        return self.cluster.put(HTTPROUTES, namespace, {
            "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": gateway}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": refs}]}})


async def _poll(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _kind(plural: str) -> Kind:
    for kind in KINDS:
        if kind.plural == plural:
            return kind
    raise ValueError(f"unknown resource {plural!r}; known: {[k.plural for k in KINDS]}")
