"""The traffic policy in one ConfigMap that every gateway replica watches, so a cutover
through any replica reaches all; a write is a compare-and-swap on its resourceVersion."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from warmgw.core.bluegreen import PolicyState
from warmgw.discovery.kwatch import Watcher
from warmgw.policy import codec
from warmgw.policy.stores import PolicyConflict

log = logging.getLogger("warmgw.policy")

KEY = "policy.json"


class ConfigMapStore:
    def __init__(self, api: client.ApiClient | Callable[[], client.ApiClient],
                 namespace: str, name: str, watch_timeout: int = 300) -> None:
        """api: the client, or a function that returns it, called on first use (the store
        can then be built before the client is)."""
        self._api = api
        self._core: client.CoreV1Api | None = None
        self.ns = namespace
        self.name = name
        self.watch_timeout = watch_timeout
        self.rv: str | None = None
        self.text: str | None = None  # what we last read or wrote
        self._task: asyncio.Task[None] | None = None

    @property
    def core(self) -> client.CoreV1Api:
        if self._core is None:
            api = self._api if isinstance(self._api, client.ApiClient) else self._api()
            self._core = client.CoreV1Api(api)
        return self._core

    @property
    def where(self) -> str:
        return f"ConfigMap {self.ns}/{self.name}"

    async def load(self) -> PolicyState | None:
        try:
            cm = await self.core.read_namespaced_config_map(self.name, self.ns)
        except ApiException as e:
            if e.status == 404:
                self.rv = None
                return None
            raise
        self.rv = cm.metadata.resource_version if cm.metadata else None
        text = (cm.data or {}).get(KEY)
        self.text = text
        return codec.decode(text, self.where) if text else None

    async def save(self, policy: PolicyState) -> None:
        text = codec.encode(policy)
        if text == self.text:
            return
        meta = client.V1ObjectMeta(
            name=self.name, namespace=self.ns, resource_version=self.rv,
            labels={"app.kubernetes.io/managed-by": "warmgw", "warmgw.io/policy": self.name},
        )
        body = client.V1ConfigMap(metadata=meta, data={KEY: text})
        try:
            if self.rv is None:
                cm = await self.core.create_namespaced_config_map(self.ns, body)
            else:
                cm = await self.core.replace_namespaced_config_map(self.name, self.ns, body)
        except ApiException as e:
            if e.status == 409:
                raise PolicyConflict(f"{self.where} changed meanwhile") from None
            raise
        self.rv = cm.metadata.resource_version if cm.metadata else None
        self.text = text

    async def start(self, apply: Callable[[PolicyState], None]) -> None:
        def changed(objects: dict[str, dict[str, Any] | None]) -> None:
            obj = objects.get(self.name)
            if obj is None:
                return
            text = (obj.get("data") or {}).get(KEY)
            rv = obj["metadata"].get("resourceVersion")
            if not text or text == self.text:
                self.rv = rv or self.rv
                return
            try:
                policy = codec.decode(text, self.where)
            except codec.PolicyReadError as e:
                log.error("%s; ignored", e)
                return
            self.rv, self.text = rv, text
            log.info("policy changed in %s: active %s", self.where, policy.active)
            apply(policy)

        watcher = Watcher(
            f"policy {self.where}", self.core.list_namespaced_config_map_without_preload_content,
            changed, watch_timeout=self.watch_timeout, namespace=self.ns,
            field_selector=f"metadata.name={self.name}",  # RBAC resourceNames allow this
        )
        self._task = asyncio.create_task(watcher.run(), name="warmgw-policy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
