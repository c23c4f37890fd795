"""Kubernetes discovery from an InferencePool (inference.networking.k8s.io/v1, Gateway API
Inference Extension): the pods its selector picks, on its target port.

- The gateway watches the one pool object (a field selector on its name); its
  spec.selector.matchLabels becomes the pod label selector, spec.targetPorts[0].number the
  replicas' port. Pods, warmup Lease, readiness gate and restarts are discovery.kube's
  (and discovery.gate's), exactly as for a plain label selector.
- A changed selector watches the new set of pods: the ones no longer picked drain, the new
  ones are warmed, the ones in both stay as they are. A changed port re-probes every pod.
- A pool that is deleted, or whose spec is invalid, leaves the last pods known in place
  (as an API outage does) and says so in the log.
- spec.endpointPickerRef (the EPP Service and its failureMode) is read for the log and the
  status: Envoy, not warmgw, acts on failureMode.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import client

from warmgw.discovery.gate import PodGate, PodSource
from warmgw.discovery.kube import KubeDiscovery
from warmgw.discovery.kwatch import Watcher

log = logging.getLogger("warmgw.kubernetes")

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
PLURAL = "inferencepools"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    selector: str  # "k=v,k2=v2", keys sorted
    port: int
    picker: str | None  # endpointPickerRef: "name:port"
    failure_mode: str  # FailClose (the API's default) or FailOpen


class InvalidPool(ValueError):
    pass


def pool_spec(obj: dict[str, Any]) -> PoolSpec:
    """An InferencePool's spec as the gateway uses it; InvalidPool names the bad field."""
    spec = obj.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if not isinstance(labels, dict) or not labels:
        raise InvalidPool("spec.selector.matchLabels: required, at least one label")
    ports = spec.get("targetPorts") or []
    number = ports[0].get("number") if ports and isinstance(ports[0], dict) else None
    if type(number) is not int or not 1 <= number <= 65535:
        raise InvalidPool(f"spec.targetPorts[0].number: expected 1-65535, got {number!r}")
    ref = spec.get("endpointPickerRef") or {}
    picker = None
    if ref.get("name"):
        port = (ref.get("port") or {}).get("number")
        picker = f"{ref['name']}:{port}" if port else str(ref["name"])
    return PoolSpec(
        selector=",".join(f"{k}={labels[k]}" for k in sorted(labels)),
        port=number,
        picker=picker,
        failure_mode=str(ref.get("failureMode") or "FailClose"),
    )


class PoolDiscovery:
    def __init__(self, src: PodSource, pool_name: str) -> None:
        self.api = src.api
        self.ns = namespace = src.namespace
        self.name = pool_name
        self.pool: PoolSpec | None = None
        self.pods = KubeDiscovery(src, None, 0)
        watch_timeout = src.watch_timeout
        self.watcher = Watcher(
            f"inferencepool {namespace}/{pool_name}", self._list_pool, self._on_pool,
            watch_timeout=watch_timeout, namespace=namespace,
            field_selector=f"metadata.name={pool_name}")
        self._run: asyncio.Task[None] | None = None

    @property
    def gate(self) -> PodGate:
        return self.pods.gate

    def _list_pool(self, **kwargs: Any) -> Any:
        api = client.CustomObjectsApi(self.api())
        return api.list_namespaced_custom_object_without_preload_content(
            GROUP, VERSION, plural=PLURAL, **kwargs)

    async def start(self) -> None:
        await self.pods.start()  # idle until the pool names its pods
        self._run = asyncio.create_task(self.watcher.run(), name="warmgw-k8s-inferencepool")

    async def stop(self) -> None:
        if self._run is not None:
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
            self._run = None
        await self.pods.stop()

    def _on_pool(self, changed: dict[str, dict[str, Any] | None]) -> None:
        if self.name not in changed:
            return
        obj = changed[self.name]
        if obj is None:
            log.warning("inferencepool %s/%s deleted; keeping its %d known pods", self.ns,
                        self.name, len(self.pods.watcher.objects))
            return
        try:
            spec = pool_spec(obj)
        except InvalidPool as e:
            log.warning("inferencepool %s/%s: %s; keeping the last spec", self.ns, self.name, e)
            return
        if spec == self.pool:
            return
        log.info("inferencepool %s/%s: pods %s on port %d (endpoint picker %s, %s)", self.ns,
                 self.name, spec.selector, spec.port, spec.picker, spec.failure_mode)
        self.pool = spec
        self.pods.target(spec.selector, spec.port)
