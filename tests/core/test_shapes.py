"""Request shapes and features, the traffic profile and coverage: pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from warmgw.core.facts import RequestFacts
from warmgw.core.profile import Coverage, ProfileParams, TrafficProfile
from warmgw.core.shapes import (
    PLAIN,
    Features,
    ShapeKey,
    TokenRatios,
    coarse,
    features_of,
    fine,
    spec_id,
)

SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
IMAGE = {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "x"}}]}


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"model": "m", "prompt": "hi"}, PLAIN),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, PLAIN),
        ({"model": "m", "prompt": "hi", "n": 1, "logprobs": None}, PLAIN),  # defaults said
        ({"model": "m", "response_format": {"type": "text"}}, PLAIN),  # text: no grammar
        ({"model": "m", "prompt": "hi", "logprobs": 3}, Features(logprobs=4)),
        ({"model": "m", "prompt": "hi", "logprobs": 0}, Features(logprobs=1)),
        ({"model": "m", "messages": [], "logprobs": True, "top_logprobs": 2},
         Features(logprobs=3)),
        ({"model": "m", "messages": [], "logprobs": False}, PLAIN),
        ({"model": "m", "prompt": "x", "prompt_logprobs": 1}, Features(logprobs=1)),
        ({"model": "m", "prompt": "x", "n": 3}, Features(n=3)),
        ({"model": "m", "messages": [IMAGE]}, Features(media="image")),
        ({"model": "m", "messages": [IMAGE, {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {}}]}]}, Features(media="audio+image")),
    ],
)
def test_features_of_a_request(body: dict[str, Any], want: Features) -> None:
    got, spec_bytes = features_of(body)
    assert got == want
    assert spec_bytes == 0


def test_specs_have_one_id_whatever_their_key_order_and_are_kept_as_sent() -> None:
    kept: dict[str, str] = {}
    a = {"model": "m", "messages": [], "response_format": SCHEMA}
    b = {"model": "m", "messages": [], "response_format": {
        "json_schema": {"schema": {"type": "object"}, "name": "a"}, "type": "json_schema"}}
    fa, bytes_a = features_of(a, lambda i, s: kept.setdefault(i, s))
    fb, _ = features_of(b, lambda i, s: kept.setdefault(i, s))
    assert fa.schema and fa.schema == fb.schema
    assert list(kept.values()) == [spec_id({"response_format": SCHEMA})[1]]
    assert kept[fa.schema].startswith('{"response_format":{"type":"json_schema"')  # as sent
    assert bytes_a == len(kept[fa.schema])
    ft, _ = features_of({"model": "m", "messages": [], "tools": TOOLS}, None)
    ft2, _ = features_of({"model": "m", "messages": [], "tools": TOOLS,
                          "tool_choice": "required"}, None)
    assert ft.tools and ft2.tools and ft.tools != ft2.tools  # tool_choice is part of it


@pytest.mark.parametrize(("tokens", "bucket"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3),
                                                 (1023, 10), (1024, 11)])
def test_coarse_buckets_are_powers_of_two(tokens: int, bucket: int) -> None:
    assert coarse(tokens) == bucket


def test_fine_buckets_are_quarter_octaves() -> None:
    assert [fine(n) for n in (1, 2, 3, 4, 8, 16)] == [0, 4, 6, 8, 12, 16]
    # each bucket is under 19 % wide: sizes 19 % apart never share one
    for n in range(2, 5000):
        assert fine(int(n * 1.19) + 1) > fine(n)


def test_token_ratio_starts_from_tokenize_then_follows_the_replicas_counts() -> None:
    r = TokenRatios()
    assert r.estimate("m", 64 + 400) == 100  # 4 bytes a token until calibrated
    r.set("m", 600, 100)  # /tokenize: 6 bytes a token on sample text
    assert r.estimate("m", 64 + 600) == 100
    r.set("m", 100, 100)  # a later /tokenize does not undo what users taught
    for _ in range(200):
        r.learn("m", 64 + 300, 100)  # users' prompts: 3 bytes a token, as replicas count
    assert r.estimate("m", 64 + 300) == pytest.approx(100, abs=2)


def test_facts_shape_uses_the_exact_size_when_the_replica_told_it() -> None:
    f = RequestFacts("chat", "m", True, 464, 16, tokens=100, features=Features(n=2))
    assert f.shape(0) == ShapeKey("m", "chat", True, fine(100), Features(n=2))
    assert f.shape(37) == ShapeKey("m", "chat", True, fine(37), Features(n=2))
    assert RequestFacts("embeddings", "m", False, 10, 16).shape(5) is None


def key(bucket: int, model: str = "m", features: Features = PLAIN) -> ShapeKey:
    return ShapeKey(model, "completions", False, bucket, features)


def test_profile_counts_decay_and_remember_sizes() -> None:
    p = TrafficProfile(ProfileParams(half_life=100.0))
    for _ in range(8):
        p.record(key(20), 40, 0.0)
    p.record(key(20), 35, 0.0)
    p.record(key(24), 0, 0.0)  # size unknown (a stream without usage)
    (k, learned, share), (k2, learned2, _) = p.top(0.0)
    assert (k, learned.lo, learned.hi) == (key(20), 35, 40)
    assert share == pytest.approx(0.9)
    assert (k2, learned2.lo, learned2.hi) == (key(24), 0, 0)
    assert learned.decayed(100.0, 100.0) == pytest.approx(4.5)  # halved


def test_profile_keeps_the_top_shapes_covering_the_share_and_pinned_ones() -> None:
    p = TrafficProfile(ProfileParams(coverage=0.9))
    for b in range(10):
        for _ in range(100 - b * 10):
            p.record(key(b), 10, 0.0)
    top = [k.bucket for k, _, _ in p.top(0.0)]
    assert top == list(range(top[-1] + 1)) and len(top) < 10  # most used first, a prefix
    p.pin(key(9), 0.0)  # a cold hit
    assert key(9) in [k for k, _, _ in p.top(1.0)]
    assert [k.model for k, _, _ in p.top(0.0, frozenset({"other"}))] == []


def test_profile_memory_is_bounded() -> None:
    p = TrafficProfile(ProfileParams(max_shapes=50, spec_budget=100))
    for b in range(500):
        p.record(key(b), 1, float(b))
    assert len(p.shapes) <= 50
    assert key(499) in p.shapes  # the newest stay
    p.keep_spec("a", "x" * 60)
    p.keep_spec("b", "y" * 60)  # over the budget: not kept
    assert list(p.specs) == ["a"] and p.specs_dropped == 1
    off = TrafficProfile(ProfileParams(keep_specs=False))
    off.keep_spec("a", "{}")
    assert off.specs == {}


def test_coverage_is_the_covered_share_of_the_window() -> None:
    c = Coverage(window=120.0)
    assert c.ratio(0.0) is None
    for i in range(10):
        c.add(i < 3, 10.0)
    assert c.ratio(10.0) == pytest.approx(0.3)
    for _ in range(10):
        c.add(True, 100.0)  # another minute
    assert c.ratio(100.0) == pytest.approx(13 / 20)
    assert c.ratio(400.0) is None  # all of it older than the window


def test_a_cold_hit_is_named_for_what_was_new_to_the_replica() -> None:
    from warmgw.core.routing import cold_reason

    schema = Features(schema="s1")
    big = key(40, features=schema)
    # the replica knew that schema at another size: only the size was new
    assert cold_reason(big, frozenset(), [key(20, features=schema), big]) == "prompt_size"
    assert cold_reason(big, frozenset(), [key(20), big]) == "schema"  # never seen the schema
    lora = key(20, model="sql-lora")
    assert cold_reason(lora, frozenset({"sql-lora"}), [key(20), lora]) == "adapter"
    assert cold_reason(lora, frozenset({"sql-lora"}),
                       [key(30, model="sql-lora"), lora]) == "prompt_size"
    both = key(20, features=Features(schema="s1", logprobs=1))
    assert cold_reason(both, frozenset(), [key(20, features=schema), both]) == "logprobs"
