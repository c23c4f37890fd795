"""Kubernetes discovery: Pods by label selector, the `warmgw.io/warmed` readiness gate,
and one Lease per pod so that only one gateway replica warms it.

- A pod whose containers are ready (ContainersReady=True) is a warmup candidate; one with a
  deletionTimestamp, or whose containers are not ready, drains; a grown restartCount means
  its replica is cold again.
- Once this gateway has warmed a pod it sets the pod condition warmgw.io/warmed=True with
  a strategic-merge PATCH of pods/status (a merge patch would wipe the kubelet's
  conditions). The message records the restartCount it was warmed at, so a restarted pod
  is never taken for warm. It sets it back to False when it ejects the replica.
- Other gateway replicas see the condition and ramp on their own measurements.

Pod events reach the registry as deltas, one pod at a time (O(1) each); a relist after
410 Expired is the difference from what was known. The Kubernetes client is made in
start() (loading a kubeconfig is asynchronous): KubeApi holds it for everything built
before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from warmgw.core.lifecycle import State
from warmgw.core.registry import Registry, Transition
from warmgw.discovery.kwatch import Watcher
from warmgw.discovery.pods import PodView, spec_of, view, warmed_patch
from warmgw.replicas import Replica, Replicas

log = logging.getLogger("warmgw.kubernetes")

STRATEGIC = "application/strategic-merge-patch+json"


SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    """The namespace of the gateway's own pod (in-cluster), else "default"."""
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class KubeApi:
    """The API client, made on start() from a kubeconfig or in-cluster, shared by the
    discovery and the policy's ConfigMap store, closed on close()."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig
        self._client: client.ApiClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = await api_client(self.kubeconfig)

    def __call__(self) -> client.ApiClient:
        if self._client is None:
            raise RuntimeError("the Kubernetes client is used before KubeApi.start()")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """From a kubeconfig file, or in-cluster (service account) when none is given."""
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


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
        self.replicas = replicas
        self.ns = namespace
        self.pool_label = pool_label
        self.port = port
        self.model = model
        self.identity = identity
        self.readiness_gate = readiness_gate
        self.lease_duration = lease_duration
        self.pods: dict[str, PodView] = {}
        self.patches = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run: asyncio.Task[None] | None = None
        self.watcher = Watcher(
            f"pods {namespace}/{label_selector}",
            self._list_pods,
            self._on_pods,
            watch_timeout=watch_timeout,
            namespace=namespace,
            label_selector=label_selector,
        )

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api())

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api())

    def _list_pods(self, **kwargs: Any) -> Any:
        return self.core.list_namespaced_pod_without_preload_content(**kwargs)

    async def start(self) -> None:
        self._run = asyncio.create_task(self.watcher.run(), name="warmgw-k8s-pods")

    async def stop(self) -> None:
        leases = [r.lease for r in self.replicas.records.values() if r.lease is not None]
        tasks = [t for t in (self._run, *leases, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rec in self.replicas.records.values():
            rec.lease = None

    # -- pods -> registry ----------------------------------------------------------------

    def _on_pods(self, changed: dict[str, dict[str, Any] | None]) -> None:
        """One delta per pod that changed: O(1) each."""
        for name, obj in changed.items():
            if obj is None:
                self.pods.pop(name, None)
                self.registry.remove(name)
                continue
            v = view(obj, self.pool_label)
            old = self.pods.get(name)
            self.pods[name] = v
            if old is not None and v.restart_count > old.restart_count:
                self._restarted(v)
            if v.candidate:
                self.registry.add(spec_of(v, self.port, self.model))
            else:
                self.registry.remove(name)

    def _restarted(self, v: PodView) -> None:
        why = f"container restarted (restartCount {v.restart_count}); cold again"
        ep = self.registry.endpoints.get(v.name)
        if ep is not None:
            self.registry.eject(ep, why, cold=True)  # react() resets the gate
        rec = self.replicas.get(v.name)
        if rec is not None and rec.gate_warm and (ep is None or ep.state is State.DRAINING):
            rec.gate_warm = False  # not ejected (draining): reset it here
            self._spawn(self._patch(v.name, False, why))

    # -- who warms: the supervisor asks ----------------------------------------------------

    def _holding(self, name: str) -> bool:
        rec = self.replicas.get(name)
        return rec is not None and rec.lease is not None

    def warmed_elsewhere(self, name: str) -> bool:
        v = self.pods.get(name)
        return v is not None and v.warmed and not self._holding(name)

    async def acquire(self, name: str) -> bool:
        """Take the pod's warmup Lease (create it if missing); False if another holds it."""
        if self._holding(name):
            return True
        try:
            won = await self._take(f"warmgw-warm-{name}")
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as e:
            log.info("pod %s: warmup lease not taken (%s)", name, e)
            return False
        rec = self.replicas.get(name)
        if won and rec is not None:
            rec.lease = asyncio.create_task(self._renew(f"warmgw-warm-{name}"))
        return won

    def release(self, name: str) -> None:
        rec = self.replicas.get(name)
        if rec is not None and rec.lease is not None:
            rec.lease.cancel()
            rec.lease = None

    async def _take(self, lease_name: str) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self.coordination.read_namespaced_lease(lease_name, self.ns)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=lease_name, namespace=self.ns),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.lease_duration,
                    acquire_time=now, renew_time=now, lease_transitions=0,
                ),
            )
            try:
                await self.coordination.create_namespaced_lease(self.ns, body)
                return True
            except ApiException as e2:
                if e2.status == 409:  # another gateway replica created it first
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != self.identity:
            duration = timedelta(seconds=spec.lease_duration_seconds or self.lease_duration)
            renewed = spec.renew_time
            if renewed is not None and renewed.tzinfo is None:
                renewed = renewed.replace(tzinfo=UTC)
            if spec.holder_identity and renewed is not None and renewed + duration > now:
                return False  # held, and not expired
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self.lease_duration
        spec.renew_time = now
        lease.spec = spec
        try:
            await self.coordination.replace_namespaced_lease(lease_name, self.ns, lease)
        except ApiException as e:
            if e.status == 409:  # someone updated it between our read and write
                return False
            raise
        return True

    async def _renew(self, lease_name: str) -> None:
        while True:
            await asyncio.sleep(self.lease_duration / 3)
            try:
                await self._take(lease_name)
            except asyncio.CancelledError:
                raise
            except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as e:
                log.info("lease %s: not renewed (%s)", lease_name, e)

    # -- the readiness gate ------------------------------------------------------------------

    def react(self, t: Transition, rec: Replica) -> None:
        if not self.readiness_gate:
            return
        if t.frm is State.WARMING and t.to is State.RAMPING and rec.warmed_here:
            rec.gate_warm = True
            self._spawn(self._patch(t.name, True, t.reason))
        elif t.to is State.EJECTED and rec.gate_warm:
            rec.gate_warm = False
            self._spawn(self._patch(t.name, False, t.reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _patch(self, name: str, value: bool, detail: str) -> None:
        pod = self.pods.get(name)
        restarts = pod.restart_count if pod else 0
        body = warmed_patch(value, restarts, self.identity, _iso(datetime.now(UTC)), detail)
        for attempt in range(5):
            try:
                await self.core.patch_namespaced_pod_status(
                    name, self.ns, body, _content_type=STRATEGIC
                )
                self.patches += 1
                log.info("pod %s: condition warmgw.io/warmed=%s", name, value)
                return
            except ApiException as e:
                if e.status == 404:
                    return  # the pod is gone
                log.warning("pod %s: status patch failed (%s)", name, e.status)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.warning("pod %s: status patch failed (%s)", name, e)
            await asyncio.sleep(0.5 * 2**attempt)
