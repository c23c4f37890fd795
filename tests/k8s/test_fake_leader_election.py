"""The official client's own leader election (kubernetes 37.0.2) against the fake.

k8s-wire.md reports a defect: "asyncio leader election LeaseLock create passes pretty=True and
fails". It is as described: the call never leaves the client (see the first test).
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.aio import client
from kubernetes.aio.leaderelection import electionconfig, leaderelection
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock
from pydantic import ValidationError

from .fake_apiserver import FakeApiServer

NS = "llm"

def election(api: client.ApiClient, identity: str, started: asyncio.Event
             ) -> leaderelection.LeaderElection:
    async def on_started() -> None:
        started.set()

    async def on_stopped() -> None:
        pass

    lock = LeaseLock("warmgw-leader", NS, identity, api)
    return leaderelection.LeaderElection(electionconfig.Config(
        lock, lease_duration=3, renew_deadline=2, retry_period=1,
        onstarted_leading=on_started, onstopped_leading=on_stopped))


async def test_lease_lock_create_fails_before_reaching_the_server(
        apiserver: FakeApiServer, api: client.ApiClient) -> None:
    """The defect in k8s-wire.md, as it is: LeaseLock.create calls create_namespaced_lease
    with pretty=True, which the client's own argument validation rejects (pretty must be a
    str). The pydantic ValidationError is not an ApiException, so LeaseLock.create does not
    catch it and LeaderElection.run() dies with it on its first try: nothing is POSTed."""
    with pytest.raises(ValidationError, match="pretty"):
        await election(api, "gw-a", asyncio.Event()).run()
    assert [(r.method, r.status) for r in apiserver.requests] == [("GET", 404)]
    assert apiserver.get("leases", NS, "warmgw-leader") is None


@pytest.mark.xfail(raises=ValidationError, strict=True,
                   reason="kubernetes 37.0.2 LeaseLock.create passes pretty=True")
async def test_lease_lock_creates_a_missing_lease(apiserver: FakeApiServer,
                                                  api: client.ApiClient) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(election(api, "gw-a", started).run())
    try:
        async with asyncio.timeout(5):
            await asyncio.wait({task, asyncio.create_task(started.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert apiserver.get("leases", NS, "warmgw-leader") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_lease_lock_works_once_the_lease_exists(apiserver: FakeApiServer,
                                                      api: client.ApiClient) -> None:
    """The workaround: create the (empty) Lease yourself; the election then takes it with a
    PUT carrying the resourceVersion."""
    await client.CoordinationV1Api(api).create_namespaced_lease(
        NS, client.V1Lease(metadata=client.V1ObjectMeta(name="warmgw-leader"),
                           spec=client.V1LeaseSpec()))
    started = asyncio.Event()
    task = asyncio.create_task(election(api, "gw-a", started).run())
    try:
        async with asyncio.timeout(5):
            await started.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lease = apiserver.get("leases", NS, "warmgw-leader")
    assert lease is not None and lease["spec"]["holderIdentity"] == "gw-a"
    assert lease["spec"]["leaseDurationSeconds"] == 3
    [put] = apiserver.calls("PUT")
    assert put.body["metadata"]["resourceVersion"]
