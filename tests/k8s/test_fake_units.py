"""Table-driven tests of the fake's pure parts: selectors, patches, the kubelet's readiness
rule and the EndpointSlice conditions."""

from __future__ import annotations

from typing import Any

import pytest

from .fake_http import truthy
from .fake_kinds import LEASES, ApiError, parse_time
from .fake_patch import json_patch, merge_patch, strategic_merge
from .fake_pods import condition, desired_slices, kubelet_sync, make_pod, set_condition
from .fake_selectors import FieldSelector, LabelSelector

LABELS = {"app": "vllm", "tier": "canary", "gen": "3", "empty": ""}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("app=vllm", True),
    ("app == vllm", True),
    ("app=other", False),
    ("app!=other", True),
    ("missing!=x", True),
    ("app in (vllm,other)", True),
    ("app in ( other )", False),
    ("missing in (x)", False),
    ("app notin (vllm)", False),
    ("missing notin (x)", True),
    ("tier", True),
    ("missing", False),
    ("!missing", True),
    ("!tier", False),
    ("gen>2,gen<4", True),
    ("gen>3", False),
    ("empty=", True),
    ("app=vllm,tier=canary,!missing", True),
    ("app=vllm,tier=stable", False),
])
def test_label_selector_matches(selector: str, expected: bool) -> None:
    assert LabelSelector(selector).matches({"metadata": {"labels": LABELS}}) is expected


@pytest.mark.parametrize("selector", ["app=vllm,", "in (a)", "app in ()", "app in (a",
                                      "app ~ b", "app=a b", "!", "gen>x"])
def test_label_selector_rejects(selector: str) -> None:
    with pytest.raises(ApiError) as info:
        LabelSelector(selector)
    assert info.value.code == 400


@pytest.mark.parametrize(("selector", "expected"), [
    ("metadata.name=p0", True),
    ("metadata.name==p1", False),
    ("metadata.name!=p1,status.phase=Running", True),
    ("spec.nodeName=node-1", True),
])
def test_field_selector(selector: str, expected: bool) -> None:
    pod = make_pod("p0", {}, "10.0.0.1")
    assert FieldSelector(selector, "pods").matches(pod) is expected


def test_field_selector_rejects_unindexed_fields() -> None:
    with pytest.raises(ApiError, match="field label not supported"):
        FieldSelector("spec.priority=0", "pods")


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("0", False), ("false", False), ("FaLsE", False),
    ("", True), ("1", True), ("true", True), ("yes", True),
])
def test_bool_query_parameters(value: str | None, expected: bool) -> None:
    assert truthy(value) is expected


POD_STATUS = {"status": {"conditions": [{"type": "Ready", "status": "False"},
                                        {"type": "X", "status": "False"}],
                         "podIPs": [{"ip": "a"}]}}


@pytest.mark.parametrize(("patch", "expected"), [
    ({"status": {"conditions": [{"type": "X", "status": "True"}]}},
     {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}],
      "podIPs": [{"ip": "a"}]}),
    ({"status": {"conditions": [{"type": "G", "status": "True"}]}},
     {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "False"},
                     {"type": "G", "status": "True"}], "podIPs": [{"ip": "a"}]}),
    ({"status": {"conditions": [{"type": "X", "$patch": "delete"}]}},
     {"conditions": [{"type": "Ready", "status": "False"}], "podIPs": [{"ip": "a"}]}),
    ({"status": {"$setElementOrder/conditions": [{"type": "X"}], "podIPs": None}},
     {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "False"}]}),
    ({"status": {"$patch": "replace", "phase": "Running"}}, {"phase": "Running"}),
])
def test_strategic_merge(patch: dict[str, Any], expected: dict[str, Any]) -> None:
    assert strategic_merge(POD_STATUS, patch, ())["status"] == expected


def test_strategic_merge_replaces_unkeyed_lists_and_unions_finalizers() -> None:
    original = {"metadata": {"finalizers": ["a"]}, "spec": {"readinessGates": [{"c": "1"}]}}
    patch = {"metadata": {"finalizers": ["b"]}, "spec": {"readinessGates": [{"c": "2"}]}}
    assert strategic_merge(original, patch, ()) == {
        "metadata": {"finalizers": ["a", "b"]}, "spec": {"readinessGates": [{"c": "2"}]}}


def test_merge_patch_replaces_lists_and_deletes_nulls() -> None:
    patched = merge_patch(POD_STATUS, {"status": {"conditions": [{"type": "G"}],
                                                  "podIPs": None}})
    assert patched == {"status": {"conditions": [{"type": "G"}]}}


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c~d/e": 1}}
    ops = [{"op": "add", "path": "/a/-", "value": 3},
           {"op": "replace", "path": "/b/c~0d~1e", "value": 2},
           {"op": "copy", "from": "/a/0", "path": "/z"},
           {"op": "move", "from": "/z", "path": "/a/0"},
           {"op": "remove", "path": "/a/1"},
           {"op": "test", "path": "/a", "value": [1, 2, 3]}]
    assert json_patch(doc, ops) == {"a": [1, 2, 3], "b": {"c~d/e": 2}}
    with pytest.raises(ApiError) as info:
        json_patch(doc, [{"op": "test", "path": "/a", "value": []}])
    assert info.value.code == 422


@pytest.mark.parametrize(("containers_ready", "gates", "gate_status", "ready", "reason"), [
    (False, ("g",), None, "False", "ContainersNotReady"),
    (False, ("g",), "True", "False", "ContainersNotReady"),
    (True, ("g",), None, "False", "ReadinessGatesNotReady"),
    (True, ("g",), "False", "False", "ReadinessGatesNotReady"),
    (True, ("g",), "True", "True", None),
    (True, ("g", "h"), "True", "False", "ReadinessGatesNotReady"),
    (True, (), None, "True", None),
])
def test_kubelet_ready_rule(containers_ready: bool, gates: tuple[str, ...],
                            gate_status: str | None, ready: str, reason: str | None) -> None:
    pod = make_pod("p0", {}, "10.0.0.1", containers_ready=containers_ready,
                   readiness_gates=gates)
    if gate_status is not None:
        set_condition(pod, "g", gate_status == "True")
    got = condition(kubelet_sync(pod), "Ready")
    assert got is not None and (got["status"], got.get("reason")) == (ready, reason)


@pytest.mark.parametrize(("pod_ready", "deleting", "publish", "conditions"), [
    (True, False, False, {"ready": True, "serving": True, "terminating": False}),
    (False, False, False, {"ready": False, "serving": False, "terminating": False}),
    (True, True, False, {"ready": False, "serving": True, "terminating": True}),
    (False, False, True, {"ready": True, "serving": False, "terminating": False}),
])
def test_endpoint_conditions(pod_ready: bool, deleting: bool, publish: bool,
                             conditions: dict[str, bool]) -> None:
    pod = make_pod("p0", {"app": "v"}, "10.0.0.1", containers_ready=pod_ready,
                   readiness_gates=())
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    service = {"metadata": {"name": "v", "namespace": "default", "uid": "u"},
               "spec": {"selector": {"app": "v"}, "ports": [{"port": 80}],
                        "publishNotReadyAddresses": publish}}
    [slice_] = desired_slices(service, [pod], 100)
    assert slice_["endpoints"][0]["conditions"] == conditions


@pytest.mark.parametrize(("text", "ok"), [
    ("2026-05-01T10:00:00Z", True),
    ("2026-05-01T10:00:00.123456789Z", True),
    ("2026-05-01T12:00:00+02:00", True),
    ("2026-05-01T10:00:00", False),
    ("2026-05-01 10:00:00Z", False),
])
def test_times_need_a_zone(text: str, ok: bool) -> None:
    if ok:
        assert parse_time(text, LEASES, "spec.renewTime").utcoffset() is not None
    else:
        with pytest.raises(ApiError):
            parse_time(text, LEASES, "spec.renewTime")
