"""The stored form of the traffic policy, shared by every store: JSON with a version.

Decoding checks the version, the shape and the types, and an error names where the text
came from and what is wrong: a policy is never guessed from something half-understood.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from warmgw.core.bluegreen import CutoverRecord, PolicyState

VERSION = 1

_RECORD_FIELDS = {f.name for f in fields(CutoverRecord)}
_RECORD_REQUIRED = {"id", "frm", "to", "mode", "started"}


class PolicyReadError(ValueError):
    """A stored policy that cannot be read back; the message names where it is."""


def encode(policy: PolicyState) -> str:
    """The same policy always gives the same text (a store can skip a write that would
    change nothing)."""
    return json.dumps({"version": VERSION, **asdict(policy)}, sort_keys=True, indent=1)


def decode(text: str, where: str) -> PolicyState:
    """The policy in `text`; PolicyReadError naming `where` and the problem otherwise."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PolicyReadError(f"{where} is unreadable: {e}") from None
    try:
        return _policy(data)
    except ValueError as e:
        raise PolicyReadError(f"{where} is not a warmgw policy: {e}") from None


def _policy(data: Any) -> PolicyState:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("version") != VERSION:
        raise ValueError(f"unknown version {data.get('version')!r}")
    if "active" not in data:
        raise ValueError("'active' is missing")
    active = data["active"]
    if not isinstance(active, str) or not active:
        raise ValueError(f"'active' must be a pool name, got {active!r}")
    previous = data.get("previous")
    if previous is not None and not isinstance(previous, str):
        raise ValueError(f"'previous' must be a pool name or null, got {previous!r}")
    shares = data.get("shares") or {}
    if not isinstance(shares, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in shares.values()
    ):
        raise ValueError(f"'shares' must map pools to numbers, got {shares!r}")
    history = data.get("history") or []
    if not isinstance(history, list):
        raise ValueError(f"'history' must be a list, got {history!r}")
    for h in history:
        _check_record(h)
    return PolicyState(active, previous, {str(k): float(v) for k, v in shares.items()},
                       list(history))


def _check_record(h: Any) -> None:
    if not isinstance(h, dict):
        raise ValueError(f"a 'history' entry must be an object, got {h!r}")
    if unknown := sorted(set(h) - _RECORD_FIELDS):
        raise ValueError(f"a 'history' entry has unknown field(s) {unknown}")
    if missing := sorted(_RECORD_REQUIRED - set(h)):
        raise ValueError(f"a 'history' entry misses field(s) {missing}")
