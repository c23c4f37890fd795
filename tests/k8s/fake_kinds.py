"""Resource kinds, Status errors and time formats of the fake Kubernetes API server."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    plural: str
    kind: str
    group: str  # "" for the core group
    version: str = "v1"
    verbs: frozenset[str] = frozenset({"get", "list", "watch"})
    # Leases refuse an update without metadata.resourceVersion (AllowUnconditionalUpdate false).
    unconditional_update: bool = True
    # Custom resources (CRDs) take JSON and merge patches, never strategic merge (415).
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:
        """The name used in error messages: `pods`, `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def with_kind(self, obj: JSON) -> JSON:
        """The object as sent alone or in a watch event: kind and apiVersion first."""
        return {"kind": self.kind, "apiVersion": self.api_version, **obj}


_RW = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
PODS = Kind("pods", "Pod", "", verbs=frozenset({"get", "list", "watch", "create", "patch",
                                                 "delete"}))
SERVICES = Kind("services", "Service", "")
CONFIGMAPS = Kind("configmaps", "ConfigMap", "", verbs=_RW)
ENDPOINTSLICES = Kind("endpointslices", "EndpointSlice", "discovery.k8s.io")
LEASES = Kind("leases", "Lease", "coordination.k8s.io", verbs=_RW, unconditional_update=False)
# Gateway API Inference Extension and Gateway API objects: custom resources (CRDs).
INFERENCEPOOLS = Kind("inferencepools", "InferencePool", "inference.networking.k8s.io",
                      verbs=_RW, custom=True)
HTTPROUTES = Kind("httproutes", "HTTPRoute", "gateway.networking.k8s.io", verbs=_RW,
                  custom=True)
KINDS = (PODS, SERVICES, CONFIGMAPS, ENDPOINTSLICES, LEASES, INFERENCEPOOLS, HTTPROUTES)


class ApiError(Exception):
    """Raised anywhere in the fake; the server answers with the matching Status body."""

    def __init__(self, code: int, reason: str, message: str,
                 details: JSON | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": self.message, "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(kind: Kind, name: str) -> JSON:
    d: JSON = {"name": name}
    if kind.group:
        d["group"] = kind.group
    d["kind"] = kind.plural
    return d


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found', _details(kind, name))


def already_exists(kind: Kind, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{kind.qualified} "{name}" already exists',
                    _details(kind, name))


def conflict(kind: Kind, name: str, why: str | None = None) -> ApiError:
    why = why or ("the object has been modified; please apply your changes to the latest "
                  "version and try again")
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}',
                    _details(kind, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: Kind, name: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: {message}',
                    _details(kind, name))


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")


# --- times -------------------------------------------------------------------------------

# Go's RFC 3339: a zone ("Z" or +hh:mm) is required; Python's naive isoformat() lacks one.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def now() -> datetime:
    return datetime.now(UTC)


def fmt_time(t: datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_micro(t: datetime) -> str:
    """metav1.MicroTime: RFC 3339 in UTC with microseconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def later(seconds: float) -> str:
    return fmt_time(now() + timedelta(seconds=seconds))


def parse_time(value: Any, kind: Kind, field: str) -> datetime:
    """Parse a time the way the API server's JSON decoder does, or fail with 400."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
            f'{field}: parsing time "{value}" as "2006-01-02T15:04:05Z07:00": '
            "cannot parse as RFC 3339")
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python takes at most 6 fractional digits
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end():]}"
    return datetime.fromisoformat(text)
