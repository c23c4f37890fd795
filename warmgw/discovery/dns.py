"""DNS discovery: the A, AAAA or SRV records of a name, resolved again every `interval` s
with aiodns (c-ares: asynchronous, on the event loop, never blocking it; SRV needs it, the
loop's getaddrinfo knows only addresses).

- A/AAAA: each address is a replica `addr:port` (`[addr]:port` for IPv6) on the
  configured port. SRV: each target:port is a replica named so, reached at the target's
  address (its A records, else AAAA, from the same resolver). SRV priority and weight are
  not used: the gateway weighs replicas by what it measures.
- Each lookup's answer is compared with the last: a new record is a registry.add, one gone
  from the answer a registry.remove (it drains). A name that does not exist (NXDOMAIN) or
  has no such records is an empty answer.
- A failed lookup (timeout, SERVFAIL, refused, no nameserver) keeps the last known set: an
  outage of DNS never empties the fleet. Logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiodns
from aiodns.error import ARES_ENODATA, ARES_ENOTFOUND, DNSError

from warmgw.core.model import EndpointSpec
from warmgw.core.registry import Registry
from warmgw.discovery.params import DnsParams

log = logging.getLogger("warmgw.dns")

_EMPTY = (ARES_ENODATA, ARES_ENOTFOUND)  # an answer with nothing in it, not a failure
_TYPES = {"A": 1, "AAAA": 28, "SRV": 33}


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsDiscovery:
    def __init__(self, registry: Registry, params: DnsParams) -> None:
        assert params.name is not None
        self.registry = registry
        self.params = params
        self.name: str = params.name
        self.known: dict[str, EndpointSpec] = {}
        self.lookups = 0  # answered lookups (empty ones too), for tests and logs
        self.failures = 0
        self.failing = False
        self.resolver: aiodns.DNSResolver | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        p = self.params
        self.resolver = aiodns.DNSResolver(
            nameservers=[p.nameserver] if p.nameserver else None, timeout=p.timeout, tries=2)
        self._task = asyncio.create_task(self._run(), name="warmgw-dns")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.resolver is not None:
            await self.resolver.close()
            self.resolver = None

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.params.interval)

    async def refresh(self) -> None:
        """One lookup, and the deltas from the last answer."""
        p = self.params
        try:
            async with asyncio.timeout(p.timeout * 3):
                found = await (self._srv() if p.type == "SRV" else self._addresses())
        except asyncio.CancelledError:
            raise
        except (DNSError, OSError, TimeoutError) as e:
            self.failures += 1
            if not self.failing:
                self.failing = True
                log.warning("dns %s %s: lookup failed (%s); keeping the last %d known",
                            p.type, self.name, _why(e), len(self.known))
            return
        self.lookups += 1
        if self.failing:
            self.failing = False
            log.info("dns %s %s: resolves again (%d records)", p.type, self.name, len(found))
        self._apply(found)

    def _apply(self, found: dict[str, EndpointSpec]) -> None:
        for name, spec in found.items():
            if self.known.get(name) != spec:
                self.registry.add(spec)
        for name in self.known.keys() - found.keys():
            self.registry.remove(name)
        self.known = found

    async def _query(self, name: str, qtype: str) -> list[Any]:
        """The records of that type in the answer ([] for NXDOMAIN or none)."""
        assert self.resolver is not None
        try:
            res = await self.resolver.query_dns(name, qtype)
        except DNSError as e:
            if e.args and e.args[0] in _EMPTY:
                return []
            raise
        return [r.data for r in res.answer if r.type == _TYPES[qtype]]

    def _spec(self, name: str, address: str, port: int) -> EndpointSpec:
        p = self.params
        return EndpointSpec(name, f"http://{host_port(address, port)}", p.pool, p.model)

    async def _addresses(self) -> dict[str, EndpointSpec]:
        port = self.params.port
        addrs = [d.addr for d in await self._query(self.name, self.params.type)]
        return {host_port(a, port): self._spec(host_port(a, port), a, port) for a in addrs}

    async def _srv(self) -> dict[str, EndpointSpec]:
        found: dict[str, EndpointSpec] = {}
        for rec in await self._query(self.name, "SRV"):
            target = str(rec.target).rstrip(".")
            name = host_port(target, int(rec.port))
            try:
                addrs = [d.addr for d in await self._query(target, "A")]
                addrs = addrs or [d.addr for d in await self._query(target, "AAAA")]
            except DNSError as e:
                if name in self.known:  # this target's lookup failed: keep what it was
                    found[name] = self.known[name]
                log.info("dns SRV %s: target %s not resolved (%s)", self.name, target, _why(e))
                continue
            if addrs:
                found[name] = self._spec(name, sorted(addrs)[0], int(rec.port))
        return found


def _why(e: BaseException) -> str:
    if isinstance(e, DNSError) and len(e.args) > 1:
        return str(e.args[1])
    return str(e) or type(e).__name__
