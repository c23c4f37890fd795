"""Warmup profile shapes and the convergence rule."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from warmgw.core.warm import Convergence, WarmProfile, WarmShape

# -- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "key"),
    [
        (WarmShape("chat", True, 16, 8), "chat/stream/p16/o8"),
        (WarmShape("completions", False, 1024, 16), "completions/json/p1024/o16"),
        (WarmShape("chat", False, 16, 16, concurrency=1), "chat/json/p16/o16"),
        (WarmShape("chat", False, 16, 16, concurrency=8), "chat/json/p16/o16/x8"),
    ],
)
def test_shape_key(shape: WarmShape, key: str) -> None:
    assert shape.key == key


OLD_GRID = (16, 256, 1024, 4096)  # the fixed grid of before, as an explicit config


def test_default_round_covers_every_combination_then_bursts() -> None:
    p = WarmProfile()
    shapes = p.shapes(None)
    singles = [s for s in shapes if s.concurrency == 1]
    bursts = [s for s in shapes if s.concurrency > 1]
    lengths = p.prompt_grid(None)
    # every prompt length x 1 max_tokens x 2 kinds x stream/not
    assert len(singles) == 4 * len(lengths)
    assert {(s.kind, s.stream, s.prompt_tokens, s.max_tokens) for s in singles} == {
        (k, st, n, 16)
        for k in ("chat", "completions")
        for st in (True, False)
        for n in lengths
    }
    # bursts come last, smallest request, vLLM's capture sizes up to max_batch (16)
    assert shapes[-len(bursts):] == bursts
    assert [s.concurrency for s in bursts] == [2, 4, 8, 16]
    assert {(s.kind, s.stream, s.prompt_tokens, s.max_tokens) for s in bursts} == {
        ("chat", False, 1, 16)
    }
    assert len({s.key for s in shapes}) == len(shapes), "keys must be unique in a round"


@pytest.mark.parametrize(
    ("max_model_len", "sizes"),
    [
        # every power-of-two bucket up to the largest prompt accepted beside max_tokens 16
        (1024, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1008]),
        (4096, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4080]),
        (32768, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                 32752]),
        (None, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4080]),  # not said: 4096
        (1040, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]),  # 1024 is the largest itself
    ],
)
def test_default_grid_has_every_power_of_two_bucket(max_model_len: int | None,
                                                    sizes: list[int]) -> None:
    p = WarmProfile()
    assert p.prompt_grid(max_model_len) == sizes
    largest = (max_model_len or 4096) - 16
    buckets = {n.bit_length() for n in p.prompt_grid(max_model_len)}
    assert buckets == set(range(1, largest.bit_length() + 1)), "a bucket without a shape"
    sent = {s.prompt_tokens for s in p.shapes(max_model_len) if s.concurrency == 1}
    assert sent == set(sizes)


def test_extra_prompt_lengths_add_finer_buckets() -> None:
    p = WarmProfile(extra_prompt_lengths=(24, 48, 96, 5000))
    assert p.prompt_grid(1024) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1008]


@pytest.mark.parametrize(
    ("max_model_len", "max_tokens", "lengths"),
    [
        (None, (16,), [16, 256, 1024, 4080]),  # 4096 when the model does not say
        (32768, (16,), [16, 256, 1024, 4096]),
        (4112, (16,), [16, 256, 1024, 4096]),  # 4096 + 16: just fits
        (2048, (16,), [16, 256, 1024, 2032]),  # 2048 - 16
        (512, (16,), [16, 256, 496]),  # 1024 and 4096 both clip to 496: one shape
        (2048, (16, 128), [16, 256, 1024, 1920]),  # the largest max_tokens counts
        (300, (16,), [16, 256, 284]),
        (17, (16,), [1]),  # too small for any: one token, once
    ],
)
def test_configured_prompt_lengths_clip_to_max_model_len(
    max_model_len: int | None, max_tokens: tuple[int, ...], lengths: list[int]
) -> None:
    p = WarmProfile(prompt_lengths=OLD_GRID, max_tokens=max_tokens)
    shapes = p.shapes(max_model_len)
    got = sorted({s.prompt_tokens for s in shapes if s.concurrency == 1})
    assert got == lengths
    if max_model_len is not None and lengths != [1]:  # every request fits the model
        assert all(s.prompt_tokens + s.max_tokens <= max_model_len for s in shapes)
    # no duplicated shape after clipping
    assert len({s.key for s in shapes}) == len(shapes)
    # the bursts use the smallest (clipped) prompt
    assert {s.prompt_tokens for s in shapes if s.concurrency > 1} == {lengths[0]}


@pytest.mark.parametrize(
    ("concurrency", "bursts"),
    [
        ((1, 2, 4, 8, 16), [2, 4, 8, 16]),
        ((1,), []),  # no bursts
        ((8, 2, 2, 1, 4), [2, 4, 8]),  # sorted, deduplicated, 1 is not a burst
        ((3,), [3]),
    ],
)
def test_concurrency_bursts(concurrency: tuple[int, ...], bursts: list[int]) -> None:
    shapes = WarmProfile(prompt_lengths=OLD_GRID, concurrency=concurrency).shapes(None)
    assert [s.concurrency for s in shapes if s.concurrency > 1] == bursts
    assert all(s.key.endswith(f"/x{c}") for s, c in zip(shapes[16:], bursts, strict=True))


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(16, [1, 2, 4, 8, 16]), (64, [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]), (2, [1, 2]),
     (12, [1, 2, 4, 8, 12])],
)
def test_default_bursts_are_vllms_graph_capture_sizes(max_batch: int, sizes: list[int]) -> None:
    assert WarmProfile(max_batch=max_batch).batch_sizes() == sizes


def test_profile_with_one_kind_and_stream_only() -> None:
    p = WarmProfile(prompt_lengths=(64,), kinds=("completions",), streams=(True,), concurrency=(2,))
    assert [s.key for s in p.shapes(None)] == [
        "completions/stream/p64/o16",
        "completions/json/p64/o16/x2",  # bursts are non-stream
    ]


# -- convergence -----------------------------------------------------------------------------

PROFILE = WarmProfile(tolerance=0.15, abs_tolerance=0.005)
A, B = "chat/json/p16/o16", "chat/stream/p16/o16"


def rounds_to_converge(
    rounds: list[Mapping[str, float]], reference: Mapping[str, float] | None
) -> int | None:
    """The 1-based round at which warmup converged, None if it never did."""
    conv = Convergence(PROFILE, reference)
    for i, lat in enumerate(rounds, start=1):
        if conv.add_round(lat):
            return i
    return None


COLD, FAST = 10.0, 0.2

CONVERGENCE = [
    # (what, rounds of latencies, fleet reference, converged at round)
    ("cold, fast, steady, no reference", [{A: COLD}, {A: FAST}, {A: FAST}], None, 3),
    ("first replica needs two rounds even if warm", [{A: FAST}, {A: FAST}], None, 2),
    ("one round is never enough without reference", [{A: FAST}], None, None),
    ("warm replica, reference", [{A: FAST}], {A: FAST}, 1),
    ("within tolerance of reference", [{A: FAST * 1.14}], {A: FAST}, 1),
    ("beyond tolerance of reference", [{A: FAST * 1.2}], {A: FAST}, None),
    ("cold, with reference", [{A: COLD}, {A: FAST}], {A: FAST}, 2),
    ("still falling fast", [{A: 10.0}, {A: 5.0}, {A: 2.0}, {A: 0.5}], None, None),
    ("falling, then stops", [{A: 10.0}, {A: 5.0}, {A: 2.0}, {A: 1.9}], None, 4),
    ("improved by just under tolerance", [{A: 1.0}, {A: 0.86}], None, 2),
    ("improved by just over tolerance", [{A: 1.0}, {A: 0.84}], None, None),
    ("got slower: settled", [{A: 0.2}, {A: 0.3}], None, 2),
    ("one shape lags", [{A: COLD, B: COLD}, {A: FAST, B: 5.0}, {A: FAST, B: FAST},
                        {A: FAST, B: FAST}], None, 4),
    ("mixed: A by reference, B by rounds", [{A: FAST, B: COLD}, {A: FAST, B: FAST},
                                            {A: FAST, B: FAST}], {A: FAST}, 3),
    ("reference for another shape only", [{B: FAST}], {A: FAST}, None),
    ("empty round never converges", [{}, {}], None, None),
    # tiny latencies: noise below abs_tolerance (5 ms) is not an improvement
    ("noise within abs_tolerance", [{A: 0.010}, {A: 0.006}], None, 2),
    ("real gain above abs_tolerance", [{A: 0.020}, {A: 0.012}, {A: 0.011}], None, 3),
    ("noise above a tiny reference", [{A: 0.0040}], {A: 0.001}, 1),
]


@pytest.mark.parametrize(
    ("rounds", "reference", "at"),
    [pytest.param(r, ref, at, id=what) for what, r, ref, at in CONVERGENCE],
)
def test_convergence(
    rounds: list[Mapping[str, float]], reference: Mapping[str, float] | None, at: int | None
) -> None:
    assert rounds_to_converge(rounds, reference) == at


def test_unsettled_names_the_shapes_still_improving() -> None:
    conv = Convergence(PROFILE, None)
    assert conv.unsettled() == []
    assert conv.last == {}
    conv.add_round({A: COLD, B: COLD})
    assert sorted(conv.unsettled()) == [A, B]
    conv.add_round({A: FAST, B: 5.0})
    conv.add_round({A: FAST, B: FAST})
    assert conv.unsettled() == [B]
    assert conv.last == {A: FAST, B: FAST}


def test_reference_is_copied() -> None:
    ref = {A: FAST}
    conv = Convergence(PROFILE, ref)
    ref[A] = COLD  # the registry's reference moves on; this warmup keeps its own
    assert not conv.add_round({A: 1.0})
