"""The traffic policy kept: one codec (versioned, checked on the way in), the state file
(atomic writes, a clear error on a file it cannot read), the ConfigMap store, and the
keeper's compare-and-swap and background writer against a store that conflicts or fails."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes.aio import client

from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.kube_helpers import open_api_client
from warmgw.core.bluegreen import (
    BlueGreen,
    CutoverParams,
    CutoverRecord,
    CutoverRequest,
    PolicyState,
)
from warmgw.core.clock import FakeClock
from warmgw.core.model import EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.policy import codec
from warmgw.policy.codec import PolicyReadError
from warmgw.policy.configmap import KEY, ConfigMapStore
from warmgw.policy.keeper import PolicyKeeper, core_of
from warmgw.policy.stores import FileStore, PolicyConflict

RECORD = CutoverRecord(3, "blue", "green", "gradual", 1000.0, "done", "gradual over 60 s",
                       1060.0, 1061.5, 1.0).as_dict()
POLICY = PolicyState("green", "blue", {"green": 1.0}, [RECORD])


# -- codec ------------------------------------------------------------------------------

def test_codec_round_trip() -> None:
    text = codec.encode(POLICY)
    assert json.loads(text)["version"] == 1
    assert codec.decode(text, "here") == POLICY
    gradual = PolicyState("blue", None, {"blue": 0.75, "green": 0.25}, [])
    assert codec.decode(codec.encode(gradual), "here") == gradual
    # the same policy is the same text: a store skips a write that changes nothing
    assert codec.encode(copy.deepcopy(POLICY)) == text


def stored(**change: object) -> str:
    data = {"version": 1, "active": "blue", "previous": None, "shares": {"blue": 1.0},
            "history": []}
    data.update(change)
    return json.dumps({k: v for k, v in data.items() if v != "-"})


@pytest.mark.parametrize(("text", "problem"), [
    (stored(version=2), "is not a warmgw policy: unknown version 2"),
    (stored(version="-"), "is not a warmgw policy: unknown version None"),
    (stored(active="-"), "is not a warmgw policy: 'active' is missing"),
    (stored(active=""), "is not a warmgw policy: 'active' must be a pool name, got ''"),
    (stored(active=["blue"]), "'active' must be a pool name, got ['blue']"),
    (stored(previous=7), "'previous' must be a pool name or null, got 7"),
    (stored(shares={"blue": "all"}), "'shares' must map pools to numbers"),
    (stored(shares=["blue"]), "'shares' must map pools to numbers"),
    (stored(history={"id": 1}), "'history' must be a list"),
    (stored(history=["x"]), "a 'history' entry must be an object, got 'x'"),
    (stored(history=[{**RECORD, "colour": "red"}]), "unknown field(s) ['colour']"),
    (stored(history=[{"id": 1, "frm": "blue"}]), "misses field(s) ['mode', 'started', 'to']"),
    ('["not", "a", "policy"]', "is not a warmgw policy: expected a JSON object, got list"),
    ('{"version": 1, "active": ', "is unreadable: Expecting value"),
])
def test_codec_rejects_what_it_does_not_understand(text: str, problem: str) -> None:
    with pytest.raises(PolicyReadError) as e:
        codec.decode(text, "ConfigMap ns/policy")
    assert str(e.value).startswith("ConfigMap ns/policy ")
    assert problem in str(e.value)


# -- the state file -----------------------------------------------------------------------

async def test_file_store_round_trip_and_no_file_is_no_policy(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "policy.json"
    store = FileStore(str(path))
    assert await store.load() is None
    await store.save(POLICY)
    assert await FileStore(path).load() == POLICY  # another process, after a restart
    assert os.listdir(path.parent) == ["policy.json"]


async def test_file_store_write_is_atomic(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.json"
    store = FileStore(path)
    await store.save(POLICY)
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await store.save(PolicyState("blue", "green", {"blue": 1.0}, []))
    assert path.read_bytes() == before  # the old policy, whole
    assert os.listdir(tmp_path) == ["policy.json"]  # and no temp file left behind


@pytest.mark.parametrize(("content", "problem"), [
    (b"\x00\xffgarbage{{{", "is unreadable: "),
    (b'{"version": 1, "active": ', "is unreadable: Expecting value"),
    (b'{"version": 7, "active": "blue"}', "is not a warmgw policy: unknown version 7"),
    (None, "is unreadable: [Errno 21] Is a directory"),
])
async def test_file_store_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "policy.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(PolicyReadError) as e:
        await FileStore(path).load()
    assert str(e.value).startswith(f"state file {str(path)!r} {problem}")
    if content is not None:
        assert path.read_bytes() == content  # left as it was, for a human to look at


# -- the ConfigMap --------------------------------------------------------------------------

async def test_configmap_store_takes_its_client_on_first_use(tmp_path: Path) -> None:
    async with FakeApiServer() as server:
        apis: list[client.ApiClient] = []
        calls: list[int] = []

        def api() -> client.ApiClient:
            calls.append(1)
            return apis[0]

        store = ConfigMapStore(api, "ns", "warmgw-policy")  # before the client exists
        assert calls == []
        async with open_api_client(server.write_kubeconfig(tmp_path / "kc")) as a:
            apis.append(a)
            assert await store.load() is None
            await store.save(POLICY)
            other = ConfigMapStore(a, "ns", "warmgw-policy")  # or given the client itself
            assert await other.load() == POLICY
            await other.save(PolicyState("blue", "green", {"blue": 1.0}, []))
            with pytest.raises(PolicyConflict):  # ours was read before that write
                await store.save(PolicyState("red", "green", {"red": 1.0}, []))
            assert calls == [1]

            server.put_configmap("ns", "warmgw-policy", {KEY: stored(version=2)})
            with pytest.raises(PolicyReadError) as e:
                await store.load()
            assert str(e.value) == ("ConfigMap ns/warmgw-policy is not a warmgw policy: "
                                    "unknown version 2")


# -- the keeper -----------------------------------------------------------------------------

class FakeStore:
    """A store with a version, as a ConfigMap's resourceVersion: a save based on an older
    read than the last write is a PolicyConflict. `fail` raises on the next saves."""

    def __init__(self, policy: PolicyState | None = None) -> None:
        self.policy = copy.deepcopy(policy)
        self.version = 0
        self.seen = 0  # the version our last load or save saw
        self.fail: list[Exception] = []
        self.saves = 0
        self.apply: Callable[[PolicyState], None] | None = None
        self.stopped = False

    def write_elsewhere(self, policy: PolicyState) -> None:
        self.policy = copy.deepcopy(policy)
        self.version += 1

    async def load(self) -> PolicyState | None:
        self.seen = self.version
        return copy.deepcopy(self.policy)

    async def save(self, policy: PolicyState) -> None:
        self.saves += 1
        if self.fail:
            raise self.fail.pop(0)
        if self.seen != self.version:
            raise PolicyConflict("changed meanwhile")
        self.write_elsewhere(policy)
        self.seen = self.version

    async def start(self, apply: Callable[[PolicyState], None]) -> None:
        self.apply = apply

    async def stop(self) -> None:
        self.stopped = True


class FakeSleep:
    """asyncio.sleep on a fake clock: the time moves at once, and the delay is recorded."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


class World:
    def __init__(self, store: FakeStore) -> None:
        self.clock = FakeClock()
        self.registry = Registry(LifecycleParams(), self.clock, TrafficPolicy.single("blue"))
        self.registry.sync(EndpointSpec(f"{p}-0", f"http://127.0.0.1:9/{p}", p)
                           for p in ("blue", "green", "red"))
        self.bluegreen = BlueGreen(self.registry, CutoverParams(), self.clock, "blue")
        self.store = store
        self.sleep = FakeSleep(self.clock)
        self.keeper = PolicyKeeper(self.bluegreen, store, sleep=self.sleep)
        self.bluegreen.on_change = self.keeper.changed

    async def cutover(self, to: str) -> bool:
        """What the admin call does: decide, then compare-and-swap."""
        base = self.keeper.core()
        self.bluegreen.cutover(CutoverRequest(to=to, force=True))
        return await self.keeper.commit(base, self.keeper.core())


async def settle(done: Callable[[], bool]) -> None:
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the writer did not get there")


async def test_a_bookkeeping_only_conflict_is_retried_and_ours_written() -> None:
    w = World(FakeStore())
    # another replica stored the same decision (blue active) with other bookkeeping
    w.store.write_elsewhere(PolicyState("blue", None, {"blue": 1.0}, [RECORD]))
    assert await w.cutover("green") is True
    assert w.store.saves == 2  # a conflict, then ours
    assert w.store.policy is not None
    assert core_of(w.store.policy) == ("green", "blue", (("green", 1.0),))
    assert w.store.policy == w.bluegreen.state()


async def test_a_real_conflict_takes_the_stored_policy_and_fails() -> None:
    w = World(FakeStore())
    # another replica switched first, to red
    theirs = PolicyState("red", "blue", {"red": 1.0}, [RECORD])
    w.store.write_elsewhere(theirs)
    assert await w.cutover("green") is False
    assert w.bluegreen.active == "red"  # theirs taken here ...
    assert w.registry.policy.as_dict() == {"red": 1.0}
    assert [r.as_dict() for r in w.bluegreen.history] == [RECORD]
    assert w.store.policy == theirs  # ... and not overwritten
    # a decision that no longer holds when it is committed is not stored at all
    saves = w.store.saves
    assert await w.keeper.commit(decided=("green", "blue", (("green", 1.0),))) is False
    assert w.store.saves == saves


async def test_the_same_switch_taken_from_the_store_meanwhile_wins_over_ours() -> None:
    """Two replicas switch blue -> green at once: the watch brings the other's (equal)
    decision here between ours and its commit. Theirs came first: ours is refused (409),
    though the pool is the same, so that exactly one caller is told it switched."""
    w = World(FakeStore())
    await w.keeper.start()
    assert w.store.apply is not None
    base, follows = w.keeper.core(), w.keeper.follows
    w.bluegreen.cutover(CutoverRequest(to="green", force=True))
    decided = w.keeper.core()
    theirs = PolicyState("green", "blue", {"green": 1.0}, [RECORD])
    w.store.write_elsewhere(theirs)
    w.store.apply(theirs)  # their write, as the watch delivers it
    saves = w.store.saves
    assert await w.keeper.commit(base, decided, follows) is False
    assert w.store.saves == saves and w.store.policy == theirs
    assert w.bluegreen.active == "green"
    # a later decision, begun after that, commits
    base, follows = w.keeper.core(), w.keeper.follows
    w.bluegreen.cutover(CutoverRequest(to="blue", force=True))
    assert await w.keeper.commit(base, w.keeper.core(), follows) is True
    await w.keeper.stop()


async def test_a_store_error_applies_and_the_writer_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World(FakeStore())
    await w.keeper.start()
    try:
        w.store.fail = [OSError("disk full"), TimeoutError("slow")]
        with caplog.at_level(logging.INFO, "warmgw"):
            assert await w.cutover("green") is True  # applied here ...
            assert w.bluegreen.active == "green"
            assert w.store.policy is None  # ... not stored yet
            start = w.clock.now()
            await settle(lambda: w.store.policy is not None)
        assert w.store.policy == w.bluegreen.state()
        assert w.store.saves == 3  # the call, the writer's first try, its retry
        assert w.sleep.delays == [1.0] and w.clock.now() - start == 1.0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == ["policy applied but not stored yet (disk full); retrying",
                          "policy applied but not stored yet (slow); retrying"]
        assert "traffic policy: active green, shares green=1" in caplog.messages
    finally:
        await w.keeper.stop()
    assert w.store.stopped
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "warmgw-policy-writer"]


async def test_the_writer_takes_a_conflicting_stored_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World(FakeStore())
    await w.keeper.start()
    try:
        w.store.write_elsewhere(PolicyState("red", "blue", {"red": 1.0}, []))
        with caplog.at_level(logging.INFO, "warmgw"):
            w.bluegreen.cutover(CutoverRequest(to="green", force=True))  # no commit: the writer
            await settle(lambda: w.bluegreen.active == "red")
        assert "policy changed elsewhere meanwhile; took the stored one" in caplog.messages
        assert w.store.policy is not None and w.store.policy.active == "red"
    finally:
        await w.keeper.stop()


async def test_start_restores_the_saved_policy_and_follows_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = {**RECORD, "outcome": "running", "finished": None}
    w = World(FakeStore(PolicyState("green", None, {"blue": 0.5, "green": 0.5}, [running])))
    with caplog.at_level(logging.INFO, "warmgw"):
        await w.keeper.start()
    try:
        assert "policy restored: active pool green" in caplog.messages
        assert w.registry.policy.as_dict() == {"blue": 0.5, "green": 0.5}
        assert w.bluegreen.history[0].outcome == "interrupted"  # the restart stopped it
        assert w.store.apply is not None
        w.store.apply(PolicyState("red", "green", {"red": 1.0}, [running]))  # a peer's
        assert w.bluegreen.active == "red"
        assert w.bluegreen.history[0].outcome == "running"  # that one drives it
        assert w.store.saves == 0  # taking a stored policy does not write it back
    finally:
        await w.keeper.stop()


def test_changed_logs_the_shares_only_when_they_change(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    w = World(FakeStore())
    with caplog.at_level(logging.INFO, "warmgw"):
        w.keeper.changed(PolicyState("blue", None, {"blue": 0.75, "green": 0.25}, []))
        w.keeper.changed(PolicyState("blue", None, {"blue": 0.75, "green": 0.25}, [RECORD]))
        w.keeper.changed(PolicyState("green", "blue", {"green": 1.0}, [RECORD]))
    assert caplog.messages == ["traffic policy: active blue, shares blue=0.75, green=0.25",
                               "traffic policy: active green, shares green=1"]
