"""The keeper of the traffic policy: stores every change BlueGreen makes (a background
writer, retried while the store cannot be reached), takes a change another gateway replica
stored, and gives the admin calls one compare-and-swap to find out who switched first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from warmgw.core.bluegreen import BlueGreen, PolicyState
from warmgw.policy.stores import STORE_ERRORS, PolicyConflict, PolicyStore

log = logging.getLogger("warmgw")

Core = tuple[object, ...]


def core_of(p: PolicyState) -> Core:
    """What a cutover decides: the active pool, the previous one and the shares."""
    return (p.active, p.previous, tuple(sorted(p.shares.items())))


class PolicyKeeper:
    """Owns the store and the writer task: `start()` restores the saved policy and follows
    the store, `stop()` ends both. Wire `changed` as the BlueGreen's on_change."""

    def __init__(
        self,
        bluegreen: BlueGreen,
        store: PolicyStore,
        retry_delay: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bluegreen = bluegreen
        self.store = store
        self.retry_delay = retry_delay  # s between attempts while storing fails
        self._sleep = sleep
        self._last_shares = ""
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self.follows = 0  # policies taken from the store (another replica's), so far

    async def start(self) -> None:
        saved = await self.store.load()
        if saved is not None:
            self.bluegreen.restore(saved)
            log.info("policy restored: active pool %s", saved.active)
        await self.store.start(self._follow)
        self._writer = asyncio.create_task(self._write(), name="warmgw-policy-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.store.stop()

    def changed(self, policy: PolicyState) -> None:
        """BlueGreen changed the policy here: log new shares, and store it (the writer)."""
        shares = ", ".join(f"{p}={s:g}" for p, s in sorted(policy.shares.items()))
        if shares != self._last_shares:
            log.info("traffic policy: active %s, shares %s", policy.active, shares)
            self._last_shares = shares
        self._dirty.set()

    def core(self) -> Core:
        return core_of(self.bluegreen.state())

    async def commit(self, base: Core | None = None, decided: Core | None = None,
                     follows: int | None = None) -> bool:
        """Store the current policy (compare-and-swap on the store's version).

        base: the policy the caller's decision started from; decided: what it decided. A
        conflict with a stored policy that still equals base (or ours) is bookkeeping only
        (drain times) and is retried; anything else means another gateway replica switched
        first: its policy is taken here and False returned. follows: `self.follows` when the
        decision began; a policy taken from another replica since then came first (even one
        that switched to the same pool), so this decision is refused."""
        async with self._lock:
            if decided is not None and self.core() != decided:
                return False  # a stored change from elsewhere was applied meanwhile
            if follows is not None and follows != self.follows:
                return False
            for _ in range(5):
                mine = self.bluegreen.state()
                try:
                    await self.store.save(mine)
                    return True
                except STORE_ERRORS as e:  # applied here; the writer keeps trying
                    log.error("policy applied but not stored yet (%s); retrying", e)
                    self._dirty.set()
                    return True
                except PolicyConflict:
                    remote = await self.store.load()
                    if remote is None or core_of(remote) == (base or core_of(mine)):
                        continue  # only bookkeeping changed there: write ours again
                    self.follows += 1
                    self.bluegreen.restore(remote, follow=True)
                    return False
            return False

    def _follow(self, policy: PolicyState) -> None:
        """Another gateway replica changed the stored policy: take it."""
        self.follows += 1
        self.bluegreen.restore(policy, follow=True)

    async def _write(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self.commit():
                log.warning("policy changed elsewhere meanwhile; took the stored one")
            if self._dirty.is_set():
                await self._sleep(self.retry_delay)  # storing failed: not in a tight loop
