"""The admin API on its own listener (127.0.0.1 by default): JSON in, JSON out, every
call authenticated with a bearer token (constant-time compare)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from warmgw import status, webpage
from warmgw.config import ConfigError, parse_replicas
from warmgw.core.bluegreen import BlueGreen, CutoverError, request_from_json
from warmgw.core.model import Endpoint
from warmgw.core.registry import Registry, UnknownEndpoint
from warmgw.core.routing import Router
from warmgw.discovery.httproute import RouteError, RouteSwitch
from warmgw.discovery.static import StaticDiscovery

log = logging.getLogger("warmgw.admin")

PREFIX = "/admin/v1"
FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=1) + "\n", content_type="application/json"
    )


def _encode_status(captured: dict[str, Any]) -> str:
    return json.dumps(status.build(captured), indent=1) + "\n"


def _error(status: int, message: str, **details: Any) -> web.Response:
    return _json({"error": {"message": message, **details}}, status)


def _conflict(active: str) -> web.Response:
    return _error(409, "another gateway replica changed the policy first; "
                  f"now active: {active!r}", active=active)


class PolicyCommit(Protocol):
    """The traffic policy's compare-and-swap (warmgw.policy.keeper.PolicyKeeper)."""

    follows: int  # policies taken from another gateway replica so far

    def core(self) -> tuple[object, ...]: ...

    async def commit(self, base: tuple[object, ...] | None = None,
                     decided: tuple[object, ...] | None = None,
                     follows: int | None = None) -> bool: ...


class Admin:
    def __init__(self, token: str, registry: Registry, bluegreen: BlueGreen,
                 policy: PolicyCommit, static: StaticDiscovery, strategy: str,
                 router: Router, route: RouteSwitch | None = None,
                 prewarm: Callable[[str], Awaitable[int]] | None = None) -> None:
        self.route = route
        self.prewarm = prewarm  # before a cutover: the kept hot prefixes to the new pool
        self.registry = registry
        self.router = router
        self.bluegreen = bluegreen
        self.policy = policy
        self.static = static
        self.strategy = strategy
        self._token = token.encode()

    def _replica(self, ep: Endpoint) -> dict[str, Any]:
        return status.replica(ep, self.registry.clock.now(), self.registry.policy.share(ep.pool))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=1 << 20)
        r = app.router
        r.add_get(f"{PREFIX}/status", self.status)
        r.add_get(f"{PREFIX}/profile", self.profile)
        r.add_post(f"{PREFIX}/cutover", self.cutover)
        r.add_post(f"{PREFIX}/rollback", self.rollback)
        r.add_post(f"{PREFIX}/replicas", self.add_replica)
        r.add_delete(f"{PREFIX}/replicas/{{name}}", self.remove_replica)
        r.add_post(f"{PREFIX}/replicas/{{name}}/{{action}}", self.replica_action)
        r.add_post(f"{PREFIX}/reload", self.reload)
        r.add_get(f"{PREFIX}/route", self.route_weights)
        r.add_post(f"{PREFIX}/route", self.route_switch)
        webpage.add_routes(app)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PREFIX):
            got = request.headers.get("Authorization", "")
            scheme, _, token = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self._token
            ):
                return web.Response(
                    status=401,
                    text=json.dumps({"error": {"message": "missing or wrong bearer token"}}),
                    content_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="warmgw-admin"'},
                )
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason)

    async def _body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            return {}
        try:
            return await request.json(loads=json.loads)
        except ValueError as e:
            raise web.HTTPBadRequest(reason=f"body is not valid JSON: {e}") from None

    # -- reading --------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        # copied on the loop, formatted and encoded in a worker thread (see warmgw.status)
        captured = status.capture(self.registry, self.bluegreen, self.strategy)
        text = await asyncio.to_thread(_encode_status, captured)
        return web.Response(text=text, content_type="application/json")

    async def profile(self, request: web.Request) -> web.Response:
        """The learned traffic profile and the warmup's coverage; ?specs=1 adds the kept
        structured-output specs and tool lists themselves."""
        flag = request.query.get("specs", "0").lower()
        if flag not in FLAGS:
            return _error(400, f"query 'specs' must be 1 or 0, got {flag!r}")
        return _json(status.profile(self.router, specs=FLAGS[flag]))

    # -- blue-green -----------------------------------------------------------------------

    async def cutover(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            req = request_from_json(body)
        except CutoverError as e:
            return _error(e.status, str(e), **e.details)
        if self.prewarm is not None and req.to != self.bluegreen.active:
            n = await self.prewarm(req.to)
            log.info("cutover to %s: %d hot prefix replay(s) sent to its replicas first",
                     req.to, n)
        base, follows = self.policy.core(), self.policy.follows
        try:
            rec = self.bluegreen.cutover(req)
        except CutoverError as e:
            return _error(e.status, str(e), **e.details)
        if not await self.policy.commit(base, self.policy.core(), follows):
            return _conflict(self.bluegreen.active)
        log.info("cutover %s -> %s (%s) by admin call", rec.frm, rec.to, rec.mode)
        return _json({"cutover": rec.as_dict(), "policy": self.bluegreen.state().shares})

    async def rollback(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        force = body.get("force", False) if isinstance(body, dict) else None
        if not isinstance(force, bool):
            return _error(400, f"field 'force' must be true or false, got {force!r}")
        base, follows = self.policy.core(), self.policy.follows
        try:
            rec = self.bluegreen.rollback(force)
        except CutoverError as e:
            return _error(e.status, str(e), **e.details)
        if not await self.policy.commit(base, self.policy.core(), follows):
            return _conflict(self.bluegreen.active)
        log.info("rollback %s -> %s by admin call", rec.frm, rec.to)
        return _json({"cutover": rec.as_dict(), "policy": self.bluegreen.state().shares})

    # -- replicas -------------------------------------------------------------------------

    async def replica_action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        reg = self.registry
        actions = {"drain": reg.drain, "undrain": reg.undrain, "rewarm": reg.rewarm}
        fn = actions.get(action)
        if fn is None:
            return _error(404, f"unknown action {action!r} (known: {sorted(actions)})")
        try:
            ep = fn(name)
        except UnknownEndpoint as e:
            return _error(404, str(e))
        except ValueError as e:
            return _error(409, str(e))
        return _json({"replica": self._replica(ep)})

    async def add_replica(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            (spec,) = parse_replicas([body], where="replica")
        except ConfigError as e:
            return _error(400, str(e))
        try:
            self.static.add(spec)
        except ValueError as e:
            return _error(409, str(e))
        return _json({"replica": self._replica(self.registry.get(spec.name))}, 201)

    async def remove_replica(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            self.static.remove(name)
        except KeyError:
            return _error(404, f"no replica named {name!r}")
        ep = self.registry.endpoints.get(name)
        return _json({"replica": self._replica(ep) if ep else {"name": name}})

    async def reload(self, request: web.Request) -> web.Response:
        try:
            added, removed = self.static.reload_from_file()
        except ConfigError as e:
            return _error(400, f"config not reloaded: {e}")
        return _json({"added": added, "removed": removed})

    # -- across InferencePools: the HTTPRoute's weights ------------------------------------

    ROUTE_NOTE = ("applied by the Gateway implementation when it has reconciled the "
                  "HTTPRoute: not instant")

    async def route_weights(self, request: web.Request) -> web.Response:
        if self.route is None:
            return _error(404, "no HTTPRoute configured (discovery.kubernetes.http_route)")
        try:
            weights = await self.route.weights()
        except RouteError as e:
            return _error(e.status, str(e))
        return _json({"route": self.route.name, "weights": weights})

    async def route_switch(self, request: web.Request) -> web.Response:
        """{"to": POOL} or {"weights": {POOL: N, ...}}: PATCH the HTTPRoute's weights."""
        if self.route is None:
            return _error(404, "no HTTPRoute configured (discovery.kubernetes.http_route)")
        body = await self._body(request)
        to = body.get("to") if isinstance(body, dict) else None
        weights = body.get("weights") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (to is not None and not isinstance(to, str)) or (
                weights is not None and not isinstance(weights, dict)):
            return _error(400, "expected {\"to\": POOL} or {\"weights\": {POOL: N}}")
        try:
            stored = await self.route.switch(to, weights)
        except RouteError as e:
            return _error(e.status, str(e))
        log.info("HTTPRoute %s weights %s by admin call", self.route.name, stored)
        return _json({"route": self.route.name, "weights": stored, "note": self.ROUTE_NOTE})
