"""Label and field selectors as the API server parses and applies them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .fake_kinds import JSON, ApiError, bad_request

_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[A-Za-z0-9_./-]+)")
_OPERATORS = {"!=", "==", "=", "!", "(", ")", ",", "<", ">"}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        try:  # gt / lt compare integers; a non-integer label does not match
            number = int(value or "")
        except ValueError:
            return False
        return number > int(self.values[0]) if self.op == "gt" else number < int(self.values[0])


class LabelSelector:
    """`app=vllm,tier!=canary,env in (a,b),!legacy,zone`: every requirement must hold."""

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self.requirements = _parse(self.text)

    def matches(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)


def _lex(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(text, f"unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def _error(text: str, why: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {why} in selector {text!r}")


def _parse(text: str) -> list[Requirement]:
    tokens = _lex(text)
    reqs: list[Requirement] = []
    i = 0

    def ident(j: int) -> str | None:
        return tokens[j] if j < len(tokens) and tokens[j] not in _OPERATORS else None

    while i < len(tokens):
        if tokens[i] == "!":
            key = ident(i + 1)
            if key is None:
                raise _error(text, "missing key after '!'")
            reqs.append(Requirement(key, "!"))
            i += 2
        else:
            key = ident(i)
            if key is None:
                raise _error(text, f"expected a key, found {tokens[i]!r}")
            i += 1
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                value = ident(i + 1)
                i += 1 if value is None else 2  # `key=` selects the empty value
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value or "",)))
            elif op in ("in", "notin"):
                values, i = _parse_set(text, tokens, i + 1)
                reqs.append(Requirement(key, op, values))
            elif op in ("<", ">"):
                value = ident(i + 1)
                if value is None or not re.fullmatch(r"-?\d+", value):
                    raise _error(text, f"'{op}' needs an integer")
                reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
                i += 2
            else:
                raise _error(text, f"unknown operator {op!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise _error(text, f"expected ',' found {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise _error(text, "trailing ','")
    return reqs


def _parse_set(text: str, tokens: list[str], i: int) -> tuple[tuple[str, ...], int]:
    if i >= len(tokens) or tokens[i] != "(":
        raise _error(text, "expected '('")
    values: list[str] = []
    i += 1
    while True:
        if i < len(tokens) and tokens[i] not in _OPERATORS:
            values.append(tokens[i])
            i += 1
        else:
            values.append("")
        if i >= len(tokens):
            raise _error(text, "missing ')'")
        if tokens[i] == ")":
            break
        if tokens[i] != ",":
            raise _error(text, f"unexpected {tokens[i]!r} in value set")
        i += 1
    if values == [""]:
        raise _error(text, "for 'in', 'notin' operators, values set can't be empty")
    return tuple(values), i + 1


# --- field selectors ---------------------------------------------------------------------

_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
_EXTRA_FIELDS = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "status.phase", "status.podIP",
             "status.nominatedNodeName"},
}


class FieldSelector:
    """`metadata.name=x,status.phase!=Failed`: only the fields the real server indexes."""

    def __init__(self, text: str | None, plural: str) -> None:
        self.text = text or ""
        self.tests: list[Callable[[JSON], bool]] = []
        allowed = _COMMON_FIELDS | _EXTRA_FIELDS.get(plural, set())
        for part in filter(None, (p.strip() for p in self.text.split(","))):
            m = re.fullmatch(r"([A-Za-z.]+)\s*(!=|==|=)\s*(.*)", part)
            if m is None:
                raise bad_request(f"invalid selector: '{self.text}'; can't understand '{part}'")
            field, op, value = m.groups()
            if field not in allowed:
                raise bad_request(f'field label not supported: {field}')
            self.tests.append(_field_test(field, op == "!=", value))

    def matches(self, obj: JSON | None) -> bool:
        return obj is not None and all(t(obj) for t in self.tests)


def _field_test(field: str, negate: bool, value: str) -> Callable[[JSON], bool]:
    def test(obj: JSON) -> bool:
        cur: Any = obj
        for part in field.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        return (str(cur if cur is not None else "") == value) != negate

    return test
