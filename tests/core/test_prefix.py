"""Prefix chunk hashes (core.prefix), the prefix and session indexes, and facts."""

from __future__ import annotations

from typing import Any

from warmgw.core.facts import RequestFacts, from_json
from warmgw.core.prefix import (
    PrefixIndex,
    PrefixParams,
    RoutingParams,
    SessionIndex,
    SessionParams,
    chain,
    chunks_of,
    render,
)
from warmgw.core.shapes import TokenRatios

P = PrefixParams(enabled=True, chunk_bytes=16, max_chunks=7)
SYSTEM = "You are a careful assistant. " * 3  # 87 bytes


def chat(*contents: str) -> dict[str, Any]:
    return {"model": "m", "messages": [
        {"role": "system" if i == 0 else "user", "content": c} for i, c in enumerate(contents)]}


def test_prompts_sharing_a_prefix_share_its_leading_chunks_only() -> None:
    a = chunks_of("chat", chat(SYSTEM, "what is a cat? " * 4), "m", P)
    b = chunks_of("chat", chat(SYSTEM, "how far is the moon from here"), "m", P)
    assert len(a) == 7 and len(b) == 7  # at most max_chunks
    assert len(chunks_of("chat", chat("ab" * 20), "m", P)) == (7 + 40) // 16  # full ones
    shared = len(("system\x1e" + SYSTEM).encode()) // 16
    assert a[:shared] == b[:shared]
    assert a[shared + 1:] != b[shared + 1:len(a)]
    assert not set(a[shared + 1:]) & set(b)


def test_a_different_head_model_or_order_changes_every_chunk() -> None:
    base = chunks_of("chat", chat(SYSTEM, "question number one here"), "m", P)
    other_head = chunks_of("chat", chat("W" + SYSTEM[1:], "question number one here"), "m", P)
    other_model = chunks_of("chat", chat(SYSTEM, "question number one here"), "m2", P)
    swapped = chunks_of("chat", chat("question number one here", SYSTEM), "m", P)
    for o in (other_head, other_model, swapped):
        assert not set(o) & set(base)


def test_render_covers_completions_and_content_parts() -> None:
    assert render("completions", {"prompt": "abc"}) == b"abc"
    assert render("completions", {"prompt": ["ab", "cd"]}) == b"ab\x1ecd"
    assert render("completions", {"prompt": [1, 2, 3]}) == b""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                        {"type": "image_url"}]}]}
    assert render("chat", parts) == b"user\x1ehi"
    assert chain(b"x" * 15, 0, 16, 8) == ()


def test_from_json_hashes_only_when_routing_is_on() -> None:
    body = chat(SYSTEM, "a question")
    off = from_json("/v1/chat/completions", body, 200, None, TokenRatios())
    assert isinstance(off, RequestFacts) and off.chunks == () and off.session is None
    on = from_json("/v1/chat/completions", body | {"user": "u1"}, 200, None, TokenRatios(),
                   routing=RoutingParams(P, SessionParams(use_user_field=True)))
    assert isinstance(on, RequestFacts)
    assert on.chunks == chunks_of("chat", body, "m", P) and on.session == "u1"
    hdr = from_json("/v1/chat/completions", body | {"user": "u1"}, 200, None, TokenRatios(),
                    routing=RoutingParams(session=SessionParams(header="x-session")),
                    session="s9")
    assert isinstance(hdr, RequestFacts) and hdr.session == "s9" and hdr.chunks == ()


def test_index_matches_the_depth_each_replica_was_sent() -> None:
    idx = PrefixIndex(P)
    full = (1, 2, 3, 4, 5)
    idx.record("a", full, 0.0, 100)
    idx.record("b", full[:2], 0.0, 100)
    assert idx.match(full, 1.0) == {"a": 5, "b": 2}
    assert idx.match((1, 2, 9), 1.0) == {"a": 2, "b": 2}
    assert idx.match((7, 2, 3), 1.0) == {}
    assert idx.match(full, 1.0 + P.ttl) == {}  # too old to trust


def test_index_is_bounded_per_replica_and_forgets_silent_replicas() -> None:
    idx = PrefixIndex(P)
    idx.record("a", (1, 2, 3), 0.0, 4)
    idx.record("a", (7, 8, 9), 0.0, 4)  # evicts the tail of 1-2-3 first, keeps its head
    assert len(idx) == 4
    assert idx.match((1, 2, 3), 0.0) == {"a": 1}
    assert idx.match((7, 8, 9), 0.0) == {"a": 3}
    idx.record("b", (5,), P.ttl + 1.0, 4)
    idx.sweep(P.ttl + 1.0)
    assert idx.replicas() == ["b"] and len(idx) == 1


def test_session_index_is_bounded_and_expires() -> None:
    s = SessionIndex(SessionParams(use_user_field=True, ttl=10.0, max_sessions=2))
    s.put("u1", "a", 0.0)
    s.put("u2", "b", 0.0)
    assert s.get("u1", 5.0) == "a"
    s.put("u3", "c", 1.0)
    assert len(s) == 2 and s.get("u1", 5.0) is None
    assert s.get("u2", 11.0) is None and s.get("u3", 11.0) == "c"
