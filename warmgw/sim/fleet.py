"""SimFleet: several simulated replicas in one event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Sequence

from warmgw.sim.model import SimConfig
from warmgw.sim.server import SimReplica


class SimFleet:
    """N replicas named ``{name_prefix}{i}``.

    With one SimConfig, replica i gets that config with ``seed + i``; with a sequence of
    configs, replica i gets ``configs[i]`` unchanged. Addresses: by default every replica
    listens on ``host`` at ``base_port + i`` (base_port 0: each picks a free port). With
    ``distinct_hosts`` replica i listens on the i-th address after ``host`` (127.0.0.1,
    127.0.0.2, ...) and all share one port (``base_port``, or the port the first one got).
    """

    def __init__(
        self,
        config: SimConfig | Sequence[SimConfig] | None = None,
        replicas: int | None = None,
        *,
        host: str = "127.0.0.1",
        base_port: int = 0,
        distinct_hosts: bool = False,
        name_prefix: str = "r",
    ) -> None:
        if config is None:
            config = SimConfig()
        if isinstance(config, SimConfig):
            count = 1 if replicas is None else replicas
            configs = [dataclasses.replace(config, seed=config.seed + i) for i in range(count)]
        else:
            configs = list(config)
            if replicas is not None and replicas != len(configs):
                raise ValueError(f"replicas={replicas} but {len(configs)} configs given")
        if not configs:
            raise ValueError(f"SimFleet needs at least one replica, got replicas={replicas!r}")
        if not 0 <= base_port <= 65535:
            raise ValueError(f"base_port must be in [0, 65535], got {base_port!r}")
        self.host = host
        self.base_port = base_port
        self.distinct_hosts = distinct_hosts
        self.replicas = [SimReplica(c, f"{name_prefix}{i}") for i, c in enumerate(configs)]
        for r in self.replicas:
            r.siblings = [s for s in self.replicas if s is not r]
        if distinct_hosts:
            first = ipaddress.ip_address(host)  # ValueError for a host name
            self._hosts = [str(first + i) for i in range(len(configs))]
        else:
            self._hosts = [host] * len(configs)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    async def start(self) -> None:
        port = self.base_port
        try:
            for i, (replica, host) in enumerate(zip(self.replicas, self._hosts, strict=True)):
                if self.distinct_hosts:
                    await replica.start(host, port)
                    port = replica.port
                else:
                    await replica.start(host, self.base_port + i if self.base_port else 0)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for replica in self.replicas:
            await replica.stop()

    async def drain(self, timeout: float) -> int:
        """Every replica drains at once (SimReplica.drain); how many requests were cut."""
        cuts = await asyncio.gather(*(r.drain(timeout) for r in self.replicas))
        return sum(cuts)

    async def wait_loaded(self) -> None:
        """Wait until every replica is loaded and listening (wrap in asyncio.timeout)."""
        for replica in self.replicas:
            await replica.wait_loaded()

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
