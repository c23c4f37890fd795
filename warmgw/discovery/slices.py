"""Pure reading of discovery.k8s.io/v1 EndpointSlices (plain dicts as the API sends them).

Conditions, as the EndpointSlice controller sets them: serving = the pod's Ready
condition; terminating = deletionTimestamp set; ready = publishNotReadyAddresses or
(serving and not terminating). Missing serving falls back to ready, missing ready counts
as true, missing terminating as false. So `ready` says nothing once a Service publishes
not-ready addresses, and `serving` is the pod's own readiness either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warmgw.core.model import EndpointSpec

SERVICE_NAME = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    name: str  # the pod (targetRef.name) when the endpoint names one, else the address
    address: str
    port: int
    pod: str | None
    pool: str
    serving: bool
    terminating: bool

    def better_than(self, other: SliceEndpoint) -> bool:
        """While an endpoint is in two slices (moving), the livelier entry counts."""
        return (not self.terminating, self.serving) > (not other.terminating, other.serving)

    def spec(self, model: str | None, scheme: str = "http") -> EndpointSpec:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return EndpointSpec(self.name, f"{scheme}://{host}:{self.port}", self.pool, model)


def slice_port(ports: list[dict[str, Any]] | None, port_name: str | None,
               default: int) -> int | None:
    """The port named port_name (None if the slice has no such port), else the first; a
    slice without ports (or a port without a number: "all ports") gives the default."""
    if not ports:
        return default if port_name is None else None
    if port_name is not None:
        found = [p for p in ports if p.get("name") == port_name]
        if not found:
            return None
        return int(found[0].get("port") or default)
    return int(ports[0].get("port") or default)


def endpoints_of(obj: dict[str, Any], port_name: str | None, default_port: int,
                 pool_label: str, default_pool: str = "default") -> dict[str, SliceEndpoint]:
    """The endpoints of one slice, by replica name."""
    port = slice_port(obj.get("ports"), port_name, default_port)
    if port is None:
        return {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    pool = str(labels.get(pool_label) or default_pool)
    out: dict[str, SliceEndpoint] = {}
    for ep in obj.get("endpoints") or []:
        addresses = ep.get("addresses") or []
        if not addresses:
            continue
        ref = ep.get("targetRef") or {}
        pod = ref.get("name") if ref.get("kind", "Pod") == "Pod" and ref.get("name") else None
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        serving = cond.get("serving")
        if serving is None:
            serving = True if ready is None else ready
        name = str(pod or addresses[0])
        out[name] = SliceEndpoint(name, str(addresses[0]), port, pod, pool, bool(serving),
                                  bool(cond.get("terminating")))
    return out
