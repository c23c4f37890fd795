"""Hot shared prefixes kept as text, so that a replica that joins (or a pool about to take
the traffic) can be sent them before users arrive (`routing.prefix.keep_prefixes`).

A prefix here is the leading full chunks of a prompt (core.prefix's chained hashes). Each
chunk hash remembers who sent it (a hash of the session key, the `user` field or the
client address; at most `keep_min_users` of them, in a bounded LRU of candidates). A
request's deepest chunk sent by `keep_min_users` distinct senders is its shared prefix:
only then is text kept, and only the shared bytes (cut at the chunk boundary), so what one
sender alone sent is never stored. A chat is kept as message structure (the leading
messages, the last one cut to the boundary), a completion as its prompt's head, so each
replays as a valid request. A chat's leading whole messages are counted the same way (a
hash of each of the first WHOLE_MESSAGES message prefixes: the rendering up to the end
of message i): when
`keep_min_users` senders shared whole messages reaching past the chunk boundary, those
messages are kept whole, so a replay caches the system prompt up to its last token, not
only up to the last full chunk (the model's cache blocks past that boundary would
otherwise miss on every newcomer).

A kept prefix is named by its last chunk's hash; a deeper shared prefix that extends a
kept one replaces it (replaying the deeper one warms both). Each has a heat: requests that
carried it, halving every `ttl` seconds. The kept text is bounded by `keep_bytes`; the
least hot goes first. Pure: the clock is passed in.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from warmgw.core.prefix import PrefixParams, chain, render, texts_of

MAX_CANDIDATES = 65536  # chunk hashes whose senders are remembered
SEP = 1  # bytes of the separator core.prefix.render puts between texts
WHOLE_SALT = 0x5A17  # message-prefix hashes apart from chunk hashes
WHOLE_MESSAGES = 4  # leading messages whose whole sharing is counted (system, few-shot)


def message_prefixes(messages: Any, model: str, limit: int) -> list[int]:
    """The chained hash of the rendering (core.prefix.render) up to the end of each of the
    first `limit` messages."""
    if not isinstance(messages, list):
        return []
    out: list[int] = []
    h = zlib.crc32(model.encode()) ^ WHOLE_SALT
    for i, m in enumerate(messages[:limit]):
        text = "\x1e".join(texts_of([m]))
        h = zlib.crc32((("\x1e" if i else "") + text).encode("utf-8", "surrogatepass"), h)
        out.append(h)
    return out


class Kept:
    """One kept prefix: a request body (without model and max_tokens) that renders to it."""

    __slots__ = ("at", "body", "chunks", "heat", "model", "route", "size", "whole")

    def __init__(self, route: str, model: str, body: dict[str, Any], chunks: tuple[int, ...],
                 size: int, now: float) -> None:
        self.route = route  # "chat" or "completions"
        self.model = model
        self.body = body  # {"messages": [...]} or {"prompt": "..."}
        self.chunks = chunks  # its chained chunk hashes, as a replay of it renders
        self.size = size  # bytes of text kept
        self.whole = 0  # leading messages kept whole because that many senders shared them
        self.heat = 0.0
        self.at = now

    def heat_at(self, now: float, half_life: float) -> float:
        fade: float = 0.5 ** (max(0.0, now - self.at) / half_life)
        return self.heat * fade


def _cut(text: str, n: int) -> str:
    """The first n bytes of text's UTF-8 form, without a split character."""
    return text.encode("utf-8", "surrogatepass")[:n].decode("utf-8", "ignore")


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def cut_messages(messages: list[Any], limit: int) -> list[dict[str, str]]:
    """The leading messages whose rendering (core.prefix.render) lies within limit bytes,
    the last one's text cut at the limit. Stops before a message it cannot replay as it
    was rendered (content that is not text, or fields besides role and content)."""
    out: list[dict[str, str]] = []
    pos = 0
    for m in messages:
        if not isinstance(m, Mapping) or set(m) - {"role", "content"}:
            break
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            break
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                break
            if len(content) != 1:  # parts render as separate texts: keep it simple
                break
            content = content[0]["text"]
        if not isinstance(content, str):
            break
        start = pos + (SEP if out else 0) + _utf8(role) + SEP  # where the content begins
        if start >= limit:
            break
        text = content if start + _utf8(content) <= limit else _cut(content, limit - start)
        out.append({"role": role, "content": text})
        pos = start + _utf8(text)
        if text is not content:
            break
    return out


class PrefixKeeper:
    def __init__(self, params: PrefixParams, max_candidates: int = MAX_CANDIDATES) -> None:
        self.p = params
        self.max_candidates = max_candidates
        self._senders: OrderedDict[int, set[int]] = OrderedDict()  # chunk -> who sent it
        self.kept: dict[int, Kept] = {}  # last chunk hash -> kept prefix
        self._within: dict[int, int] = {}  # every chunk of a kept prefix -> its name
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.kept)

    def observe(self, route: str, obj: Mapping[str, Any], model: str,
                chunks: tuple[int, ...], who: str, now: float) -> None:
        """A user request: chunks are its prompt's chained hashes, who its sender."""
        if not chunks:
            return
        need = self.p.keep_min_users
        u = hash(who)
        deepest = -1
        for i, h in enumerate(chunks):
            if self._count(h, u) >= need:
                deepest = i
        whole = 0
        if route == "chat":  # the leading run of messages shared whole
            for i, h in enumerate(message_prefixes(obj.get("messages"), model,
                                                   WHOLE_MESSAGES)):
                if self._count(h, u) >= need and whole == i:
                    whole = i + 1
        senders = self._senders
        while len(senders) > self.max_candidates:
            senders.popitem(last=False)
        if deepest < 0:
            return
        name = self._within.get(chunks[deepest])
        if name is None or whole > self.kept[name].whole:
            self._keep(route, obj, model, deepest, now, whole)
            return
        k = self.kept[name]
        k.heat = k.heat_at(now, self.p.ttl) + 1.0
        k.at = now

    def _count(self, h: int, u: int) -> int:
        """Sender u sent hash h: how many distinct senders it has (up to keep_min_users)."""
        s = self._senders.get(h)
        if s is None:
            self._senders[h] = {u}
            return 1
        self._senders.move_to_end(h)
        if len(s) < self.p.keep_min_users:
            s.add(u)
        return len(s)

    def _keep(self, route: str, obj: Mapping[str, Any], model: str, deepest: int, now: float,
              whole: int = 0) -> int | None:
        """Keep the text of the request's first deepest + 1 chunks (as a replay of it renders
        them), or its first `whole` messages if they reach further; its name, or None if it
        was not kept."""
        limit = (deepest + 1) * self.p.chunk_bytes
        body: dict[str, Any]
        if route == "chat":
            messages = obj.get("messages")
            if not isinstance(messages, list):
                return None
            cut = cut_messages(messages, limit)
            if whole:
                full = cut_messages(messages[:whole], 1 << 62)
                if len(full) == whole and len(render("chat", {"messages": full})) > limit:
                    cut = full
                else:
                    whole = 0
            if not cut:
                return None
            body = {"messages": cut}
            size = sum(_utf8(m["content"]) for m in cut)
        else:
            prompt = obj.get("prompt")
            if not isinstance(prompt, str):
                return None
            text = _cut(prompt, limit)
            body = {"prompt": text}
            size = _utf8(text)
        p = self.p
        mine = chain(render(route, body), zlib.crc32(model.encode()), p.chunk_bytes,
                     p.max_chunks)
        if not mine or size > p.keep_bytes:
            return None  # nothing a replay would cache as a full chunk
        name = mine[-1]
        heat = 0.0
        for h in mine[:-1]:  # shallower prefixes it extends: replaying it warms them too
            old = self.kept.get(h)
            if old is not None:
                heat += old.heat_at(now, p.ttl)
                self._drop(h)
        k = self.kept.get(name)
        if k is not None:  # kept already (the request's chunks ran past its replay's)
            k.heat = k.heat_at(now, p.ttl) + 1.0
            k.at = now
            if whole > k.whole:  # now shared whole: the same chunks, the message's tail too
                self.bytes += size - k.size
                k.body, k.size, k.whole = body, size, whole
                self._fit(name, now)
            return name
        k = self.kept[name] = Kept(route, model, body, mine, size, now)
        k.heat = heat + 1.0
        k.whole = whole
        for h in mine:
            self._within[h] = name
        self.bytes += size
        return self._fit(name, now)

    def _fit(self, name: int, now: float) -> int | None:
        """Within keep_bytes: the least hot out, the older first on a tie; name, or None
        if it went too."""
        p = self.p
        while self.bytes > p.keep_bytes:
            coldest = min(self.kept, key=lambda n: (self.kept[n].heat_at(now, p.ttl),
                                                    self.kept[n].at))
            self._drop(coldest)
            self.evicted += 1
            if coldest == name:
                return None
        return name

    def _drop(self, name: int) -> None:
        k = self.kept.pop(name)
        self.bytes -= k.size
        for h in k.chunks:
            if self._within.get(h) == name:
                del self._within[h]

    def top(self, models: frozenset[str], count: int, max_chunks: int, now: float
            ) -> list[Kept]:
        """The hottest kept prefixes of these models, hottest first: at most count of them,
        and no more chunks in all than max_chunks (what the replica's cache can hold)."""
        ranked = sorted((k for k in self.kept.values() if k.model in models),
                        key=lambda k: -k.heat_at(now, self.p.ttl))
        out: list[Kept] = []
        room = max_chunks
        for k in ranked:
            if len(out) >= count:
                break
            if len(k.chunks) <= room:
                out.append(k)
                room -= len(k.chunks)
        return out


def sender_of(obj: Mapping[str, Any], session: str | None, address: str) -> str:
    """Who sent a request, as keep_prefixes counts senders: the session key, else the
    OpenAI `user` field, else the client's address ("" when unknown: all such requests
    then count as one sender, so they never make a prefix shared on their own)."""
    if session is not None:
        return session
    user = obj.get("user")
    if isinstance(user, str) and user:
        return "user:" + user
    return "addr:" + address
