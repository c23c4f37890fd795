"""Table-driven unit tests of the cold rules, the tokenizer rule, feature parsing and the
presets (pure: no sockets, no sleeping)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from typing import Any

import pytest

from warmgw.sim import COLD_RULES, SimConfig, cold_rules
from warmgw.sim.cli import add_arguments, config_from_args
from warmgw.sim.cold import ColdStartModel, LoraSlots
from warmgw.sim.features import BadField, Features, canonical_hash, parse_features
from warmgw.sim.tokens import (
    chat_prompt_tokens,
    chat_token_ids,
    completion_prompt_tokens,
    count_text_tokens,
    text_token_ids,
)

# ---------------------------------------------------------------- tokenizer rule


@pytest.mark.parametrize(
    ("text", "cpt", "tokens"),
    [
        ("hello big world", 0, 3),
        ("hello big world", 1, 13),
        ("hello big world", 3, 2 + 1 + 2),  # ceil(5/3), ceil(3/3), ceil(5/3)
        ("hello big world", 5, 3),
        ("hello big world", 100, 3),  # never less than one token per word
        ("  a\tbb\nccc  ", 2, 1 + 1 + 2),
        ("", 4, 0),
    ],
)
def test_chars_per_token(text: str, cpt: int, tokens: int) -> None:
    assert count_text_tokens(text, cpt) == tokens
    assert len(text_token_ids(text, cpt)) == tokens


def test_counts_follow_the_rule_for_every_prompt_shape() -> None:
    assert completion_prompt_tokens(["abcd", "ab"], 2) == 3
    assert completion_prompt_tokens([5, 6, 7], 2) == 3  # token ids are tokens already
    chat = [{"role": "user", "content": "abcdef"}, {"role": "user", "content": [
        {"type": "text", "text": "abc"}]}]  # fmt: skip
    assert chat_prompt_tokens(chat, 2) == 3 + 2 + 8
    assert len(chat_token_ids(chat, 2)) == 3 + 2 + 8


def test_token_ids_are_deterministic_and_differ_by_word() -> None:
    assert text_token_ids("alpha beta alpha") == text_token_ids("alpha beta alpha")
    a, b, a2 = text_token_ids("alpha beta alpha")
    assert a == a2 and a != b
    assert all(100 <= t < 32000 for t in text_token_ids("some words here", 2))


# ---------------------------------------------------------------- bucket grids


def test_geometric_prompt_grid() -> None:
    grid = SimConfig(prompt_bucket_factor=1.5).prompt_grid
    assert grid[:8] == (8, 12, 18, 27, 41, 62, 93, 140)
    assert grid[-1] == 4096
    assert all(b < a * 1.5 + 1 for a, b in itertools.pairwise(grid))
    # finer than powers of two: every doubling from 8 holds at least one more bucket
    for low in (8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        assert any(low < b < 2 * low for b in grid), low


@pytest.mark.parametrize(
    ("changes", "grid"),
    [
        ({}, (16, 256, 1024, 4096)),
        ({"prompt_bucket_factor": 2.0, "prompt_bucket_min": 16, "max_model_len": 100},
         (16, 32, 64, 100)),
        ({"prompt_bucket_factor": 1.01, "prompt_bucket_min": 4, "max_model_len": 8},
         (4, 5, 6, 7, 8)),  # at least one token apart
        ({"prompt_bucket_factor": 1.5, "prompt_bucket_min": 50, "max_model_len": 40}, (40,)),
    ],
)  # fmt: skip
def test_prompt_grid(changes: dict[str, Any], grid: tuple[int, ...]) -> None:
    assert SimConfig(**changes).prompt_grid == grid


@pytest.mark.parametrize(
    ("tokens", "bucket"), [(0, 8), (8, 8), (9, 12), (41, 41), (42, 62), (4096, 4096), (9999, 4096)]
)
def test_prompt_bucket_on_fine_grid(tokens: int, bucket: int) -> None:
    assert ColdStartModel(SimConfig(prompt_bucket_factor=1.5)).prompt_bucket(tokens) == bucket


@pytest.mark.parametrize(
    ("running", "bucket"), [(1, 1), (2, 3), (3, 3), (4, 10), (10, 10), (16, 10)]
)
def test_explicit_batch_sizes(running: int, bucket: int) -> None:
    cfg = SimConfig(batch_sizes=(1, 3, 10))
    assert cfg.batch_buckets == (1, 3, 10)
    assert ColdStartModel(cfg).batch_bucket(running) == bucket


# ---------------------------------------------------------------- features


CHAT = {"messages": [{"role": "user", "content": "x"}]}
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
SCHEMA_REORDERED = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
                    "type": "object"}  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def rf(schema: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


@pytest.mark.parametrize(
    ("chat", "body", "tags"),
    [
        (True, {}, ()),
        (True, {"response_format": {"type": "text"}, "n": 1, "logprobs": False}, ()),
        (True, {"response_format": rf(SCHEMA)},
         ("grammar:" + canonical_hash({"response_format": rf(SCHEMA)}),)),
        (False, {"response_format": {"type": "json_object"}},
         ("grammar:" + canonical_hash({"response_format": {"type": "json_object"}}),)),
        (False, {"guided_regex": "[a-z]+"},
         ("grammar:" + canonical_hash({"guided_regex": "[a-z]+"}),)),
        (True, {"tools": TOOLS},
         ("tools:" + canonical_hash({"tools": TOOLS, "tool_choice": None}),)),
        (True, {"tools": []}, ()),
        (False, {"tools": TOOLS}, ()),  # completions take no tools
        (False, {"logprobs": 0}, ("logprobs:0",)),
        (False, {"logprobs": 5}, ("logprobs:5",)),
        (True, {"logprobs": True}, ("logprobs:0",)),
        (True, {"logprobs": True, "top_logprobs": 3, "n": 2}, ("logprobs:3", "n:2")),
    ],
)  # fmt: skip
def test_parse_features(chat: bool, body: dict[str, Any], tags: tuple[str, ...]) -> None:
    assert parse_features(body, chat, None).tags() == tags


def test_grammar_key_is_canonical() -> None:
    a = parse_features({"response_format": rf(SCHEMA)}, True, None)
    b = parse_features({"response_format": rf(SCHEMA_REORDERED)}, True, None)
    c = parse_features({"response_format": rf({"type": "object"})}, True, None)
    assert a.grammar == b.grammar != c.grammar
    t1 = parse_features({"tools": TOOLS}, True, None)
    t2 = parse_features({"tools": TOOLS, "tool_choice": "required"}, True, None)
    assert t1.tools != t2.tools and t1.tools is not None


@pytest.mark.parametrize(
    ("chat", "body", "param"),
    [
        (True, {"n": 0}, "n"),
        (True, {"n": "2"}, "n"),
        (False, {"logprobs": 21}, "logprobs"),
        (False, {"logprobs": -1}, "logprobs"),
        (False, {"logprobs": True}, "logprobs"),
        (True, {"logprobs": 2}, "logprobs"),
        (True, {"top_logprobs": 2}, "top_logprobs"),
        (True, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (True, {"response_format": "json"}, "response_format"),
        (True, {"tools": {"a": 1}}, "tools"),
    ],
)
def test_parse_features_rejects(chat: bool, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadField) as info:
        parse_features(body, chat, None)
    assert info.value.param == param


# ---------------------------------------------------------------- charges

FEATURES = SimConfig(**cold_rules("features"))
G1, G2, T1 = "g1", "g2", "t1"


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (prompt tokens, running, Features) -> reasons paid
        ([(5, 1, Features()), (5, 1, Features()), (10, 1, Features())],
         [("prompt_bucket:8", "batch_bucket:1"), (), ("prompt_bucket:12",)]),
        ([(5, 1, Features(adapter="sql-lora")), (5, 1, Features(adapter="sql-lora")),
          (5, 1, Features(adapter="chat-lora"))],
         [("prompt_bucket:8", "batch_bucket:1", "adapter:sql-lora"), (),
          ("adapter:chat-lora",)]),
        ([(5, 1, Features(grammar=G1)), (5, 1, Features(grammar=G1)),
          (5, 1, Features(grammar=G2, tools=T1)), (5, 1, Features(tools=T1))],
         [("prompt_bucket:8", "batch_bucket:1", "grammar:g1"), (),
          ("grammar:g2", "tools:t1"), ()]),
        ([(5, 1, Features(logprobs=0)), (5, 1, Features(logprobs=5)),
          (5, 2, Features(n=2)), (5, 1, Features(n=4, logprobs=1))],
         [("prompt_bucket:8", "batch_bucket:1", "logprobs"), (), ("batch_bucket:2", "n"), ()]),
    ],
)  # fmt: skip
def test_each_first_use_is_paid_once(
    steps: list[tuple[int, int, Features]], expected: list[tuple[str, ...]]
) -> None:
    cold = ColdStartModel(FEATURES)
    charges = [cold.charge(p, r, f) for p, r, f in steps]
    assert [c.reasons for c in charges] == expected
    costs = {"prompt_bucket": 0.5, "batch_bucket": 0.25, "adapter": 1.0, "grammar": 0.5,
             "tools": 0.5, "logprobs": 1.0, "n": 0.25}  # fmt: skip
    for c in charges:  # the sum of the penalties of every first use hit
        assert c.penalty == pytest.approx(sum(costs[r.split(":")[0]] for r in c.reasons))


def test_zero_penalty_rules_warm_up_but_are_not_paid() -> None:
    cold = ColdStartModel(dataclasses.replace(FEATURES, cold_logprobs_penalty=0.0))
    assert cold.charge(5, 1, Features(logprobs=1)).reasons == ("prompt_bucket:8", "batch_bucket:1")
    assert "logprobs" in cold.warm_features


def test_lora_slots_evict_least_recently_used() -> None:
    slots = LoraSlots(2)
    assert [slots.use(a) for a in "abab"] == [True, True, False, False]
    assert slots.use("c") is True  # evicts a, the least recently used
    assert slots.resident == ("b", "c")
    assert [slots.use(a) for a in "cab"] == [False, True, True]  # a evicts b, b evicts c


def test_evicted_adapter_pays_again_and_reset_makes_all_cold() -> None:
    cfg = dataclasses.replace(FEATURES, lora_adapters=("a", "b", "c"), max_loras=2)
    cold = ColdStartModel(cfg)
    paid = [cold.charge(5, 1, Features(adapter=x)).reasons[-1:] for x in "abcab"]
    assert paid == [("adapter:a",), ("adapter:b",), ("adapter:c",), ("adapter:a",), ("adapter:b",)]
    assert cold.loaded_adapters == ("a", "b")
    cold.charge(5, 1, Features(grammar=G1, n=2))
    cold.reset()
    assert not cold.warm_features and not cold.loaded_adapters
    assert cold.charge(5, 1, Features(grammar=G1)).reasons == (
        "prompt_bucket:8", "batch_bucket:1", "grammar:g1")  # fmt: skip


# ---------------------------------------------------------------- presets and config


def test_presets() -> None:
    assert COLD_RULES == ("grid", "fine", "features")
    grid, fine, feats = (SimConfig(**cold_rules(n)) for n in COLD_RULES)
    assert grid.prompt_grid == (16, 256, 1024, 4096)
    assert len(fine.prompt_grid) > 3 * len(grid.prompt_grid)
    assert (grid.cold_shape_penalty, grid.cold_batch_penalty) == (0.5, 0.25)
    assert grid.cold_adapter_penalty == fine.cold_logprobs_penalty == 0
    assert feats.prompt_grid == fine.prompt_grid and feats.lora_adapters
    penalties = [f.name for f in dataclasses.fields(SimConfig) if f.name.startswith("cold_")]
    assert len(penalties) == 7 and all(getattr(feats, p) > 0 for p in penalties)
    tenth = cold_rules("features", scale=0.1)
    assert tenth["cold_adapter_penalty"] == pytest.approx(0.1)
    # a preset sets every penalty, so one replaces another
    assert SimConfig(**(cold_rules("features") | cold_rules("grid"))).cold_n_penalty == 0
    with pytest.raises(ValueError, match="unknown cold rules 'nope'"):
        cold_rules("nope")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chars_per_token", -1),
        ("prompt_bucket_factor", 1.0),
        ("prompt_bucket_factor", 0.5),
        ("prompt_bucket_min", 0),
        ("batch_sizes", (4, 2)),
        ("batch_sizes", [1, 2]),
        ("lora_adapters", ("a", "a=/p")),
        ("lora_adapters", ("tiny",)),
        ("lora_adapters", ("",)),
        ("lora_adapters", "a"),
        ("max_loras", 0),
        ("cold_adapter_penalty", -1.0),
        ("cold_grammar_penalty", float("nan")),
        ("cold_n_penalty", "1"),
    ],
)
def test_config_validation(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        SimConfig(**{field: value})
    assert f"SimConfig.{field}" in str(info.value) and repr(value) in str(info.value)


def test_adapter_paths() -> None:
    cfg = SimConfig(lora_adapters=("sql-lora", "chat=/models/chat"))
    assert cfg.adapters == {"sql-lora": "/adapters/sql-lora", "chat": "/models/chat"}


def parse_cli(*argv: str) -> SimConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_cli_defaults_are_simconfig_defaults() -> None:
    assert parse_cli() == SimConfig()


def test_cli_preset_then_explicit_flags() -> None:
    cfg = parse_cli("--cold-rules", "features", "--cold-scale", "0.1", "--cold-n-penalty", "2",
                    "--lora-modules", "a,b=/p", "--max-loras", "1", "--batch-buckets", "1,4",
                    "--chars-per-token", "4", "--prompt-bucket-min", "16")  # fmt: skip
    assert cfg == SimConfig(**(cold_rules("features", 0.1) | {
        "cold_n_penalty": 2.0, "lora_adapters": ("a", "b=/p"), "max_loras": 1,
        "batch_sizes": (1, 4), "chars_per_token": 4, "prompt_bucket_min": 16}))  # fmt: skip
    assert math.isclose(cfg.cold_adapter_penalty, 0.1)


def test_cli_reads_python_tuple_reprs() -> None:
    # a caller that writes str(config.field) on the command line (loadtest's sim_argv)
    cfg = parse_cli("--batch-sizes", str((1, 4)), "--lora-adapters", str(("a", "b=/p")),
                    "--prompt-buckets", str((8, 64)))  # fmt: skip
    assert (cfg.batch_sizes, cfg.lora_adapters, cfg.prompt_buckets) == ((1, 4), ("a", "b=/p"),
                                                                        (8, 64))  # fmt: skip


def test_cli_bad_values() -> None:
    with pytest.raises(ValueError, match=r"SimConfig\.max_loras"):
        parse_cli("--max-loras", "0")
    with pytest.raises(ValueError, match="scale"):
        parse_cli("--cold-rules", "grid", "--cold-scale", "-1")
