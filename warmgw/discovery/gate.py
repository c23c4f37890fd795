"""Who warms a pod, and telling Kubernetes it is warm: one Lease per pod, the
`warmgw.io/warmed` readiness gate, and what a container restart means. Shared by the
sources whose replicas are pods (discovery.kube: Pods; discovery.endpointslices: the pods
that endpoints' targetRefs name), which feed it the pods' views.

- One Lease per pod (`warmgw-warm-<pod>`) decides which gateway replica warms it; the
  others see the pod's warmed condition and ramp on their own measurements.
- Once this gateway has warmed a pod it sets the pod condition warmgw.io/warmed=True with
  a strategic-merge PATCH of pods/status (a merge patch would wipe the kubelet's
  conditions). The message records the restartCount it was warmed at, so a restarted pod
  is never taken for warm. It sets it back to False when it ejects the replica.
- A grown restartCount means the replica is cold again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from warmgw.core.lifecycle import State
from warmgw.core.registry import Registry, Transition
from warmgw.discovery.kapi import KubeApi
from warmgw.discovery.pods import PodView, warmed_patch
from warmgw.replicas import Replica, Replicas

log = logging.getLogger("warmgw.kubernetes")

STRATEGIC = "application/strategic-merge-patch+json"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PodSource:
    """What every source whose replicas are pods shares: the API and the parts it feeds,
    where it looks, and who this gateway replica is (discovery.kube, .endpointslices,
    .inferencepool take one, and PodGate)."""

    api: KubeApi
    registry: Registry
    replicas: Replicas
    namespace: str
    identity: str  # this gateway replica, as it signs Leases
    pool_label: str
    model: str | None = None  # None: learn it from /v1/models
    readiness_gate: bool = True
    lease_duration: int = 15
    watch_timeout: int = 300


class PodGate:
    """The warm coordinator (supervisor) and the readiness-gate reaction (replicas) for
    replicas named after their pods."""

    def __init__(self, src: PodSource) -> None:
        self.src = src
        self.api = src.api
        self.registry = src.registry
        self.replicas = src.replicas
        self.ns = src.namespace
        self.identity = src.identity
        self.readiness_gate = src.readiness_gate
        self.lease_duration = src.lease_duration
        self.pods: dict[str, PodView] = {}
        self.patches = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api())

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api())

    async def stop(self) -> None:
        leases = [r.lease for r in self.replicas.records.values() if r.lease is not None]
        tasks = [*leases, *self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rec in self.replicas.records.values():
            rec.lease = None

    # -- pod views, fed by the source ------------------------------------------------------

    def pod(self, name: str, v: PodView | None) -> None:
        """The pod as it is now (None: gone). O(1)."""
        if v is None:
            self.pods.pop(name, None)
            return
        old = self.pods.get(name)
        self.pods[name] = v
        if old is not None and v.restart_count > old.restart_count:
            self._restarted(v)

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
        if (t.frm is State.WARMING and t.to is State.RAMPING and rec.warmed_here
                and t.name in self.pods):  # a replica that is a pod we know (not an address)
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
