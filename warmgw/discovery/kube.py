"""Kubernetes discovery: Pods by label selector.

- A pod whose containers are ready (ContainersReady=True) is a warmup candidate; one with a
  deletionTimestamp, or whose containers are not ready, drains.
- Who warms it, the `warmgw.io/warmed` readiness gate and restarts: discovery.gate.

Pod events reach the registry as deltas, one pod at a time (O(1) each); a relist after
410 Expired is the difference from what was known.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio import client

from warmgw.discovery.gate import PodGate, PodSource
from warmgw.discovery.kwatch import Watcher
from warmgw.discovery.pods import spec_of, view


class KubeDiscovery:
    def __init__(self, src: PodSource, label_selector: str | None, port: int) -> None:
        """label_selector None: wait for target() (an InferencePool's selector)."""
        self.src = src
        self.api = src.api
        self.registry = src.registry
        self.ns = src.namespace
        self.pool_label = src.pool_label
        self.port = port
        self.model = src.model
        self.identity = src.identity
        self.gate = PodGate(src)
        self.watch_timeout = src.watch_timeout
        self.label_selector = label_selector
        self._run: asyncio.Task[None] | None = None
        self._started = False
        self._retired: set[asyncio.Task[None]] = set()
        self.watcher = self._watcher(label_selector or "")

    def _watcher(self, label_selector: str) -> Watcher:
        return Watcher(f"pods {self.ns}/{label_selector}", self._list_pods, self._on_pods,
                       watch_timeout=self.watch_timeout, namespace=self.ns,
                       label_selector=label_selector)

    def _list_pods(self, **kwargs: Any) -> Any:
        return client.CoreV1Api(self.api()).list_namespaced_pod_without_preload_content(
            **kwargs)

    async def start(self) -> None:
        """Watch the pods, or (no selector yet) wait for target()."""
        self._started = True
        if self.label_selector is not None:
            self._run = asyncio.create_task(self.watcher.run(), name="warmgw-k8s-pods")

    async def stop(self) -> None:
        self._started = False
        tasks = [*self._retired, *([self._run] if self._run is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retired.clear()
        self._run = None
        await self.gate.stop()

    def target(self, label_selector: str, port: int) -> None:
        """Pick the pods of another selector, or serve them on another port (an
        InferencePool's spec changed). A new port re-specs every known pod (the registry
        probes a moved URL again); a new selector starts a new watch whose first list is
        the difference from the pods known so far: pods come and go, the others stay."""
        if port != self.port:
            self.port = port
            self._on_pods(dict(self.watcher.objects))
        if label_selector == self.label_selector and self._run is not None:
            return
        self.label_selector = label_selector
        known = self.watcher.objects
        self.watcher = self._watcher(label_selector)
        self.watcher.objects = known
        if self._run is not None:  # cancelled here, awaited on stop()
            self._run.cancel()
            self._retired.add(self._run)
            self._run.add_done_callback(self._retired.discard)
            self._run = None
        if self._started:
            self._run = asyncio.create_task(self.watcher.run(), name="warmgw-k8s-pods")

    def _on_pods(self, changed: dict[str, dict[str, Any] | None]) -> None:
        """One delta per pod that changed: O(1) each."""
        for name, obj in changed.items():
            if obj is None:
                self.gate.pod(name, None)
                self.registry.remove(name)
                continue
            v = view(obj, self.pool_label)
            self.gate.pod(name, v)
            if v.candidate:
                self.registry.add(spec_of(v, self.port, self.model))
            else:
                self.registry.remove(name)
