"""Hot shared prefixes kept as text (core.keep): only what keep_min_users distinct senders
shared, cut at the chunk boundary, as messages that replay to the same chunks; bounded by
a byte budget, the least hot out first."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from warmgw.core.keep import PrefixKeeper, cut_messages
from warmgw.core.prefix import PrefixParams, chain, chunks_of, render

P = PrefixParams(enabled=True, chunk_bytes=64, keep_prefixes=True, keep_min_users=3,
                 keep_bytes=4096)
SYSTEM = "You are a careful assistant. " * 20  # 580 bytes: 9 full chunks of 64 bytes


def chat(system: str, user: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": user}]}


def send(k: PrefixKeeper, obj: dict[str, Any], who: str, now: float = 0.0,
         route: str = "chat") -> None:
    k.observe(route, obj, "m", chunks_of(route, obj, "m", P), who, now)


def test_a_prefix_one_user_sent_is_never_kept() -> None:
    k = PrefixKeeper(P)
    for i in range(50):  # the same long document, from one sender, over and over
        send(k, chat(SYSTEM, f"my own secret question {i} " * 10), "alice")
    assert len(k) == 0 and k.bytes == 0


def test_two_users_are_not_enough_when_three_are_required() -> None:
    k = PrefixKeeper(P)
    for who in ("alice", "bob") * 5:
        send(k, chat(SYSTEM, f"question of {who}"), who)
    assert len(k) == 0


def test_the_shared_part_is_kept_and_no_users_text() -> None:
    k = PrefixKeeper(P)
    for who in ("alice", "bob", "carol"):
        send(k, chat(SYSTEM, f"private words of {who} " * 10), who)
    assert len(k) == 1
    kept = next(iter(k.kept.values()))
    text = " ".join(m["content"] for m in kept.body["messages"])
    assert "private" not in text and text.strip()
    assert [m["role"] for m in kept.body["messages"]] == ["system"]
    assert SYSTEM.startswith(kept.body["messages"][0]["content"])
    # it replays to the chunks the users' requests began with
    replay = {"model": "m", **kept.body}
    users = chunks_of("chat", chat(SYSTEM, "anything at all " * 10), "m", P)
    assert chunks_of("chat", replay, "m", P) == kept.chunks == users[:len(kept.chunks)]
    assert len(kept.chunks) == (len("system") + 1 + len(SYSTEM)) // 64  # all full chunks


def test_a_deeper_shared_prefix_replaces_the_one_it_extends() -> None:
    k = PrefixKeeper(P)
    for who in ("a", "b", "c"):
        send(k, chat(SYSTEM, f"{who}'s question"), who)
    shallow = set(k.kept)
    few_shot = "Example: two plus two is four. " * 10
    for who in ("d", "e", "f"):  # the system prompt and the same few-shot user turn
        send(k, {"model": "m", "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": few_shot},
            {"role": "assistant", "content": f"{who} says hello"}]}, who)
    assert len(k) == 1 and set(k.kept) != shallow
    msgs = next(iter(k.kept.values())).body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == SYSTEM


def test_completions_keep_the_prompts_head() -> None:
    k = PrefixKeeper(P)
    for who in ("a", "b", "c"):
        send(k, {"model": "m", "prompt": SYSTEM + who * 100}, who, route="completions")
    kept = next(iter(k.kept.values()))
    assert SYSTEM.startswith(kept.body["prompt"]) and len(kept.body["prompt"]) == 9 * 64


def test_the_budget_drops_the_least_hot() -> None:
    k = PrefixKeeper(PrefixParams(enabled=True, chunk_bytes=64, keep_prefixes=True,
                                  keep_min_users=2, keep_bytes=1500))
    docs = [f"document {d} " * 60 for d in range(4)]  # ~700 bytes each: two fit
    for d, heat in ((0, 10), (1, 2), (2, 5)):
        for i in range(heat):
            send(k, chat(docs[d], "q"), f"user{i % 2}", now=float(d))
    kept = {m["messages"][0]["content"][:11] for m in (x.body for x in k.kept.values())}
    assert kept == {"document 0 ", "document 2 "}
    assert k.bytes <= 1500 and k.evicted == 1


def test_top_is_hottest_first_within_count_and_chunks() -> None:
    k = PrefixKeeper(PrefixParams(enabled=True, chunk_bytes=64, keep_prefixes=True,
                                  keep_min_users=2))
    docs = [f"document {d} " * 60 for d in range(3)]
    for d, heat in ((0, 2), (1, 8), (2, 4)):
        for i in range(heat):
            send(k, chat(docs[d], "q"), f"user{i % 2}")
    order = [x.body["messages"][0]["content"][:10] for x in k.top(frozenset({"m"}), 9, 999, 0)]
    assert order == ["document 1", "document 2", "document 0"]
    n = len(next(iter(k.kept.values())).chunks)
    assert len(k.top(frozenset({"m"}), 9, 2 * n, 0)) == 2
    assert len(k.top(frozenset({"m"}), 1, 999, 0)) == 1
    assert k.top(frozenset({"other"}), 9, 999, 0) == []


@pytest.mark.parametrize(("messages", "limit", "roles"), [
    ([{"role": "system", "content": "abc"}], 100, ["system"]),
    ([{"role": "system", "content": "abc", "name": "x"}], 100, []),  # not replayable as is
    ([{"role": "user", "content": [{"type": "text", "text": "hello"}]}], 100, ["user"]),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], 100, []),
    ([{"role": "system", "content": "abc"}, {"role": "user", "content": "d"}], 6, []),
])
def test_cut_messages(messages: list[Any], limit: int, roles: list[str]) -> None:
    cut = cut_messages(messages, limit)
    assert [m["role"] for m in cut] == roles
    if cut:
        data = render("chat", {"messages": cut})
        assert len(data) <= limit
        assert render("chat", {"messages": messages}).startswith(data)
    seed = zlib.crc32(b"m")
    assert chain(render("chat", {"messages": cut}), seed, 4, 99) == chain(
        render("chat", {"messages": messages})[:len(render("chat", {"messages": cut}))],
        seed, 4, 99)


def test_a_system_prompt_shared_whole_is_kept_whole_past_the_chunk_boundary() -> None:
    # 587 rendered bytes: 9 full chunks of 64 and 11 bytes more; the users' requests share
    # the chunks, and three of them the whole message: a replay must carry it to its end
    k = PrefixKeeper(P)
    for who in ("alice", "bob", "carol"):
        send(k, chat(SYSTEM, f"private words of {who} " * 10), who)
    assert len(k) == 1
    kept = next(iter(k.kept.values()))
    assert kept.body["messages"] == [{"role": "system", "content": SYSTEM}]
    assert kept.size == len(SYSTEM) and k.bytes == len(SYSTEM)


def test_a_message_shared_up_to_the_boundary_only_is_cut_there() -> None:
    # the third user's system prompt differs after the last shared chunk: two senders
    # sent it whole, three only up to the boundary, so only the boundary's bytes are kept
    k = PrefixKeeper(P)
    other = SYSTEM[:-5] + "XXXXX"
    for who, system in (("alice", SYSTEM), ("bob", SYSTEM), ("carol", other)):
        send(k, chat(system, f"private words of {who}"), who)
    kept = next(iter(k.kept.values()))
    content = kept.body["messages"][0]["content"]
    assert len(content) < len(SYSTEM) and SYSTEM.startswith(content)
    assert (len("system") + 1 + len(content)) % 64 == 0  # cut at the chunk boundary
    # a third sender of the whole message later: the kept text grows to it, same chunks
    chunks = kept.chunks
    send(k, chat(SYSTEM, "dan's question"), "dan")
    assert len(k) == 1
    kept = next(iter(k.kept.values()))
    assert kept.body["messages"][0]["content"] == SYSTEM and kept.chunks == chunks
    assert k.bytes == len(SYSTEM)
