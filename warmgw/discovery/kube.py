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

from warmgw.core.registry import Registry
from warmgw.discovery.gate import PodGate
from warmgw.discovery.kapi import KubeApi
from warmgw.discovery.kwatch import Watcher
from warmgw.discovery.pods import spec_of, view
from warmgw.replicas import Replicas


class KubeDiscovery:
    def __init__(
        self,
        api: KubeApi,
        registry: Registry,
        replicas: Replicas,
        namespace: str,
        label_selector: str,
        pool_label: str,
        port: int,
        model: str | None,
        identity: str,
        readiness_gate: bool = True,
        lease_duration: int = 15,
        watch_timeout: int = 300,
    ) -> None:
        self.api = api
        self.registry = registry
        self.ns = namespace
        self.pool_label = pool_label
        self.port = port
        self.model = model
        self.identity = identity
        self.gate = PodGate(api, registry, replicas, namespace, identity, readiness_gate,
                            lease_duration)
        self._run: asyncio.Task[None] | None = None
        self.watcher = Watcher(
            f"pods {namespace}/{label_selector}",
            self._list_pods,
            self._on_pods,
            watch_timeout=watch_timeout,
            namespace=namespace,
            label_selector=label_selector,
        )

    def _list_pods(self, **kwargs: Any) -> Any:
        return client.CoreV1Api(self.api()).list_namespaced_pod_without_preload_content(
            **kwargs)

    async def start(self) -> None:
        self._run = asyncio.create_task(self.watcher.run(), name="warmgw-k8s-pods")

    async def stop(self) -> None:
        if self._run is not None:
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
        await self.gate.stop()

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
