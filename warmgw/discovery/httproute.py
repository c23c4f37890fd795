"""Blue-green across two InferencePools: the HTTPRoute's backend weights
(gateway.networking.k8s.io/v1 HTTPRoute, spec.rules[].backendRefs[].weight).

warmgw is the endpoint picker of one pool; which pool a request reaches is decided before,
by the Gateway implementation (Envoy Gateway, kgateway, Istio, GKE...) from the route. So
this switch is a PATCH of the route, and it takes effect when that implementation has
reconciled it and pushed new configuration to its proxies: seconds, not at once, and not
at one instant for every proxy. Within one pool (pools as a pod label) the cutover is
warmgw's own, and instant.

The PATCH is a JSON merge patch (custom resources take no strategic merge) of the whole
rules list, guarded by metadata.resourceVersion: a route changed by someone else between
the read and the write is read again (409 Conflict), never overwritten.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from warmgw.discovery.kapi import KubeApi

log = logging.getLogger("warmgw.kubernetes")

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
POOL_GROUP, POOL_KIND = "inference.networking.k8s.io", "InferencePool"
MERGE = "application/merge-patch+json"


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _is_pool(ref: Mapping[str, Any]) -> bool:
    return ref.get("group") == POOL_GROUP and ref.get("kind") == POOL_KIND


def weights_of(route: Mapping[str, Any]) -> dict[str, int]:
    """InferencePool name -> its weight (summed over the rules; a missing weight is 1)."""
    out: dict[str, int] = {}
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            if _is_pool(ref):
                out[ref["name"]] = out.get(ref["name"], 0) + int(ref.get("weight", 1))
    return out


def wanted(route: Mapping[str, Any], to: str | None,
           weights: Mapping[str, int] | None) -> dict[str, int]:
    """The weights asked for: `to` (every request to that pool, 0 to the route's others)
    or explicit pool -> weight; a pool the route does not name is refused."""
    pools = weights_of(route)
    if to is not None:
        weights = {p: (100 if p == to else 0) for p in pools}
        if to not in pools:
            raise RouteError(404, f"the route sends to no InferencePool {to!r} "
                                  f"(it names {sorted(pools)})")
    if not weights:
        raise RouteError(400, "give 'to' (a pool) or 'weights' ({pool: weight})")
    for pool, w in weights.items():
        if pool not in pools:
            raise RouteError(404, f"the route sends to no InferencePool {pool!r} "
                                  f"(it names {sorted(pools)})")
        if type(w) is not int or not 0 <= w <= 1_000_000:
            raise RouteError(400, f"weight of {pool!r}: expected an integer 0-1000000, "
                                  f"got {w!r}")
    if sum({**pools, **weights}.values()) == 0:
        raise RouteError(400, "every weight would be 0: the route would send nowhere")
    return dict(weights)


def reweighed(route: Mapping[str, Any], weights: Mapping[str, int]) -> list[dict[str, Any]]:
    """The route's rules with the pools' backendRefs at their new weights."""
    rules = copy.deepcopy((route.get("spec") or {}).get("rules") or [])
    for rule in rules:
        for ref in rule.get("backendRefs") or []:
            if _is_pool(ref) and ref["name"] in weights:
                ref["weight"] = weights[ref["name"]]
    return rules


class RouteSwitch:
    """Reads and re-weighs one HTTPRoute through the API server."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.ns = namespace
        self.name = name

    @property
    def _objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api())

    async def read(self) -> dict[str, Any]:
        try:
            obj = await self._objects.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, self.name)
        except ApiException as e:
            raise RouteError(502 if e.status != 404 else 404,
                             f"HTTPRoute {self.ns}/{self.name}: {e.status} {e.reason}") from e
        if not isinstance(obj, dict):
            raise RouteError(502, f"HTTPRoute {self.ns}/{self.name}: not an object")
        return obj

    async def weights(self) -> dict[str, int]:
        return weights_of(await self.read())

    async def switch(self, to: str | None = None,
                     weights: Mapping[str, int] | None = None) -> dict[str, int]:
        """PATCH the route's weights; returns them as the API server stored them."""
        for attempt in range(5):
            route = await self.read()
            new = wanted(route, to, weights)
            body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                    "spec": {"rules": reweighed(route, new)}}
            try:
                stored = await self._objects.patch_namespaced_custom_object(
                    GROUP, VERSION, self.ns, PLURAL, self.name, body, _content_type=MERGE)
            except ApiException as e:
                if e.status == 409 and attempt < 4:  # changed since read: read again
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                raise RouteError(502, f"HTTPRoute {self.ns}/{self.name}: PATCH answered "
                                      f"{e.status} {e.reason}") from e
            result = weights_of(stored if isinstance(stored, dict) else {})
            log.info("httproute %s/%s: weights %s (the Gateway applies them when it has "
                     "reconciled the route)", self.ns, self.name, result)
            return result
        raise RouteError(409, "the route kept changing under us")  # pragma: no cover
