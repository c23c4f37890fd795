"""Static discovery: the replicas named in the config file, and those an operator adds or
removes through the admin API. Each change reaches the registry as a delta; a reload of the
file is the difference between the old list and the new one."""

from __future__ import annotations

from collections.abc import Iterable

from warmgw.config import Config, load
from warmgw.core.model import EndpointSpec
from warmgw.core.registry import Registry


class StaticDiscovery:
    def __init__(self, registry: Registry, specs: Iterable[EndpointSpec],
                 source: str | None = None) -> None:
        self.registry = registry
        self.source = source  # the config file, re-read by reload()
        self.specs: dict[str, EndpointSpec] = {s.name: s for s in specs}

    async def start(self) -> None:
        for spec in self.specs.values():
            self.registry.add(spec)

    async def stop(self) -> None:
        return None

    def add(self, spec: EndpointSpec) -> None:
        """A replica added by an operator; ValueError if the name is taken."""
        if spec.name in self.specs:
            raise ValueError(f"a replica named {spec.name!r} exists already")
        self.specs[spec.name] = spec
        self.registry.add(spec)

    def remove(self, name: str) -> None:
        """KeyError if no replica of that name was listed here."""
        del self.specs[name]
        self.registry.remove(name)

    def set(self, specs: Iterable[EndpointSpec]) -> tuple[list[str], list[str]]:
        """Take a whole new list: add what is new or changed, drain what is gone.
        Returns the names added and removed."""
        new = {s.name: s for s in specs}
        added = sorted(set(new) - set(self.specs))
        removed = sorted(set(self.specs) - set(new))
        for name, spec in new.items():
            if self.specs.get(name) != spec:
                self.registry.add(spec)
        for name in removed:
            self.registry.remove(name)
        self.specs = new
        return added, removed

    def reload(self, config: Config) -> tuple[list[str], list[str]]:
        """Apply a re-read config's replica list."""
        return self.set(config.replicas)

    def reload_from_file(self) -> tuple[list[str], list[str]]:
        if not self.source:
            return [], []
        return self.reload(load(self.source))
