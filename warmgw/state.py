"""The traffic policy on disk (static mode): survives a gateway restart.

Written atomically (temp file, fsync, rename). A file that cannot be read is an error at
start that names the file and the problem: the policy is never silently lost.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from warmgw.core.bluegreen import PolicyState


class StateFileError(ValueError):
    pass


def load(path: str | Path) -> PolicyState | None:
    p = Path(path)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StateFileError(f"state file {str(p)!r} is unreadable: {e}") from None
    try:
        if data.get("version") != 1:
            raise ValueError(f"unknown version {data.get('version')!r}")
        active = data["active"]
        if not isinstance(active, str) or not active:
            raise ValueError(f"'active' must be a pool name, got {active!r}")
        shares = {str(k): float(v) for k, v in data.get("shares", {}).items()}
        history = list(data.get("history", []))
        previous = data.get("previous")
        return PolicyState(active, previous, shares, history)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise StateFileError(f"state file {str(p)!r} is not a warmgw policy: {e}") from None


def save(path: str | Path, state: PolicyState) -> None:
    p = Path(path)
    data = {"version": 1, **asdict(state)}
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
