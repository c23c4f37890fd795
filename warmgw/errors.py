"""Errors as clients of an OpenAI-compatible server expect them."""

from __future__ import annotations

import json


def body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> bytes:
    err = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": err}).encode()


def sse_event(message: str, type_: str, code: str | int | None = None) -> bytes:
    """The same error as one SSE event, for a stream that has already begun."""
    return b"data: " + body(message, type_, code) + b"\n\n"
