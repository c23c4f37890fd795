"""Realistic Pod JSON, the kubelet's readiness rule and the EndpointSlice controller's view.

Pure functions over plain dicts: the server decides when to apply them.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Iterable, Mapping

from .fake_kinds import JSON, fmt_time, now

KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"


def make_pod(name: str, labels: Mapping[str, str], ip: str | None, port: int = 8000, *,
             namespace: str = "default", containers_ready: bool = False,
             readiness_gates: Iterable[str] = ("warmgw.io/warmed",), restart_count: int = 0,
             node_name: str = "node-1", container: str = "vllm",
             image: str = "vllm/vllm-openai:v0.9.1") -> JSON:
    """A scheduled, running Pod as the API server returns it (no kind/apiVersion: add_pod and
    the server add those where they belong)."""
    ts = fmt_time(now())
    cid = hashlib.sha256(f"{namespace}/{name}/{restart_count}".encode()).hexdigest()
    status: JSON = {
        "phase": "Running",
        "conditions": [_condition("PodScheduled", True, ts)],
        "hostIP": "192.0.2.10",
        "hostIPs": [{"ip": "192.0.2.10"}],
        "startTime": ts,
        "containerStatuses": [{
            "name": container,
            "state": {"running": {"startedAt": ts}},
            "lastState": {},
            "ready": containers_ready,
            "restartCount": restart_count,
            "image": image,
            "imageID": f"docker.io/{image.split(':')[0]}@sha256:{cid[:64]}",
            "containerID": f"containerd://{cid}",
            "started": True,
        }],
        "qosClass": "BestEffort",
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    pod: JSON = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "creationTimestamp": ts,
            "labels": dict(labels),
        },
        "spec": {
            "containers": [{
                "name": container,
                "image": image,
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "readinessGates": [{"conditionType": g} for g in readiness_gates],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": node_name,
            "schedulerName": "default-scheduler",
            "enableServiceLinks": True,
            "priority": 0,
        },
        "status": status,
    }
    return kubelet_sync(pod)


def _condition(type_: str, ok: bool, at: str, reason: str | None = None,
               message: str | None = None) -> JSON:
    cond: JSON = {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None,
                  "lastTransitionTime": at}
    if reason is not None:
        cond["reason"] = reason
    if message is not None:
        cond["message"] = message
    return cond


def condition(pod: JSON, type_: str) -> JSON | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def set_condition(pod: JSON, type_: str, ok: bool, reason: str | None = None,
                  message: str | None = None) -> None:
    """Set a condition as its owner would: lastTransitionTime moves only on a status flip."""
    conds = pod.setdefault("status", {}).setdefault("conditions", [])
    fresh = _condition(type_, ok, fmt_time(now()), reason, message)
    for n, old in enumerate(conds):
        if old.get("type") == type_:
            if old.get("status") == fresh["status"] and old.get("lastTransitionTime"):
                fresh["lastTransitionTime"] = old["lastTransitionTime"]
            fresh["lastProbeTime"] = old.get("lastProbeTime")
            conds[n] = fresh
            return
    conds.append(fresh)


def kubelet_sync(pod: JSON) -> JSON:
    """The conditions the kubelet owns, recomputed; every other condition is kept.

    Ready is True only when ContainersReady is True and every readiness gate's condition is
    "True" (a missing one counts as False): the kubelet's GeneratePodReadyCondition.
    """
    pod = copy.deepcopy(pod)
    spec, status = pod.get("spec") or {}, pod.setdefault("status", {})
    if not spec.get("nodeName"):
        return pod  # no kubelet owns an unscheduled pod
    ready_by_name = {s.get("name"): bool(s.get("ready"))
                     for s in status.get("containerStatuses") or []}
    unready = [c["name"] for c in spec.get("containers") or []
               if not ready_by_name.get(c["name"], False)]
    set_condition(pod, "PodReadyToStartContainers", bool(status.get("podIP")))
    set_condition(pod, "Initialized", True)
    why = f"containers with unready status: [{' '.join(unready)}]"
    if unready:
        set_condition(pod, "ContainersReady", False, "ContainersNotReady", why)
        set_condition(pod, "Ready", False, "ContainersNotReady", why)
        return pod
    set_condition(pod, "ContainersReady", True)
    gate_problems = []
    for gate in spec.get("readinessGates") or []:
        gate_type = gate.get("conditionType")
        cond = condition(pod, gate_type)
        if cond is None:
            gate_problems.append(
                f'corresponding condition of pod readiness gate "{gate_type}" does not exist.')
        elif cond.get("status") != "True":
            gate_problems.append(f'the status of pod readiness gate "{gate_type}" is not '
                                 f'"True", but {cond.get("status")}')
    if gate_problems:
        set_condition(pod, "Ready", False, "ReadinessGatesNotReady", ", ".join(gate_problems))
    else:
        set_condition(pod, "Ready", True)
    return pod


def is_true(pod: JSON, type_: str) -> bool:
    cond = condition(pod, type_)
    return cond is not None and cond.get("status") == "True"


# --- EndpointSlice controller ------------------------------------------------------------

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet


def slice_name(service: str, index: int) -> str:
    digest = hashlib.sha256(f"{service}/{index}".encode()).digest()
    return f"{service}-" + "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:5])


def endpoint(pod: JSON, publish_not_ready: bool) -> JSON:
    meta = pod["metadata"]
    serving = is_true(pod, "Ready")
    terminating = meta.get("deletionTimestamp") is not None
    ep: JSON = {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": publish_not_ready or (serving and not terminating),
                       "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                      "uid": meta["uid"]},
    }
    if pod["spec"].get("nodeName"):
        ep["nodeName"] = pod["spec"]["nodeName"]
    return ep


def desired_slices(service: JSON, pods: Iterable[JSON], max_per_slice: int) -> list[JSON]:
    """The slices the controller keeps for a Service: one placeholder when nothing matches
    (its `endpoints` is null, as on the wire), else chunks of at most max_per_slice."""
    meta, spec = service["metadata"], service["spec"]
    selector = spec.get("selector") or {}
    members = sorted(
        (p for p in pods
         if selector
         and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
         and (p.get("status") or {}).get("podIP")
         and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")),
        key=lambda p: str(p["metadata"]["name"]))
    eps = [endpoint(p, bool(spec.get("publishNotReadyAddresses"))) for p in members]
    chunks = [eps[i:i + max_per_slice] for i in range(0, len(eps), max_per_slice)] or [[]]
    ports = [{"name": p.get("name", ""), "port": p.get("targetPort", p["port"]),
              "protocol": p.get("protocol", "TCP")} for p in spec.get("ports") or []]
    return [{
        "metadata": {
            "name": slice_name(meta["name"], i),
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            # the Service's labels are copied, then the controller's own set
            "labels": {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: meta["name"],
                       MANAGED_BY_LABEL: SLICE_CONTROLLER},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "addressType": "IPv4",
        "endpoints": chunk or None,
        "ports": ports,
    } for i, chunk in enumerate(chunks)]
