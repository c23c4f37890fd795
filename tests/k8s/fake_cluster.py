"""What the control plane does with a write: API verb semantics, the kubelet's readiness rule
and the EndpointSlice controller. Synchronous and free of HTTP."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from .fake_kinds import (
    CONFIGMAPS,
    ENDPOINTSLICES,
    HTTPROUTES,
    INFERENCEPOOLS,
    JSON,
    LEASES,
    PODS,
    SERVICES,
    ApiError,
    Kind,
    bad_request,
    conflict,
    fmt_micro,
    fmt_time,
    invalid,
    later,
    now,
    parse_time,
)
from .fake_patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch
from .fake_pods import SERVICE_NAME_LABEL, desired_slices, kubelet_sync, set_condition
from .fake_store import Store


class Cluster:
    def __init__(self, store: Store, max_endpoints_per_slice: int = 100) -> None:
        if max_endpoints_per_slice < 1:
            raise ValueError(
                f"max_endpoints_per_slice must be >= 1, got {max_endpoints_per_slice!r}")
        self.store = store
        self.max_endpoints_per_slice = max_endpoints_per_slice

    # --- API verbs -----------------------------------------------------------------------

    def create(self, kind: Kind, namespace: str, body: JSON) -> JSON:
        obj = _strip_type(kind, body)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(kind, "", "metadata.name: Required value: name or generateName "
                                        "is required")
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        for server_owned in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(server_owned, None)
        if kind is PODS:  # the API server resets a new pod's status
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        created = self.store.create(kind, namespace, normalize(kind, obj))
        self._after_write(kind, namespace)
        return created

    def update(self, kind: Kind, namespace: str, name: str, body: JSON) -> JSON:
        obj = _strip_type(kind, body)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match "
                              f"the name on the URL ({name})")
        current = self.store.require(kind, namespace, name)
        rv = meta.get("resourceVersion")
        if not rv and not kind.unconditional_update:
            raise invalid(kind, name, "metadata.resourceVersion: Invalid value: 0x0: must be "
                                      "specified for an update")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise conflict(kind, name)
        if kind is PODS:
            obj["status"] = current.get("status")
        updated = self.store.replace(kind, namespace, normalize(kind, obj))
        self._after_write(kind, namespace)
        return updated

    def patch(self, kind: Kind, namespace: str, name: str, content_type: str, patch: Any,
              subresource: str | None = None) -> JSON:
        current = self.store.require(kind, namespace, name)
        if kind.custom and content_type == STRATEGIC:  # no strategic merge for CRDs
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media "
                           f"types include: {JSON_PATCH}, {MERGE}, application/apply-patch+yaml")
        patched = _strip_type(kind, apply_patch(content_type, kind.with_kind(current), patch))
        meta = patched.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("resourceVersion", current["metadata"]["resourceVersion"]) != (
                current["metadata"]["resourceVersion"]):
            raise conflict(kind, name)
        for identity in ("name", "namespace", "uid", "creationTimestamp"):
            meta[identity] = current["metadata"][identity]
        if subresource == "status":  # only status changes; metadata and spec are kept
            result = {**current, "status": patched.get("status")}
        elif kind is PODS:  # a pod's spec is (mostly) immutable and status has its own path
            if patched.get("spec") != current.get("spec"):
                raise invalid(kind, name, "spec: Forbidden: pod updates may not change fields "
                                          "other than the allowed ones")
            result = {**patched, "status": current.get("status")}
        else:
            result = patched
        updated = self.store.replace(kind, namespace, normalize(kind, result))
        if kind is PODS and updated != current:
            self._kubelet(namespace, name)  # a separate write, as the kubelet reacts later
        self._after_write(kind, namespace)
        return updated

    def delete(self, kind: Kind, namespace: str, name: str, grace: int | None,
               preconditions: Mapping[str, Any] | None = None) -> JSON:
        current = self.store.require(kind, namespace, name)
        meta = current["metadata"]
        for field, key in (("ResourceVersion", "resourceVersion"), ("UID", "uid")):
            want = (preconditions or {}).get(key)
            if want is not None and want != meta[key]:
                raise conflict(kind, name, f"Precondition failed: {field} in precondition: "
                                           f"{want}, {field} in object meta: {meta[key]}")
        if kind is PODS and grace != 0 and not meta.get("deletionTimestamp"):
            if grace is None:
                grace = int(current["spec"].get("terminationGracePeriodSeconds", 30))
            return self.mark_deleting(namespace, name, grace)
        gone = self.store.remove(kind, namespace, name)
        self._after_write(kind, namespace)
        return gone

    # --- what the kubelet, scheduler and users do (test helpers) -------------------------

    def add_pod(self, pod: JSON, namespace: str | None = None) -> JSON:
        obj = _strip_type(PODS, pod)
        ns = namespace or obj["metadata"].get("namespace") or "default"
        created = self.store.create(PODS, ns, normalize(PODS, kubelet_sync(obj)))
        self._after_write(PODS, ns)
        return created

    def change_pod(self, namespace: str, name: str, change: Callable[[JSON], None],
                   by_kubelet: bool = True) -> JSON:
        """Apply `change` to the stored pod in one write; the kubelet's conditions are
        recomputed in that same write when the kubelet is the writer."""
        pod = self.store.require(PODS, namespace, name)
        change(pod)
        if by_kubelet:
            pod = kubelet_sync(pod)
        self.store.replace(PODS, namespace, normalize(PODS, pod))
        if not by_kubelet:
            self._kubelet(namespace, name)
        self._after_write(PODS, namespace)
        return self.store.require(PODS, namespace, name)

    def set_pod_containers_ready(self, namespace: str, name: str, ready: bool) -> JSON:
        def change(pod: JSON) -> None:
            for status in pod["status"].get("containerStatuses") or []:
                status["ready"] = ready
                status["started"] = True
        return self.change_pod(namespace, name, change)

    def bump_restart_count(self, namespace: str, name: str, *,
                           containers_ready: bool = False) -> JSON:
        """Every container died and was restarted; other conditions (the gate!) are kept."""
        def change(pod: JSON) -> None:
            ts = fmt_time(now())
            for status in pod["status"].get("containerStatuses") or []:
                started = ((status.get("state") or {}).get("running") or {}).get("startedAt")
                status["lastState"] = {"terminated": {
                    "exitCode": 137, "reason": "Error", "startedAt": started, "finishedAt": ts,
                    "containerID": status.get("containerID")}}
                status["state"] = {"running": {"startedAt": ts}}
                status["restartCount"] = int(status.get("restartCount", 0)) + 1
                status["ready"] = containers_ready
                status["containerID"] = "containerd://" + secrets.token_hex(32)
        return self.change_pod(namespace, name, change)

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> JSON:
        def change(pod: JSON) -> None:
            pod["metadata"]["labels"] = dict(labels)
        return self.change_pod(namespace, name, change, by_kubelet=False)

    def set_pod_condition(self, namespace: str, name: str, type_: str, ok: bool,
                          reason: str | None = None, message: str | None = None) -> JSON:
        """As another controller writes a condition (e.g. a readiness gate): the kubelet
        recomputes Ready in a second write."""
        def change(pod: JSON) -> None:
            set_condition(pod, type_, ok, reason, message)
        return self.change_pod(namespace, name, change, by_kubelet=False)

    def mark_deleting(self, namespace: str, name: str, grace_seconds: int = 30) -> JSON:
        def change(pod: JSON) -> None:
            pod["metadata"]["deletionTimestamp"] = later(grace_seconds)
            pod["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
        return self.change_pod(namespace, name, change, by_kubelet=False)

    def remove(self, kind: Kind, namespace: str, name: str) -> JSON:
        gone = self.store.remove(kind, namespace, name)
        self._after_write(kind, namespace)
        return gone

    def add_service(self, namespace: str, name: str, selector: Mapping[str, str], port: int, *,
                    target_port: int | None = None, port_name: str = "http",
                    publish_not_ready_addresses: bool = False,
                    labels: Mapping[str, str] | None = None) -> JSON:
        svc = self.store.create(SERVICES, namespace, {
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"selector": dict(selector), "type": "ClusterIP",
                     "clusterIP": f"10.96.{len(self.store.select(SERVICES)) % 250}.10",
                     "ports": [{"name": port_name, "port": port, "protocol": "TCP",
                                "targetPort": target_port if target_port is not None else port}],
                     "publishNotReadyAddresses": publish_not_ready_addresses},
            "status": {"loadBalancer": {}},
        })
        self.sync_slices(namespace)
        return svc

    def put_configmap(self, namespace: str, name: str, data: Mapping[str, str]) -> JSON:
        current = self.store.get(CONFIGMAPS, namespace, name)
        if current is None:
            return self.create(CONFIGMAPS, namespace, {"metadata": {"name": name},
                                                       "data": dict(data)})
        current["data"] = dict(data)
        return self.update(CONFIGMAPS, namespace, name, current)

    def put(self, kind: Kind, namespace: str, obj: JSON) -> JSON:
        """Create, or replace the spec of, an object as a user's `kubectl apply` would."""
        name = obj["metadata"]["name"]
        current = self.store.get(kind, namespace, name)
        if current is None:
            return self.create(kind, namespace, copy.deepcopy(obj))
        return self.update(kind, namespace, name, {**current, "spec": copy.deepcopy(
            obj.get("spec"))})

    # --- controllers ---------------------------------------------------------------------

    def _after_write(self, kind: Kind, namespace: str) -> None:
        if kind in (PODS, SERVICES):
            self.sync_slices(namespace)

    def _kubelet(self, namespace: str, name: str) -> None:
        pod = self.store.require(PODS, namespace, name)
        synced = kubelet_sync(pod)
        if synced != pod:
            self.store.replace(PODS, namespace, synced)

    def sync_slices(self, namespace: str) -> None:
        """The EndpointSlice controller: write only the slices whose content changed."""
        pods = self.store.select(PODS, namespace)
        for svc in self.store.select(SERVICES, namespace):
            svc_name = svc["metadata"]["name"]
            want = desired_slices(svc, pods, self.max_endpoints_per_slice)
            names = {s["metadata"]["name"] for s in want}
            for desired in want:
                have = self.store.get(ENDPOINTSLICES, namespace, desired["metadata"]["name"])
                if have is None:
                    self.store.create(ENDPOINTSLICES, namespace, desired)
                elif any(have.get(k) != desired.get(k) for k in ("endpoints", "ports")) or (
                        have["metadata"].get("labels") != desired["metadata"]["labels"]):
                    have.update(endpoints=desired["endpoints"], ports=desired["ports"])
                    have["metadata"]["labels"] = desired["metadata"]["labels"]
                    self.store.replace(ENDPOINTSLICES, namespace, have)
            for have in self.store.select(ENDPOINTSLICES, namespace):
                labels = have["metadata"].get("labels") or {}
                if labels.get(SERVICE_NAME_LABEL) == svc_name and (
                        have["metadata"]["name"] not in names):
                    self.store.remove(ENDPOINTSLICES, namespace, have["metadata"]["name"])


def _strip_type(kind: Kind, body: Any) -> JSON:
    if not isinstance(body, dict):
        raise bad_request(f"{kind.kind} body must be a JSON object")
    obj = copy.deepcopy(body)
    api_version, kind_name = obj.pop("apiVersion", None), obj.pop("kind", None)
    if api_version not in (None, kind.api_version) or kind_name not in (None, kind.kind):
        raise bad_request(f"the API version in the data ({api_version}) or kind ({kind_name}) "
                          f"does not match the expected {kind.api_version} {kind.kind}")
    return obj


def normalize(kind: Kind, obj: JSON) -> JSON:
    """Decode and re-encode what the real server would: times in canonical UTC form (naive
    times are rejected with 400), string maps checked."""
    meta = obj.setdefault("metadata", {})
    _strings(kind, meta.get("labels"), "metadata.labels")
    _strings(kind, meta.get("annotations"), "metadata.annotations")
    if meta.get("deletionTimestamp") is not None:
        meta["deletionTimestamp"] = fmt_time(
            parse_time(meta["deletionTimestamp"], kind, "metadata.deletionTimestamp"))
    if kind is PODS:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if not isinstance(cond, dict) or not cond.get("type") or "status" not in cond:
                raise invalid(kind, meta.get("name", ""),
                              "status.conditions: a condition needs type and status")
            for key in ("lastTransitionTime", "lastProbeTime"):
                if cond.get(key) is not None:
                    cond[key] = fmt_time(parse_time(cond[key], kind, f"conditions.{key}"))
    elif kind is LEASES:
        spec = obj.get("spec") or {}
        for key in ("acquireTime", "renewTime"):
            if spec.get(key) is not None:
                spec[key] = fmt_micro(parse_time(spec[key], kind, f"spec.{key}"))
        for key in ("leaseDurationSeconds", "leaseTransitions"):
            if spec.get(key) is not None and type(spec[key]) is not int:
                raise bad_request(f"Lease in version \"v1\" cannot be handled as a Lease: "
                                  f"spec.{key}: expected an integer, got {spec[key]!r}")
    elif kind is CONFIGMAPS:
        _strings(kind, obj.get("data"), "data")
    elif kind is INFERENCEPOOLS:
        _inference_pool(kind, meta.get("name", ""), obj.get("spec") or {})
    elif kind is HTTPROUTES:
        for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
            for j, ref in enumerate(rule.get("backendRefs") or []):
                w = ref.get("weight", 1)
                if type(w) is not int or not 0 <= w <= 1_000_000:
                    raise invalid(kind, meta.get("name", ""),
                                  f"spec.rules[{i}].backendRefs[{j}].weight: Invalid value: "
                                  f"{w!r}: must be an integer in 0-1000000")
    return obj


def _inference_pool(kind: Kind, name: str, spec: JSON) -> None:
    """The CRD's OpenAPI validation (inference.networking.k8s.io/v1), as 422 Invalid."""
    labels = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(labels, dict) or not 1 <= len(labels) <= 64:
        raise invalid(kind, name, "spec.selector.matchLabels: Required value: 1-64 labels")
    _strings(kind, labels, "spec.selector.matchLabels")
    ports = spec.get("targetPorts")
    if not isinstance(ports, list) or len(ports) != 1:
        raise invalid(kind, name, "spec.targetPorts: Invalid value: must have exactly 1 item")
    number = ports[0].get("number") if isinstance(ports[0], dict) else None
    if type(number) is not int or not 1 <= number <= 65535:
        raise invalid(kind, name, f"spec.targetPorts[0].number: Invalid value: {number!r}: "
                                  "must be 1-65535")
    mode = (spec.get("endpointPickerRef") or {}).get("failureMode", "FailClose")
    if mode not in ("FailOpen", "FailClose"):
        raise invalid(kind, name, f"spec.endpointPickerRef.failureMode: Unsupported value: "
                                  f'"{mode}": supported values: "FailOpen", "FailClose"')


def _strings(kind: Kind, value: Any, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                          f"{kind.kind}: {field}: expected a map of strings")
