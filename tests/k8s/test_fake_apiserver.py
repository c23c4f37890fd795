"""The fake API server against the official client (`kubernetes.aio`), over real sockets.

These tests also pin down how the client surfaces each situation, for the gateway's code:
- a watch from a compacted rv: `ApiException` (the base class) with status 410 and reason
  "Expired: too old resource version: N (M)"; without timeout_seconds the client first
  retries the same rv once by itself, so it costs two requests;
- BOOKMARK events: `object` and `raw_object` are the same raw dict; Watch.resource_version
  follows them;
- timeout_seconds: the iteration simply ends; without it the client re-watches from its
  last rv when the server ends the stream;
- an outage: an open watch raises aiohttp.ClientPayloadError, new requests raise
  aiohttp.ClientConnectorError (an OSError), never ApiException.
The client's own leader election is in test_fake_leader_election.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from kubernetes.aio import client, watch
from kubernetes.aio.client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    UnauthorizedException,
)

from .fake_apiserver import FakeApiServer, make_pod
from .fake_patch import MERGE, STRATEGIC
from .kube_helpers import open_api_client, raw_session, summary, watch_events

NS = "llm"
GATE = "warmgw.io/warmed"
KUBELET = {"PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady",
           "Ready"}


def conditions(pod: client.V1Pod | dict) -> dict[str, str]:
    if isinstance(pod, dict):
        return {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    return {c.type: c.status for c in pod.status.conditions or []}


def gate_patch(status: str) -> dict:
    return {"status": {"conditions": [{
        "type": GATE, "status": status, "reason": "Warmed", "message": "warmup done",
        "lastTransitionTime": datetime.now(UTC).isoformat()}]}}


# --- auth, LIST, errors ------------------------------------------------------------------

async def test_bearer_token_is_required(apiserver: FakeApiServer, tmp_path: Path) -> None:
    bad = apiserver.write_kubeconfig(tmp_path / "bad", token="wrong")
    async with open_api_client(bad) as api:
        with pytest.raises(UnauthorizedException) as info:
            await client.CoreV1Api(api).list_namespaced_pod(NS)
    assert info.value.status == 401
    assert json.loads(info.value.body)["reason"] == "Unauthorized"
    assert apiserver.requests[-1].status == 401


async def test_list_items_carry_no_kind_but_single_objects_do(
        apiserver: FakeApiServer) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    async with raw_session(apiserver) as http:
        async with http.get(f"/api/v1/namespaces/{NS}/pods",
                            params={"labelSelector": "app=vllm"}) as resp:
            body = await resp.json()
        async with http.get(f"/api/v1/namespaces/{NS}/pods/p0") as resp:
            one = await resp.json()
        async with http.get("/api/v1/namespaces/x/widgets") as resp:
            missing = (resp.status, await resp.json())
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"]["resourceVersion"] == apiserver.resource_version
    assert [set(i) & {"kind", "apiVersion"} for i in body["items"]] == [set()]
    assert (one["kind"], one["apiVersion"]) == ("Pod", "v1")
    assert missing[0] == 404 and missing[1]["reason"] == "NotFound"


@pytest.mark.parametrize(("selector", "names"), [
    ("app=vllm", ["a", "b"]),
    ("app==vllm,tier!=canary", ["a"]),
    ("tier in (canary, beta)", ["b"]),
    ("tier notin (canary)", ["a", "c"]),
    ("tier", ["b"]),
    ("!tier", ["a", "c"]),
])
async def test_list_with_label_selectors(apiserver: FakeApiServer, api: client.ApiClient,
                                         selector: str, names: list[str]) -> None:
    apiserver.add_pod(make_pod("a", {"app": "vllm"}, "10.0.0.1"), NS)
    apiserver.add_pod(make_pod("b", {"app": "vllm", "tier": "canary"}, "10.0.0.2"), NS)
    apiserver.add_pod(make_pod("c", {"app": "other"}, "10.0.0.3"), NS)
    pods = await client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=selector)
    assert [p.metadata.name for p in pods.items] == names


async def test_field_selector_and_pagination(apiserver: FakeApiServer,
                                             api: client.ApiClient) -> None:
    for n in range(5):
        apiserver.add_pod(make_pod(f"p{n}", {"app": "vllm"}, f"10.0.0.{n}"), NS)
    v1 = client.CoreV1Api(api)
    one = await v1.list_namespaced_pod(NS, field_selector="metadata.name=p3")
    assert [p.metadata.name for p in one.items] == ["p3"]
    first = await v1.list_namespaced_pod(NS, limit=2)
    rest = await v1.list_namespaced_pod(NS, limit=10, _continue=first.metadata._continue)
    assert [p.metadata.name for p in first.items + rest.items] == [f"p{n}" for n in range(5)]
    assert first.metadata.remaining_item_count == 3
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_pod(NS, label_selector="app in (")
    assert info.value.status == 400


# --- WATCH -------------------------------------------------------------------------------

async def test_watch_from_list_rv_sees_only_later_changes(apiserver: FakeApiServer,
                                                          api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    listed = await v1.list_namespaced_pod(NS)
    apiserver.set_pod_containers_ready(NS, "p0", True)
    apiserver.add_pod(make_pod("p1", {"app": "vllm"}, "10.0.0.2"), NS)
    events = await watch_events(v1.list_namespaced_pod, NS, count=2,
                                resource_version=listed.metadata.resource_version)
    assert summary(events) == [("MODIFIED", "p0"), ("ADDED", "p1")]
    assert events[0]["object"].status.container_statuses[0].ready is True
    assert events[1]["raw_object"]["kind"] == "Pod"  # watch objects carry kind/apiVersion
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(listed.metadata.resource_version)


@pytest.mark.parametrize("rv", [None, "0"])
async def test_watch_without_rv_starts_with_synthetic_added(
        apiserver: FakeApiServer, api: client.ApiClient, rv: str | None) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    apiserver.add_pod(make_pod("p1", {"app": "vllm"}, "10.0.0.2"), NS)
    apiserver.add_pod(make_pod("x", {"app": "other"}, "10.0.0.3"), NS)
    apiserver.set_pod_containers_ready(NS, "p0", True)
    v1 = client.CoreV1Api(api)
    kwargs = {} if rv is None else {"resource_version": rv}
    task = asyncio.create_task(watch_events(v1.list_namespaced_pod, NS, count=3,
                                            label_selector="app=vllm", **kwargs))
    await apiserver.wait_for_watches(1)
    apiserver.set_pod_containers_ready(NS, "p1", True)
    assert summary(await task) == [("ADDED", "p0"), ("ADDED", "p1"), ("MODIFIED", "p1")]


async def test_label_selector_transitions(apiserver: FakeApiServer,
                                          api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "other"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    apiserver.set_pod_labels(NS, "p0", {"app": "vllm"})  # starts matching
    apiserver.set_pod_labels(NS, "p0", {"app": "vllm", "v": "2"})  # matches both
    left = apiserver.set_pod_labels(NS, "p0", {"app": "gone"})  # stops matching
    events = await watch_events(v1.list_namespaced_pod, NS, count=3, resource_version=rv,
                                label_selector="app=vllm")
    assert summary(events) == [("ADDED", "p0"), ("MODIFIED", "p0"), ("DELETED", "p0")]
    deleted = events[2]["raw_object"]["metadata"]
    assert deleted["labels"] == {"app": "vllm", "v": "2"}  # the previous object...
    assert deleted["resourceVersion"] == left["metadata"]["resourceVersion"]  # ...at the new rv


async def test_watch_from_compacted_rv_is_an_error_event_on_http_200(
        apiserver: FakeApiServer) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    old = int(apiserver.resource_version) - 1
    apiserver.compact()
    async with raw_session(apiserver) as http:
        async with http.get(f"/api/v1/namespaces/{NS}/pods",
                            params={"watch": "TRUE", "resourceVersion": str(old)}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["Transfer-Encoding"] == "chunked"
            lines = (await resp.read()).decode().splitlines()  # then the stream closes
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert {k: event["object"][k] for k in ("kind", "reason", "code")} == {
        "kind": "Status", "reason": "Expired", "code": 410}
    assert event["object"]["message"] == (
        f"too old resource version: {old} ({apiserver.resource_version})")


@pytest.mark.parametrize(("kwargs", "attempts"), [({"timeout_seconds": 5}, 1), ({}, 2)])
async def test_client_raises_api_exception_410_on_compacted_rv(
        apiserver: FakeApiServer, api: client.ApiClient, kwargs: dict, attempts: int) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    apiserver.set_pod_containers_ready(NS, "p0", True)
    apiserver.compact()
    apiserver.clear_requests()
    with pytest.raises(ApiException) as info:
        await watch_events(v1.list_namespaced_pod, NS, count=1, resource_version=rv, **kwargs)
    assert type(info.value) is ApiException  # not a subclass: test .status == 410
    assert info.value.status == 410
    assert info.value.reason.startswith(f"Expired: too old resource version: {rv} (")
    # Without timeout_seconds the client retries the same rv once before raising.
    assert [r.query["resourceVersion"] for r in apiserver.requests] == [rv] * attempts
    # The cure: list again, then watch from the new rv.
    relisted = await v1.list_namespaced_pod(NS)
    task = asyncio.create_task(watch_events(v1.list_namespaced_pod, NS, count=1,
                                            resource_version=relisted.metadata.resource_version))
    await apiserver.wait_for_watches(1)
    apiserver.bump_restart_count(NS, "p0")
    assert summary(await task) == [("MODIFIED", "p0")]


async def test_history_limit_expires_old_rvs(tmp_path: Path) -> None:
    async with FakeApiServer(history_limit=2) as server:
        server.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
        start = server.resource_version
        for ready in (True, False, True):
            server.set_pod_containers_ready(NS, "p0", ready)
        async with open_api_client(server.write_kubeconfig(tmp_path / "kc")) as api:
            with pytest.raises(ApiException) as info:
                await watch_events(client.CoreV1Api(api).list_namespaced_pod, NS, count=1,
                                   resource_version=start, timeout_seconds=2)
    assert info.value.status == 410


async def test_bookmarks_on_demand_are_raw_dicts(apiserver: FakeApiServer,
                                                 api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    rv = (await v1.list_namespaced_pod(NS)).metadata.resource_version
    async with watch.Watch() as w, asyncio.timeout(5):
        stream = w.stream(v1.list_namespaced_pod, NS, resource_version=rv,
                          allow_watch_bookmarks=True, label_selector="app=none")
        pending = asyncio.ensure_future(stream.__anext__())
        await apiserver.wait_for_watches(1)
        apiserver.set_pod_containers_ready(NS, "p0", True)  # filtered out by the selector
        apiserver.send_bookmarks()
        event = await pending
        assert event["type"] == "BOOKMARK"
        assert isinstance(event["object"], dict) and event["object"] is event["raw_object"]
        assert event["object"] == {"kind": "Pod", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": apiserver.resource_version}}
        assert w.resource_version == apiserver.resource_version  # the client moved on


async def test_periodic_bookmarks(tmp_path: Path) -> None:
    async with FakeApiServer(bookmark_interval=0.1) as server:
        async with open_api_client(server.write_kubeconfig(tmp_path / "kc")) as api:
            v1 = client.CoreV1Api(api)
            events = await watch_events(v1.list_namespaced_pod, NS, count=2, timeout=2,
                                        allow_watch_bookmarks=True)
            plain = await watch_events(v1.list_namespaced_pod, NS, count=1, timeout_seconds=1)
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert plain == []  # no bookmarks unless asked for


async def test_timeout_seconds_ends_the_stream_cleanly(apiserver: FakeApiServer,
                                                       api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await watch_events(client.CoreV1Api(api).list_namespaced_pod, NS, count=99,
                                timeout_seconds=1)
    assert summary(events) == [("ADDED", "p0")]
    assert 0.9 < loop.time() - started < 3


async def test_client_rewatches_from_last_rv_when_server_ends_stream(
        tmp_path: Path) -> None:
    async with FakeApiServer(default_watch_timeout=0.3) as server:
        server.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
        async with open_api_client(server.write_kubeconfig(tmp_path / "kc")) as api:
            v1 = client.CoreV1Api(api)
            task = asyncio.create_task(watch_events(v1.list_namespaced_pod, NS, count=2))
            await server.wait_for_watches(1)
            first_rv = server.resource_version
            path = f"/api/v1/namespaces/{NS}/pods"
            await server.wait_for_calls(2, "GET", path)  # the stream ended; a re-watch
            server.set_pod_containers_ready(NS, "p0", True)
            assert summary(await task) == [("ADDED", "p0"), ("MODIFIED", "p0")]
    watches = server.calls("GET", path)
    assert watches[0].query.get("resourceVersion") is None
    assert watches[1].query["resourceVersion"] == first_rv


# --- pods: readiness gates, deletion, restarts -------------------------------------------

async def test_strategic_merge_keeps_kubelet_conditions_and_ready_follows_gate(
        apiserver: FakeApiServer, api: client.ApiClient) -> None:
    apiserver.add_service(NS, "vllm", {"app": "vllm"}, 8000)
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    warm = apiserver.set_pod_containers_ready(NS, "p0", True)
    assert {k: conditions(warm)[k] for k in ("ContainersReady", "Ready")} == {
        "ContainersReady": "True", "Ready": "False"}  # the cue to warm it
    rv = warm["metadata"]["resourceVersion"]

    cold = await v1.patch_namespaced_pod_status("p0", NS, gate_patch("False"),
                                                _content_type=STRATEGIC)
    assert conditions(cold)[GATE] == "False" and conditions(cold)["Ready"] == "False"
    patched = await v1.patch_namespaced_pod_status("p0", NS, gate_patch("True"),
                                                   _content_type=STRATEGIC)
    assert set(conditions(patched)) == KUBELET | {GATE}  # merged by type: nothing lost
    assert conditions(patched)["Ready"] == "False"  # the PATCH's own write; kubelet follows
    assert conditions(await v1.read_namespaced_pod("p0", NS))["Ready"] == "True"

    # Each PATCH is one write; the kubelet's Ready follows in a write of its own (the first
    # one only rewrites Ready's message: the gate condition now exists but is False).
    events = await watch_events(v1.list_namespaced_pod, NS, count=4, resource_version=rv)
    assert [(conditions(e["raw_object"])[GATE], conditions(e["raw_object"])["Ready"])
            for e in events] == [("False", "False"), ("False", "False"), ("True", "False"),
                                 ("True", "True")]
    [eps] = apiserver.endpoint_slices(NS, "vllm")
    assert eps["endpoints"][0]["conditions"] == {"ready": True, "serving": True,
                                                 "terminating": False}
    assert len(apiserver.calls("PATCH", content_type=STRATEGIC)) == 2
    assert apiserver.calls("PATCH", content_type=MERGE) == []


async def test_merge_patch_wipes_the_kubelets_conditions(apiserver: FakeApiServer,
                                                         api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1", containers_ready=True), NS)
    v1 = client.CoreV1Api(api)
    wiped = await v1.patch_namespaced_pod_status("p0", NS, gate_patch("True"),
                                                 _content_type=MERGE)
    assert list(conditions(wiped)) == [GATE]  # the whole list replaced
    # The fake kubelet then writes back the conditions it owns; the scheduler's is lost.
    after = await v1.read_namespaced_pod("p0", NS)
    assert "PodScheduled" not in conditions(after) and conditions(after)["Ready"] == "True"


async def test_patch_content_types(apiserver: FakeApiServer, api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_pod_status("p0", NS, {"status": {}},
                                             _content_type="application/apply-patch+yaml")
    assert info.value.status == 415
    assert json.loads(info.value.body)["reason"] == "UnsupportedMediaType"
    # A dict body without _content_type is sent as strategic merge by the client itself.
    await v1.patch_namespaced_pod_status("p0", NS, gate_patch("True"))
    assert apiserver.requests[-1].content_type == STRATEGIC
    # JSON patch (a list body) is supported.
    pod = await v1.patch_namespaced_pod(
        "p0", NS, [{"op": "add", "path": "/metadata/labels/tier", "value": "canary"}],
        _content_type="application/json-patch+json")
    assert pod.metadata.labels == {"app": "vllm", "tier": "canary"}
    with pytest.raises(ApiException) as info:
        await v1.patch_namespaced_pod_status("p0", NS, {"status": {"conditions": [
            {"type": GATE, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00"}]}})
    assert info.value.status == 400  # a time without a zone does not decode


async def test_graceful_delete_and_endpoint_slice_conditions(
        apiserver: FakeApiServer, api: client.ApiClient) -> None:
    apiserver.add_service(NS, "vllm", {"app": "vllm"}, 8000)
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1", containers_ready=True,
                               readiness_gates=()), NS)
    v1 = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    first = await v1.delete_namespaced_pod("p0", NS)
    assert first.metadata.deletion_timestamp is not None
    assert first.metadata.deletion_grace_period_seconds == 30
    slices = await discovery.list_namespaced_endpoint_slice(
        NS, label_selector="kubernetes.io/service-name=vllm")
    [slice_] = slices.items
    assert slice_.metadata.labels["endpointslice.kubernetes.io/managed-by"] == (
        "endpointslice-controller.k8s.io")
    assert slice_.endpoints[0].conditions.to_dict() == {
        "ready": False, "serving": True, "terminating": True}
    rv = slices.metadata.resource_version
    await v1.delete_namespaced_pod("p0", NS)  # the second call really removes it
    with pytest.raises(NotFoundException):
        await v1.read_namespaced_pod("p0", NS)
    events = await watch_events(discovery.list_namespaced_endpoint_slice, NS, count=1,
                                resource_version=rv)
    assert events[0]["type"] == "MODIFIED"
    assert events[0]["raw_object"]["endpoints"] is None  # an empty slice: null on the wire


async def test_slices_split_at_max_endpoints(tmp_path: Path) -> None:
    async with FakeApiServer(max_endpoints_per_slice=2) as server:
        server.add_service(NS, "vllm", {"app": "vllm"}, 80, target_port=8000)
        for n in range(5):
            server.add_pod(make_pod(f"p{n}", {"app": "vllm"}, f"10.0.0.{n}"), NS)
        async with open_api_client(server.write_kubeconfig(tmp_path / "kc")) as api:
            slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
                NS, label_selector="kubernetes.io/service-name=vllm")
    assert sorted(len(s.endpoints) for s in slices.items) == [1, 2, 2]
    assert {s.ports[0].port for s in slices.items} == {8000}
    assert all(e.conditions.serving is False for s in slices.items for e in s.endpoints)


async def test_restart_keeps_the_gate_but_drops_ready(apiserver: FakeApiServer,
                                                      api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1", containers_ready=True), NS)
    apiserver.set_pod_condition(NS, "p0", GATE, True, "Warmed")
    assert conditions(apiserver.get("pods", NS, "p0"))["Ready"] == "True"
    apiserver.bump_restart_count(NS, "p0")
    pod = await client.CoreV1Api(api).read_namespaced_pod("p0", NS)
    assert pod.status.container_statuses[0].restart_count == 1
    assert pod.status.container_statuses[0].last_state.terminated.exit_code == 137
    assert conditions(pod)[GATE] == "True"  # stale: the gateway must reset it
    assert conditions(pod)["Ready"] == "False"


# --- Leases and ConfigMaps ---------------------------------------------------------------

async def test_lease_get_create_conflict_update(apiserver: FakeApiServer,
                                                api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    with pytest.raises(NotFoundException) as info:
        await coord.read_namespaced_lease("warmgw", NS)
    assert json.loads(info.value.body)["details"] == {
        "name": "warmgw", "group": "coordination.k8s.io", "kind": "leases"}
    t0 = datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="warmgw"), spec=client.V1LeaseSpec(
        holder_identity="gw-a", lease_duration_seconds=15, acquire_time=t0, renew_time=t0,
        lease_transitions=0))
    created = await coord.create_namespaced_lease(NS, lease)
    raw = apiserver.get("leases", NS, "warmgw")
    assert raw is not None and raw["spec"]["renewTime"] == "2026-05-01T10:00:00.123456Z"
    with pytest.raises(ConflictException) as info:
        await coord.create_namespaced_lease(NS, lease)
    assert json.loads(info.value.body)["reason"] == "AlreadyExists"

    created.spec.renew_time = datetime(2026, 5, 1, 10, 0, 5, tzinfo=UTC)
    renewed = await coord.replace_namespaced_lease("warmgw", NS, created)
    assert renewed.metadata.resource_version != created.metadata.resource_version
    created.spec.holder_identity = "gw-b"  # still at the old rv
    with pytest.raises(ConflictException) as info:
        await coord.replace_namespaced_lease("warmgw", NS, created)
    assert json.loads(info.value.body)["reason"] == "Conflict"
    created.metadata.resource_version = None
    with pytest.raises(ApiException) as info:
        await coord.replace_namespaced_lease("warmgw", NS, created)
    assert info.value.status == 422  # a Lease update must name its resourceVersion
    assert (await coord.read_namespaced_lease("warmgw", NS)).spec.holder_identity == "gw-a"


async def test_configmap_crud_and_watch(apiserver: FakeApiServer,
                                        api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="policy"),
                            data={"mode": "blue"})
    created = await v1.create_namespaced_config_map(NS, cm)
    with pytest.raises(ConflictException):
        await v1.create_namespaced_config_map(NS, cm)
    task = asyncio.create_task(watch_events(
        v1.list_namespaced_config_map, NS, count=3, field_selector="metadata.name=policy"))
    await apiserver.wait_for_watches(1, "configmaps")
    created.data = {"mode": "green"}
    updated = await v1.replace_namespaced_config_map("policy", NS, created)
    with pytest.raises(ConflictException):  # created still holds the old rv
        await v1.replace_namespaced_config_map("policy", NS, created)
    await v1.patch_namespaced_config_map("policy", NS, {"data": {"weight": "0.5"}})
    events = await task
    assert [(e["type"], e["object"].data) for e in events] == [
        ("ADDED", {"mode": "blue"}), ("MODIFIED", {"mode": "green"}),
        ("MODIFIED", {"mode": "green", "weight": "0.5"})]
    assert events[1]["object"].metadata.resource_version == updated.metadata.resource_version


# --- outage and recording ----------------------------------------------------------------

async def test_outage_refuses_connections_and_drops_watches(apiserver: FakeApiServer,
                                                            api: client.ApiClient) -> None:
    apiserver.add_pod(make_pod("p0", {"app": "vllm"}, "10.0.0.1"), NS)
    v1 = client.CoreV1Api(api)
    task = asyncio.create_task(watch_events(v1.list_namespaced_pod, NS, count=99))
    await apiserver.wait_for_watches(1)
    port = apiserver.port
    await apiserver.stop_listening()
    with pytest.raises(aiohttp.ClientPayloadError):  # the open watch breaks off
        await task
    with pytest.raises(aiohttp.ClientConnectorError):  # new connections are refused
        await v1.list_namespaced_pod(NS)
    apiserver.set_pod_containers_ready(NS, "p0", True)  # the cluster goes on meanwhile
    await apiserver.resume_listening()
    assert apiserver.port == port
    pods = await v1.list_namespaced_pod(NS)
    assert pods.items[0].status.container_statuses[0].ready is True


async def test_requests_are_recorded(apiserver: FakeApiServer, api: client.ApiClient) -> None:
    for n in range(3):
        apiserver.add_pod(make_pod(f"p{n}", {"app": "vllm"}, f"10.0.0.{n}",
                                   containers_ready=True), NS)
    v1 = client.CoreV1Api(api)
    for n in range(3):
        await v1.patch_namespaced_pod_status(f"p{n}", NS, gate_patch("True"),
                                             _content_type=STRATEGIC)
    patches = apiserver.calls("PATCH")
    assert sorted(r.path for r in patches) == [
        f"/api/v1/namespaces/{NS}/pods/p{n}/status" for n in range(3)]
    assert {r.content_type for r in patches} == {STRATEGIC}
    assert patches[0].body["status"]["conditions"][0]["type"] == GATE
    assert all(r.status == 200 for r in patches)


async def test_custom_resources_inferencepool_and_httproute(apiserver: FakeApiServer) -> None:
    """CRDs: validated by their schema (422), merge patch yes, strategic merge no (415)."""
    pools = "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools"
    routes = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"
    apiserver.put_inference_pool("default", "p", {"app": "x"}, 8000)
    apiserver.put_http_route("default", "r", "gw", {"p": 100, "q": 0})
    async with raw_session(apiserver) as http:
        async with http.get(pools, params={"fieldSelector": "metadata.name=p"}) as r:
            body = await r.json()
            assert body["kind"] == "InferencePoolList"
            assert body["apiVersion"] == "inference.networking.k8s.io/v1"
            assert [i["spec"]["targetPorts"] for i in body["items"]] == [[{"number": 8000}]]
        bad = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
               "metadata": {"name": "bad"},
               "spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}}
        async with http.post(pools, json=bad) as r:
            assert r.status == 422 and (await r.json())["reason"] == "Invalid"
        patch = {"spec": {"rules": [{"backendRefs": [{"name": "q", "weight": 100}]}]}}
        async with http.patch(routes + "/r", data=json.dumps(patch),
                              headers={"Content-Type": STRATEGIC}) as r:
            assert r.status == 415
        async with http.patch(routes + "/r", data=json.dumps(patch),
                              headers={"Content-Type": MERGE}) as r:
            assert r.status == 200
            assert (await r.json())["spec"]["rules"][0]["backendRefs"] == [
                {"name": "q", "weight": 100}]  # a merge patch replaces lists whole
        bad_weight = {"spec": {"rules": [{"backendRefs": [{"name": "q", "weight": -1}]}]}}
        async with http.patch(routes + "/r", data=json.dumps(bad_weight),
                              headers={"Content-Type": MERGE}) as r:
            assert r.status == 422
