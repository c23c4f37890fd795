"""Errors as clients of an OpenAI-compatible server expect them."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


def body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> bytes:
    err = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": err}).encode()


def response(
    status: int,
    message: str,
    type_: str,
    code: str | int | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""
    return web.Response(
        status=status,
        body=body(message, type_, code, param),
        content_type="application/json",
        headers=headers,
    )


def sse_event(message: str, type_: str, code: str | int | None = None) -> bytes:
    """The same error as one SSE event, for a stream that has already begun."""
    return b"data: " + body(message, type_, code) + b"\n\n"
