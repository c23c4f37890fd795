"""The parts of a scenario file that the prefix scenario adds: a session workload and
named variants of the gateway.

    workload:
      prefix:                       # multi-turn sessions on shared system prompts
        system_prompts: 24          # distinct shared system prompts
        system_tokens: [64, 192]    # each one's length in tokens (uniform, seeded)
        zipf: 1.1                   # popularity: prompt k (from 1) drawn with weight k^-zipf
        turns: [1, 6]               # turns per session (uniform)
        turn_tokens: [8, 40]        # a user message's tokens (uniform)
        answer_tokens: 12           # the assistant's answer kept in the history per turn
        session_header: x-session-id  # sent with every request of a session ("": none)
    strategies: [warm, round_robin, vllm_router_cache_aware]   # this scenario's default
    variants:                       # warmgw under another name, with config on top of
      warm: {gateway: {routing: {prefix: {enabled: true}}}}     # the scenario's gateway:
      least_request: {strategy: warm}                           # strategy: warm (default),
                                                                # slow_start, round_robin

Token counts are the simulator's with `chars_per_token: 0` (one token per word): every
word of a prompt is distinct per system prompt, session and turn, so two prompts share
cache blocks only where they share a system prompt or a session's history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WARMGW_STRATEGIES = ("warm", "slow_start", "round_robin")


class PrefixSpecError(ValueError):
    pass


@dataclass(frozen=True)
class PrefixWorkload:
    system_prompts: int = 24
    system_tokens: tuple[int, int] = (64, 192)
    zipf: float = 1.1
    turns: tuple[int, int] = (1, 6)
    turn_tokens: tuple[int, int] = (8, 40)
    answer_tokens: int = 12
    session_header: str = "x-session-id"


@dataclass(frozen=True)
class Variant:
    """warmgw with one of its strategies and config merged over the scenario's gateway."""

    name: str
    strategy: str = "warm"
    gateway_json: str = "{}"  # canonical JSON (kept hashable)


def _range(m: Mapping[str, Any], key: str, default: tuple[int, int], where: str
           ) -> tuple[int, int]:
    v = m.get(key, list(default))
    if (not isinstance(v, list | tuple) or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v)
            or v[0] > v[1]):
        raise PrefixSpecError(f"{where}.{key}: expected [min, max], whole numbers >= 1 with "
                              f"min <= max, got {v!r}")
    return int(v[0]), int(v[1])


def parse_prefix(raw: Any) -> PrefixWorkload | None:
    if raw is None:
        return None
    where = "workload.prefix"
    if not isinstance(raw, Mapping):
        raise PrefixSpecError(f"{where}: expected a mapping, got {raw!r}")
    known = {"system_prompts", "system_tokens", "zipf", "turns", "turn_tokens",
             "answer_tokens", "session_header"}
    for k in raw:
        if k not in known:
            raise PrefixSpecError(f"{where}.{k}: unknown key (known: {', '.join(sorted(known))})")
    d = PrefixWorkload()
    n = raw.get("system_prompts", d.system_prompts)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrefixSpecError(f"{where}.system_prompts: expected a whole number >= 1, got {n!r}")
    zipf = raw.get("zipf", d.zipf)
    if isinstance(zipf, bool) or not isinstance(zipf, int | float) or zipf < 0:
        raise PrefixSpecError(f"{where}.zipf: expected a number >= 0, got {zipf!r}")
    answer = raw.get("answer_tokens", d.answer_tokens)
    if isinstance(answer, bool) or not isinstance(answer, int) or answer < 0:
        raise PrefixSpecError(f"{where}.answer_tokens: expected a whole number >= 0, "
                              f"got {answer!r}")
    header = raw.get("session_header", d.session_header)
    if not isinstance(header, str):
        raise PrefixSpecError(f"{where}.session_header: expected a header name, got {header!r}")
    return PrefixWorkload(
        system_prompts=n, system_tokens=_range(raw, "system_tokens", d.system_tokens, where),
        zipf=float(zipf), turns=_range(raw, "turns", d.turns, where),
        turn_tokens=_range(raw, "turn_tokens", d.turn_tokens, where), answer_tokens=answer,
        session_header=header,
    )


def parse_variants(raw: Any) -> tuple[Variant, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise PrefixSpecError(f"variants: expected a mapping of name -> variant, got {raw!r}")
    out = []
    for name, v in raw.items():
        at = f"variants.{name}"
        v = {} if v is None else v
        if not isinstance(v, Mapping):
            raise PrefixSpecError(f"{at}: expected a mapping, got {v!r}")
        for k in v:
            if k not in ("strategy", "gateway"):
                raise PrefixSpecError(f"{at}.{k}: unknown key (known: gateway, strategy)")
        strategy = v.get("strategy", "warm")
        if strategy not in WARMGW_STRATEGIES:
            raise PrefixSpecError(f"{at}.strategy: expected one of "
                                  f"{', '.join(WARMGW_STRATEGIES)}, got {strategy!r}")
        gw = v.get("gateway", {}) or {}
        if not isinstance(gw, Mapping):
            raise PrefixSpecError(f"{at}.gateway: expected a mapping, got {gw!r}")
        out.append(Variant(str(name), strategy, json.dumps(gw, sort_keys=True)))
    return tuple(out)


def parse_strategies(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or any(not isinstance(x, str) or not x
                                                   for x in raw):
        raise PrefixSpecError(f"strategies: expected a non-empty list of names, got {raw!r}")
    return tuple(raw)
