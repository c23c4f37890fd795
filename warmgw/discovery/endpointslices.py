"""Kubernetes discovery from EndpointSlices (discovery.k8s.io/v1): the endpoints of a
Service (label kubernetes.io/service-name) or of any slices a label selector picks, for
Services whose pods are managed elsewhere.

- Each endpoint (its first address, the slice's port named port_name or its first) is a
  replica, named after its pod (targetRef) or else its address. A Service's endpoints
  are spread over several slices and move between them: they are merged by name, and an
  endpoint is gone only once no slice lists it.
- A serving endpoint that is not terminating is a candidate; a terminating one drains.
- The warmup gate holds a cold pod's Ready condition False, and the EndpointSlice
  controller copies that into `serving` (and `ready`): a slice cannot tell a cold pod
  from a broken one. So with readiness_gate on, the pods (label selector) are watched
  too, and an endpoint whose pod has its containers ready is offered for warming while
  not yet serving. Lease, gate PATCH and restarts are discovery.gate's, as for Pods.
- The pool is the slice's pool label (the controller copies the Service's labels).

Slice and pod events reach the registry as deltas: a pod event touches one replica, a
slice event the endpoints of that slice whose entry changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio import client

from warmgw.discovery.gate import PodGate, PodSource
from warmgw.discovery.kwatch import Watcher
from warmgw.discovery.pods import view
from warmgw.discovery.slices import SliceEndpoint, endpoints_of


class SliceDiscovery:
    def __init__(self, src: PodSource, slice_selector: str, pod_selector: str,
                 port_name: str | None, port: int) -> None:
        self.src = src
        self.api = src.api
        self.registry = src.registry
        self.ns = namespace = src.namespace
        self.pool_label = src.pool_label
        self.port_name = port_name
        self.port = port
        self.model = src.model
        self.identity = src.identity
        self.gate = PodGate(src)
        watch_timeout = src.watch_timeout
        self.slices: dict[str, dict[str, SliceEndpoint]] = {}  # slice -> its endpoints
        self.endpoints: dict[str, dict[str, SliceEndpoint]] = {}  # name -> slice -> entry
        self._tasks: list[asyncio.Task[None]] = []
        self.watcher = Watcher(
            f"endpointslices {namespace}/{slice_selector}", self._list_slices,
            self._on_slices, watch_timeout=watch_timeout, namespace=namespace,
            label_selector=slice_selector)
        self.pod_watcher = Watcher(
            f"pods {namespace}/{pod_selector}", self._list_pods, self._on_pods,
            watch_timeout=watch_timeout, namespace=namespace,
            label_selector=pod_selector) if src.readiness_gate else None

    def _list_slices(self, **kwargs: Any) -> Any:
        api = client.DiscoveryV1Api(self.api())
        return api.list_namespaced_endpoint_slice_without_preload_content(**kwargs)

    def _list_pods(self, **kwargs: Any) -> Any:
        return client.CoreV1Api(self.api()).list_namespaced_pod_without_preload_content(
            **kwargs)

    async def start(self) -> None:
        if self.pod_watcher is not None:
            self._tasks.append(asyncio.create_task(self.pod_watcher.run(),
                                                   name="warmgw-k8s-slice-pods"))
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="warmgw-k8s-slices"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.gate.stop()

    # -- events -> registry --------------------------------------------------------------

    def _on_slices(self, changed: dict[str, dict[str, Any] | None]) -> None:
        for slice_name, obj in changed.items():
            old = self.slices.pop(slice_name, {})
            new = {} if obj is None else endpoints_of(obj, self.port_name, self.port,
                                                      self.pool_label)
            if new:
                self.slices[slice_name] = new
            for name in old.keys() | new.keys():
                entry = new.get(name)
                if entry == old.get(name):
                    continue
                held = self.endpoints.setdefault(name, {})
                if entry is None:
                    held.pop(slice_name, None)
                else:
                    held[slice_name] = entry
                if not held:
                    del self.endpoints[name]
                self._decide(name)

    def _on_pods(self, changed: dict[str, dict[str, Any] | None]) -> None:
        for name, obj in changed.items():
            self.gate.pod(name, None if obj is None else view(obj, self.pool_label))
            if name in self.endpoints:
                self._decide(name)

    def _decide(self, name: str) -> None:
        """Add or drain one replica from what its slices and its pod say now: O(1)."""
        held = self.endpoints.get(name)
        if not held:
            self.registry.remove(name)
            return
        ep = None
        for entry in held.values():
            if ep is None or entry.better_than(ep):
                ep = entry
        assert ep is not None
        pod = self.gate.pods.get(ep.pod) if ep.pod is not None else None
        if pod is not None:  # fresher than the slice; sees a cold pod behind the gate
            candidate = pod.candidate and not ep.terminating
        else:
            candidate = ep.serving and not ep.terminating
        if candidate:
            self.registry.add(ep.spec(self.model))
        else:
            self.registry.remove(name)
