"""The load generator's feature mixes (loadtest.mixes, loadtest.workload) and the scenario
keys that configure them and the simulator's cold rules (loadtest.spec): what a workload
sends, and the errors a bad scenario gets."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from loadtest import spec
from loadtest.summary import newcomer_cold
from loadtest.workload import Picker, every_request, request_for
from warmgw.sim.tokens import count_text_tokens

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def scenario(workload: dict[str, Any], sim: dict[str, Any] | None = None) -> spec.Scenario:
    return spec.parse({"fleet": {"sim": sim or {}, "replicas": ["r0"]},
                       "workload": workload})


MIXES = {
    "plain": {"weight": 6},
    "tools": {"weight": 3, "kind": "chat", "prompt_words": {40: 1},
              "body": {"tools": TOOLS, "tool_choice": "auto"}},
    "lora": {"weight": 1, "kind": "completions", "model": "sql-lora",
             "body": {"logprobs": 2}},
}


def test_requests_follow_the_mixes_weights_kinds_sizes_and_bodies() -> None:
    w = scenario({"prompt_words": {3: 1, 9: 1}, "mixes": MIXES, "stream_fraction": 0.5,
                  "stream_usage": 1.0}).workload
    picker = Picker(w, 1)
    shapes = [picker.next() for _ in range(4000)]
    count = Counter(s.mix.name for s in shapes if s.mix is not None)
    assert count.keys() == {"plain", "tools", "lora"}
    assert 0.55 < count["plain"] / 4000 < 0.65 and 0.07 < count["lora"] / 4000 < 0.13
    for s in shapes[:400]:
        assert s.mix is not None
        path, raw = request_for(s, "tiny")
        body = json.loads(raw)
        assert body["stream"] is s.stream
        assert ("stream_options" in body) is s.stream  # stream_usage 1: every stream asks
        if s.mix.name == "tools":
            assert path == "/v1/chat/completions" and body["tools"] == TOOLS
            assert len(body["messages"][0]["content"].split()) == 40
        elif s.mix.name == "lora":
            assert path == "/v1/completions"
            assert body["model"] == "sql-lora" and body["logprobs"] == 2
            assert len(body["prompt"].split()) in (3, 9)
        else:
            assert body["model"] == "tiny" and "tools" not in body and "logprobs" not in body


def test_without_mixes_the_draws_are_those_of_before() -> None:
    """Existing scenarios keep their request sequences (and so their results): four draws
    a request, size, max_tokens, stream, chat, and plain bodies."""
    w = scenario({"prompt_words": {8: 1, 100: 1, 600: 1}}).workload
    picker, rng = Picker(w, 7), random.Random(7)
    for _ in range(50):
        s = picker.next()
        words = (8, 100, 600)[int(rng.random() * 3)]
        rng.random()  # max_tokens: one choice, still a draw
        want = (words, 8, rng.random() < 0.5, rng.random() < 0.5, None, False)
        assert (s.words, s.max_tokens, s.stream, s.chat, s.mix, s.usage) == want
        path, raw = request_for(s, "tiny")
        assert json.loads(raw).keys() == {"model", "max_tokens", "stream",
                                          "messages" if "chat" in path else "prompt"}


def test_every_request_has_each_size_kind_and_mix_once() -> None:
    w = scenario({"prompt_words": {3: 1, 9: 1}, "mixes": MIXES}).workload
    got = {(s.mix.name if s.mix else "", s.words, s.chat) for s in every_request(w)}
    assert got == {("plain", 3, True), ("plain", 3, False), ("plain", 9, True),
                   ("plain", 9, False), ("tools", 40, True), ("lora", 3, False),
                   ("lora", 9, False)}
    assert not any(s.stream for s in every_request(w))


def test_mixed_text_has_more_tokens_than_words() -> None:
    w = scenario({"prompt_words": {100: 1}, "text": "mixed", "chat_fraction": 0}).workload
    _, raw = request_for(Picker(w, 1).next(), "tiny", w.text)
    prompt = json.loads(raw)["prompt"]
    assert len(prompt.split()) == 100
    assert count_text_tokens(prompt, 4) > 150  # words of 5 to 7 letters are 2 tokens


def test_cold_rules_preset_with_overrides() -> None:
    s = scenario({}, {"cold_rules": "features", "cold_scale": 0.5, "cold_tools_penalty": 2.0,
                      "batch_sizes": [1, 4]})
    c = s.fleet.sim
    assert c.cold_shape_penalty == 0.25 and c.cold_adapter_penalty == 0.5
    assert c.cold_tools_penalty == 2.0  # explicit beats the preset
    assert c.lora_adapters == ("sql-lora", "chat-lora") and c.prompt_bucket_factor == 1.5
    assert c.batch_sizes == (1, 4)


@pytest.mark.parametrize(("workload", "sim", "error"), [
    ({"mixes": {"a": {"weight": 0}}}, {}, "workload.mixes.a.weight"),
    ({"mixes": {"a": {"kind": "embeddings"}}}, {}, "workload.mixes.a.kind"),
    ({"mixes": {"a": {"body": {"stream": True}}}}, {}, "workload.mixes.a.body.stream"),
    ({"mixes": {"a": {"colour": 1}}}, {}, "workload.mixes.a.colour: unknown key"),
    ({"mixes": {"a": {"prompt_words": {0: 1}}}}, {}, "workload.mixes.a.prompt_words"),
    ({"mixes": []}, {}, "workload.mixes"),
    ({"text": "lorem"}, {}, "workload.text"),
    ({"stream_usage": 2}, {}, "workload.stream_usage"),
    ({}, {"cold_rules": "coarse"}, "fleet.sim.cold_rules"),
    ({}, {"cold_scale": 2}, "fleet.sim.cold_scale"),
    ({}, {"max_loras": 0}, "max_loras"),
])
def test_bad_scenarios_name_the_key(workload: dict[str, Any], sim: dict[str, Any],
                                    error: str) -> None:
    with pytest.raises(spec.SpecError, match=error.replace(".", r"\.")):
        scenario(workload, sim)


def test_newcomer_cold_counts_requests_and_each_reason() -> None:
    records = {"r2": [{"cold": ["prompt_bucket:27", "grammar:ab12"]},
                      {"cold": ["prompt_bucket:41"]}],
               "r0": [{"cold": ["tools:cd34"]}]}  # not a newcomer: not counted
    got = newcomer_cold(records, ["r2", "r3"])
    assert got == {"requests": 2, "by_reason": {"prompt_bucket": 2, "grammar": 1},
                   "by_replica": {"r2": 2, "r3": 0}}


def test_every_scenario_and_its_quick_variant_parse() -> None:
    for name in spec.available():
        assert spec.load(name).name == name
        spec.load(name, quick=True)
