"""Pure reading of Kubernetes Pod objects (plain dicts as the API sends them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from warmgw.core.model import EndpointSpec

WARMED = "warmgw.io/warmed"
_RESTARTS = re.compile(r"restartCount=(\d+)")


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    ip: str | None
    pool: str
    containers_ready: bool
    terminating: bool
    restart_count: int
    warmed_at_restart: int | None  # the warmed condition is True for this restartCount
    has_gate: bool

    @property
    def candidate(self) -> bool:
        """Worth routing or warming: containers up, not being deleted, has an address."""
        return self.containers_ready and not self.terminating and bool(self.ip)

    @property
    def warmed(self) -> bool:
        """The warmed condition holds for the pod's current containers."""
        return self.warmed_at_restart is not None and self.warmed_at_restart == self.restart_count


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def view(pod: dict[str, Any], pool_label: str, default_pool: str = "default") -> PodView:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    cr = _condition(status, "ContainersReady")
    warmed = _condition(status, WARMED)
    warmed_at = None
    if warmed is not None and warmed.get("status") == "True":
        m = _RESTARTS.search(warmed.get("message") or "")
        warmed_at = int(m.group(1)) if m else None
    restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
    gates = spec.get("readinessGates") or []
    return PodView(
        name=str(meta.get("name", "")),
        ip=status.get("podIP") or None,
        pool=str((meta.get("labels") or {}).get(pool_label) or default_pool),
        containers_ready=cr is not None and cr.get("status") == "True",
        terminating=bool(meta.get("deletionTimestamp")),
        restart_count=restarts,
        warmed_at_restart=warmed_at,
        has_gate=any(g.get("conditionType") == WARMED for g in gates),
    )


def spec_of(pod: PodView, port: int, model: str | None, scheme: str = "http") -> EndpointSpec:
    host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
    return EndpointSpec(pod.name, f"{scheme}://{host}:{port}", pod.pool, model)


def warmed_patch(value: bool, restart_count: int, identity: str, now_iso: str,
                 detail: str) -> dict[str, Any]:
    """The strategic-merge patch body for pods/status: merges conditions by type."""
    return {
        "status": {
            "conditions": [
                {
                    "type": WARMED,
                    "status": "True" if value else "False",
                    "reason": "Warmed" if value else "Cold",
                    "message": f"restartCount={restart_count}; by {identity}; {detail}",
                    "lastTransitionTime": now_iso,
                }
            ]
        }
    }
