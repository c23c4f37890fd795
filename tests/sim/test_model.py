"""Table-driven unit tests of the pure simulator model (no sockets, no sleeping)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from warmgw.sim.faults import Faults
from warmgw.sim.model import (
    Admission,
    ColdStartModel,
    LatencyModel,
    Scheduler,
    SimConfig,
    chat_prompt_tokens,
    completion_prompt_tokens,
    generated_text,
)


@pytest.mark.parametrize(
    ("tokens", "bucket"),
    [(0, 16), (1, 16), (16, 16), (17, 256), (256, 256), (257, 1024), (4096, 4096), (9999, 4096)],
)
def test_prompt_bucket(tokens: int, bucket: int) -> None:
    assert ColdStartModel(SimConfig()).prompt_bucket(tokens) == bucket


@pytest.mark.parametrize(
    ("max_running", "buckets"),
    [(1, (1,)), (2, (1, 2)), (12, (1, 2, 4, 8, 12)), (16, (1, 2, 4, 8, 16))],
)
def test_batch_buckets(max_running: int, buckets: tuple[int, ...]) -> None:
    assert SimConfig(max_running=max_running).batch_buckets == buckets


@pytest.mark.parametrize(("running", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (9, 12), (12, 12)])
def test_batch_bucket(running: int, bucket: int) -> None:
    assert ColdStartModel(SimConfig(max_running=12)).batch_bucket(running) == bucket


COLD = SimConfig(cold_shape_penalty=0.5, cold_batch_penalty=0.25, max_running=8)


@pytest.mark.parametrize(
    ("steps", "penalties"),
    [
        # (prompt tokens, running incl. this request) -> penalty paid
        ([(10, 1), (10, 1), (16, 1)], [0.75, 0.0, 0.0]),  # same buckets: paid once
        ([(10, 1), (100, 1), (10, 2)], [0.75, 0.5, 0.25]),  # new shape, then new batch size
        ([(10, 3), (10, 4), (10, 2), (10, 1)], [0.75, 0.0, 0.25, 0.25]),  # 3,4 share bucket 4
        ([(5000, 8), (4096, 5)], [0.75, 0.0]),  # above the last bucket = the last bucket
    ],
)
def test_cold_penalty_paid_once_per_bucket(
    steps: list[tuple[int, int]], penalties: list[float]
) -> None:
    cold = ColdStartModel(COLD)
    assert [cold.admit(p, r) for p, r in steps] == penalties


def test_reset_makes_cold_again() -> None:
    cold = ColdStartModel(COLD)
    assert cold.admit(10, 1) == 0.75
    assert cold.is_warm(10, 1)
    assert cold.warm_prompt_buckets == {16} and cold.warm_batch_buckets == {1}
    cold.reset()
    assert not cold.is_warm(10, 1)
    assert cold.admit(10, 1) == 0.75
    assert cold.admit(10, 1) == 0.0


def test_latency_model_formula_and_cold_flag() -> None:
    cfg = SimConfig(ttft_base=0.1, ttft_per_prompt_token=0.01, itl=0.02, cold_shape_penalty=1.0)
    lat = LatencyModel(cfg, ColdStartModel(cfg), random.Random(0))
    first = lat.plan(prompt_tokens=10, max_tokens=5, running=1)
    assert first.paid_cold is True
    assert first.ttft == pytest.approx(0.1 + 0.1 + 1.0)
    assert first.per_token == pytest.approx(0.02)
    second = lat.plan(prompt_tokens=10, max_tokens=5, running=1)
    assert second.paid_cold is False
    assert second.ttft == pytest.approx(0.2)


def test_zero_penalty_is_not_a_cold_hit() -> None:
    cfg = SimConfig()
    assert LatencyModel(cfg, ColdStartModel(cfg), random.Random(0)).plan(5, 5, 1).paid_cold is False


def test_jitter_is_bounded_and_seeded() -> None:
    cfg = SimConfig(ttft_base=1.0, ttft_per_prompt_token=0.0, itl=1.0, jitter=0.1)

    def draws(seed: int) -> list[float]:
        lat = LatencyModel(cfg, ColdStartModel(cfg), random.Random(seed))
        return [lat.plan(1, 1, 1).ttft for _ in range(50)]

    a = draws(1)
    assert a == draws(1)
    assert a != draws(2)
    assert all(0.9 <= x <= 1.1 for x in a)
    assert max(a) - min(a) > 0.05  # it does vary


@pytest.mark.parametrize(
    ("ops", "running", "waiting", "admitted"),
    [
        # ops: ("s", id) submit, ("r", id) release; admitted = every Admission, in order
        ([("s", 1), ("s", 2)], 2, 0, [(1, 1), (2, 2)]),
        ([("s", 1), ("s", 2), ("s", 3), ("s", 4)], 2, 2, [(1, 1), (2, 2)]),
        ([("s", 1), ("s", 2), ("s", 3), ("s", 4), ("r", 1)], 2, 1, [(1, 1), (2, 2), (3, 2)]),
        ([("s", 1), ("s", 2), ("s", 3), ("s", 4), ("r", 3), ("r", 1)], 2, 0,
         [(1, 1), (2, 2), (4, 2)]),  # a waiting request left the queue
        ([("s", 1), ("r", 1), ("r", 1), ("r", 99)], 0, 0, [(1, 1)]),  # unknown ids ignored
        ([("s", 1), ("s", 2), ("s", 3), ("r", 1), ("r", 2), ("s", 4)], 2, 0,
         [(1, 1), (2, 2), (3, 2), (4, 2)]),
    ],
)  # fmt: skip
def test_scheduler_fifo_and_counts(
    ops: list[tuple[str, int]], running: int, waiting: int, admitted: list[tuple[int, int]]
) -> None:
    s = Scheduler(max_running=2)
    seen: list[Admission] = []
    for op, rid in ops:
        if op == "s":
            a = s.submit(rid)
            seen.extend([a] if a else [])
        else:
            seen.extend(s.release(rid))
    assert (s.running, s.waiting) == (running, waiting)
    assert [tuple(a) for a in seen] == admitted


def test_scheduler_rejects_duplicate_submit() -> None:
    s = Scheduler(max_running=1)
    s.submit(1)
    with pytest.raises(ValueError, match="already submitted"):
        s.submit(1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", ""),
        ("max_model_len", 0),
        ("load_time", -1.0),
        ("ttft_base", -0.1),
        ("itl", float("nan")),
        ("max_running", 0),
        ("max_running", 2.5),
        ("default_max_tokens", True),
        ("cold_shape_penalty", -1),
        ("cold_batch_penalty", "1"),
        ("prompt_buckets", ()),
        ("prompt_buckets", (16, 16)),
        ("prompt_buckets", (256, 16)),
        ("prompt_buckets", [16, 32]),
        ("jitter", 1.0),
        ("jitter", -0.1),
        ("seed", 1.5),
    ],
)
def test_config_validation_names_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        SimConfig(**{field: value})
    assert f"SimConfig.{field}" in str(info.value)
    assert repr(value) in str(info.value)


def test_valid_config_accepts_defaults_and_ints_for_floats() -> None:
    assert SimConfig(load_time=1, itl=0).load_time == 1


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [
        ("one two  three\nfour", 4),
        ("", 0),
        (["a b", "c"], 3),
        ([5, 6, 7], 3),
        ([[1, 2], [3]], 3),
    ],
)
def test_completion_prompt_tokens(prompt: object, tokens: int) -> None:
    assert completion_prompt_tokens(prompt) == tokens


@pytest.mark.parametrize("prompt", [None, 5, [], [1, "a"], {"a": 1}])
def test_completion_prompt_rejects_bad_shapes(prompt: object) -> None:
    with pytest.raises(ValueError, match="prompt"):
        completion_prompt_tokens(prompt)


@pytest.mark.parametrize(
    ("messages", "tokens"),
    [
        # + 8 template tokens per conversation, closer to real vLLM 0.32
        ([{"role": "user", "content": "hi there"}], 2 + 8),
        ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}], 3 + 8),
        ([{"role": "user", "content": [{"type": "text", "text": "a b c"}]}], 3 + 8),
        ([{"role": "assistant", "content": None}], 8),
    ],
)
def test_chat_prompt_tokens(messages: object, tokens: int) -> None:
    assert chat_prompt_tokens(messages) == tokens


@pytest.mark.parametrize("messages", [None, [], "hi", [1], [{"content": 5}]])
def test_chat_prompt_rejects_bad_shapes(messages: object) -> None:
    with pytest.raises(ValueError):
        chat_prompt_tokens(messages)


def test_generated_text_is_deterministic_pseudo_words() -> None:
    text = generated_text(20, salt=3)
    assert text == generated_text(20, salt=3)
    assert text != generated_text(20, salt=4)
    assert text.strip() and text.replace(" ", "").isalpha()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": "x"}, "error_rate"),
        ({"hang": 1}, "hang"),
        ({"slow_drip": -1}, "slow_drip"),
        ({"drop_mid_stream": -1}, "drop_mid_stream"),
        ({"drop_mid_stream": 1.5}, "drop_mid_stream"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_faults_validation(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Faults().updated(changes)


def test_faults_update_keeps_other_fields() -> None:
    f = Faults().updated({"error_rate": 0.5}).updated({"hang": True})
    assert (f.error_rate, f.hang, f.drop_mid_stream) == (0.5, True, None)
