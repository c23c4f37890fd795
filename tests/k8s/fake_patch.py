"""PATCH bodies: strategic merge (with the Pod's merge keys), JSON merge, JSON patch."""

from __future__ import annotations

import copy
from typing import Any

from .fake_kinds import ApiError, bad_request

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
SUPPORTED = (JSON_PATCH, MERGE, STRATEGIC)

# patchMergeKey of the lists that merge (from k8s.io/api); all other lists are replaced.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "containers", "*", "ports"): "containerPort",
    ("spec", "containers", "*", "env"): "name",
    ("spec", "volumes"): "name",
    ("status", "conditions"): "type",
    ("status", "containerStatuses"): "name",
    ("status", "initContainerStatuses"): "name",
    ("status", "podIPs"): "ip",
}
# Lists of scalars whose strategy is merge: patched values are added to the set.
MERGE_SCALARS = {("metadata", "finalizers")}


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(SUPPORTED)} (got {content_type or 'none'})")


def apply_patch(content_type: str, original: dict[str, Any], patch: Any) -> dict[str, Any]:
    if content_type == STRATEGIC:
        if not isinstance(patch, dict):
            raise bad_request("strategic merge patch body must be a JSON object")
        result = strategic_merge(original, patch, ())
    elif content_type == MERGE:
        result = merge_patch(original, patch)
    elif content_type == JSON_PATCH:
        result = json_patch(original, patch)
    else:
        raise unsupported_media_type(content_type)
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(original: Any, patch: dict[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return None
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # $setElementOrder/..., $retainKeys: ordering hints only
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, (*path, key))
        else:
            result[key] = value
    return result


def _merge_list(original: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = MERGE_KEYS.get(path)
    current = copy.deepcopy(original) if isinstance(original, list) else []
    if path in MERGE_SCALARS:
        return current + [v for v in patch if v not in current]
    if key is None or any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map in list {'.'.join(path)} has no merge key {key!r}")
        at = next((n for n, old in enumerate(current)
                   if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del current[at]
        elif at is None:
            current.append(_strip(item))
        else:
            current[at] = strategic_merge(current[at], item, (*path, "*"))
    return current


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


# --- RFC 6902 ----------------------------------------------------------------------------

def json_patch(document: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json patch body must be a JSON array of operations")
    doc = copy.deepcopy(document)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation: {op!r}")
        name, path = op["op"], _pointer(op["path"])
        if name == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif name == "remove":
            doc, _ = _remove(doc, path)
        elif name == "replace":
            doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif name in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            if name == "move":
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op.get("value"):
                raise _unprocessable(f"testing value {op['path']} failed")
        else:
            raise bad_request(f"unexpected json patch operation {name!r}")
    return doc


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _pointer(text: str) -> list[str]:
    if text == "":
        return []
    if not text.startswith("/"):
        raise bad_request(f"json patch path {text!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]


def _parent(doc: Any, path: list[str]) -> Any:
    if not path:
        raise _unprocessable("json patch cannot address the whole document here")
    return _get(doc, path[:-1])


def _get(doc: Any, path: list[str]) -> Any:
    cur = doc
    for part in path:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise _unprocessable(f"doc is missing path: /{'/'.join(path)}")
    return cur


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent, last = _parent(doc, path), path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise _unprocessable(f"index out of bounds: /{'/'.join(path)}")
        parent.insert(index, value)
    else:
        raise _unprocessable(f"doc is missing path: /{'/'.join(path)}")
    return doc


def _remove(doc: Any, path: list[str]) -> tuple[Any, Any]:
    value = _get(doc, path)
    parent, last = _parent(doc, path), path[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc, value
