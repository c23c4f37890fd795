"""The traffic profile: which request shapes users send, learned from their requests, so
that the warmup sends what users send and not a guess.

Per feature-shape (core.shapes.ShapeKey: model or adapter, kind, stream, fine prompt
bucket, max_tokens bucket, features) it keeps a count that halves every `half_life`
seconds, and the smallest and largest exact prompt sizes seen (the replica's own
usage.prompt_tokens where it reported one), so that a warmup can send both ends of the
bucket. Memory is bounded: at most `max_shapes` shapes (the least used are dropped), and
the warmup takes only the top shapes that cover `coverage` of recent traffic. A shape that
cost a user a cold hit is pinned for `half_life` seconds, whatever its share.

Structured-output specs and tool lists are API structure, not prompt text: they are kept
once each (by id) within `spec_budget` bytes, so that a warmup can send the real schema;
`keep_specs: false` turns that off. No prompt text is ever kept here.

Coverage: of the user requests of the last `coverage_window` seconds, the share whose
feature-shape the serving replica's warmup had sent (Coverage).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from warmgw.core.shapes import ShapeKey


@dataclass(frozen=True, slots=True)
class ProfileParams:
    half_life: float = 900.0  # s; a shape's count halves in this long without requests
    coverage: float = 0.999  # the warmup takes the top shapes covering this share
    max_shapes: int = 512
    keep_specs: bool = True  # keep structured-output specs and tool lists (API structure)
    spec_budget: int = 1 << 20  # bytes of specs kept
    coverage_window: float = 3600.0  # s; warmgw_warmup_coverage_ratio looks this far back
    cold_ratio: float = 3.0  # a first use this much slower than the fleet is a cold hit


class Learned:
    __slots__ = ("at", "count", "hi", "lo", "pinned_until")

    def __init__(self, now: float) -> None:
        self.count = 0.0
        self.at = now
        self.lo = 0  # exact prompt tokens, smallest and largest seen (0: none yet)
        self.hi = 0
        self.pinned_until = 0.0

    def decayed(self, now: float, half_life: float) -> float:
        return self.count * 0.5 ** ((now - self.at) / half_life) if now > self.at else self.count


class TrafficProfile:
    def __init__(self, params: ProfileParams) -> None:
        self.p = params
        self.shapes: dict[ShapeKey, Learned] = {}
        self.specs: dict[str, str] = {}  # id -> canonical JSON
        self._spec_bytes = 0
        self.specs_dropped = 0  # specs not kept: over the budget

    def record(self, key: ShapeKey, prompt_tokens: int, now: float) -> None:
        """One user request of this shape; prompt_tokens its exact size (0: unknown)."""
        s = self.shapes.get(key)
        if s is None:
            if len(self.shapes) >= self.p.max_shapes:
                self._evict(now)
            s = self.shapes[key] = Learned(now)
        if now - s.at > 1.0:  # decay at most once a second (hot path); the error is tiny
            s.count = s.decayed(now, self.p.half_life)
            s.at = now
        s.count += 1.0
        if prompt_tokens > 0:
            if s.lo == 0 or prompt_tokens < s.lo:
                s.lo = prompt_tokens
            if prompt_tokens > s.hi:
                s.hi = prompt_tokens

    @property
    def spec_bytes(self) -> int:
        """Bytes of the specs kept (their canonical JSON)."""
        return self._spec_bytes

    def keep_spec(self, spec_id: str, canon: str) -> None:
        if not self.p.keep_specs or spec_id in self.specs:
            return
        if self._spec_bytes + len(canon) > self.p.spec_budget:
            self.specs_dropped += 1
            return
        self.specs[spec_id] = canon
        self._spec_bytes += len(canon)

    def pin(self, key: ShapeKey, now: float) -> None:
        """A cold hit: the warmup sends this shape for the next half_life, whatever its share."""
        s = self.shapes.get(key)
        if s is None:
            self.record(key, 0, now)
            s = self.shapes[key]
        s.pinned_until = now + self.p.half_life

    def _evict(self, now: float) -> None:
        """Drop the least used tenth (pinned shapes last)."""
        hl = self.p.half_life
        ranked = sorted(self.shapes.items(),
                        key=lambda kv: (kv[1].pinned_until > now, kv[1].decayed(now, hl)))
        for key, _ in ranked[: max(1, len(ranked) // 10)]:
            del self.shapes[key]

    def top(self, now: float, models: frozenset[str] | None = None
            ) -> list[tuple[ShapeKey, Learned, float]]:
        """The shapes that cover `coverage` of recent traffic (of these models, if given),
        most used first, with their shares; pinned shapes are always in."""
        hl = self.p.half_life
        rows = [(k, s, s.decayed(now, hl)) for k, s in self.shapes.items()
                if models is None or k.model in models]
        total = sum(c for _, _, c in rows)
        if total <= 0.0:
            return []
        rows.sort(key=lambda r: -r[2])
        out: list[tuple[ShapeKey, Learned, float]] = []
        covered = 0.0
        for k, s, c in rows:
            if covered < self.p.coverage * total or s.pinned_until > now:
                out.append((k, s, c / total))
                covered += c
        return out


class Coverage:
    """Covered and total user requests per minute, over a sliding window."""

    __slots__ = ("_ends", "_row", "minutes", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.minutes: deque[list[float]] = deque()  # [minute, covered, total]
        self._row: list[float] = [0.0, 0.0, 0.0]
        self._ends = -1.0  # when the current minute's row ends

    def add(self, covered: bool, now: float) -> None:
        row = self._row
        if now >= self._ends:
            minute = now // 60.0
            self._ends = minute * 60.0 + 60.0
            row = self._row = [minute, 0.0, 0.0]
            m = self.minutes
            m.append(row)
            while m and m[0][0] * 60.0 < now - self.window:
                m.popleft()
        if covered:
            row[1] += 1.0
        row[2] += 1.0

    def ratio(self, now: float) -> float | None:
        """Covered over total in the window; None with no request in it."""
        since = now - self.window
        covered = total = 0.0
        for minute, c, t in self.minutes:
            if minute * 60.0 + 60.0 >= since:
                covered += c
                total += t
        return covered / total if total else None
