"""Where the traffic policy is kept: nowhere (MemoryStore), a state file (static mode), or
a ConfigMap that every gateway replica watches (Kubernetes; warmgw.policy.configmap)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import aiohttp
from kubernetes.aio.client.exceptions import ApiException

from warmgw.core.bluegreen import PolicyState
from warmgw.policy import codec


class PolicyConflict(Exception):
    """Someone else changed the stored policy since we last read it."""


# What a store may raise when it cannot be reached or written: the policy stays applied
# here and the keeper's writer tries again.
STORE_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError, OSError)


class PolicyStore(Protocol):
    async def load(self) -> PolicyState | None: ...

    async def save(self, policy: PolicyState) -> None: ...

    async def start(self, apply: Callable[[PolicyState], None]) -> None: ...

    async def stop(self) -> None: ...


class MemoryStore:
    """The policy is not kept: a restart starts from the configured active pool."""

    async def load(self) -> PolicyState | None:
        return None

    async def save(self, policy: PolicyState) -> None:
        return None

    async def start(self, apply: Callable[[PolicyState], None]) -> None:
        return None

    async def stop(self) -> None:
        return None


class FileStore(MemoryStore):
    """A state file that survives a gateway restart, written atomically (temp file, fsync,
    rename). A file that cannot be read is an error at start that names the file and the
    problem: the policy is never silently lost."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def where(self) -> str:
        return f"state file {str(self.path)!r}"

    async def load(self) -> PolicyState | None:
        text = _read(self.path, self.where)
        return None if text is None else codec.decode(text, self.where)

    async def save(self, policy: PolicyState) -> None:
        _write_atomically(self.path, codec.encode(policy))


# Small (the policy and at most 50 cutover records) and written only when it changes:
# done in the event loop.

def _read(path: Path, where: str) -> str | None:
    if not path.exists():
        return None
    try:
        return path.read_text()
    except (OSError, ValueError) as e:
        raise codec.PolicyReadError(f"{where} is unreadable: {e}") from None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
