"""Feature mixes of a workload: the request fields beyond size, kind and streaming that an
engine may be cold for (a structured-output schema, a tool list, logprobs, n > 1, a LoRA
adapter), each with a weight. Every request draws one mix (or none: plain), so the mix of
traffic is as configured and every strategy gets the same draws (seeded):

    workload:
      mixes:
        plain: {weight: 20}
        city_schema:                   # a name, for the report
          weight: 1.5
          kind: chat                   # chat | completions (default: chat_fraction decides)
          prompt_words: {20: 1, 90: 1} # the mix's own prompt sizes (default: the workload's)
          body: {response_format: {type: json_schema, json_schema: {...}}}
        sql_adapter: {weight: 1.5, model: sql-lora}   # a LoRA adapter the replicas serve

`body` is merged into the request as it is; `model` replaces the scenario's model. Also the
text of the prompts: `text: repeat` ("word word ..."; one token per word for the simulator
whatever its chars_per_token) or `mixed` (a fixed sentence of words of different lengths,
cycled, so that a prompt's tokens differ from its words as with a real tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

KINDS = ("chat", "completions")
TEXTS = ("repeat", "mixed")
MIXED = ("the model reads a long prompt about river stones, cloudy paper and seven orange "
         "windows before it answers").split()


@dataclass(frozen=True)
class Mix:
    name: str
    weight: float
    kind: str = ""  # "": chat or completions by the workload's chat_fraction
    model: str = ""  # "": the scenario's model
    prompt_words: tuple[tuple[int, float], ...] = ()  # (): the workload's
    body_json: str = "{}"  # extra request fields, canonical JSON (kept hashable)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body_json)
        return out


def prompt_text(words: int, text: str) -> str:
    if text == "mixed":
        return " ".join(islice(cycle(MIXED), words))
    return " ".join(["word"] * words)


# the request fields a mix may not set: the runner's (size, kind, streaming, model)
RESERVED = {"model", "prompt", "messages", "stream", "max_tokens"}


def parse_mixes(raw: Any, weights: Any) -> tuple[Mix, ...]:
    """Mixes from the workload's `mixes` mapping; `weights(raw, where)` parses a
    {size: weight} mapping. Raises ValueError naming the key and the bad value."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"workload.mixes: expected a non-empty mapping of name -> mix, "
                         f"got {raw!r}")
    out = []
    for name, m in raw.items():
        at = f"workload.mixes.{name}"
        if not isinstance(m, Mapping):
            raise ValueError(f"{at}: expected a mapping, got {m!r}")
        unknown = set(m) - {"weight", "kind", "model", "prompt_words", "body"}
        if unknown:
            raise ValueError(f"{at}.{sorted(unknown)[0]}: unknown key (known: body, kind, "
                             "model, prompt_words, weight)")
        w = m.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or w <= 0:
            raise ValueError(f"{at}.weight: expected a number > 0, got {w!r}")
        kind = m.get("kind", "")
        if kind and kind not in KINDS:
            raise ValueError(f"{at}.kind: expected chat or completions, got {kind!r}")
        model = m.get("model", "")
        if not isinstance(model, str):
            raise ValueError(f"{at}.model: expected a model name, got {model!r}")
        body = m.get("body", {})
        if not isinstance(body, Mapping):
            raise ValueError(f"{at}.body: expected a mapping of request fields, got {body!r}")
        clash = RESERVED & set(body)
        if clash:
            raise ValueError(f"{at}.body.{sorted(clash)[0]}: set by the workload, not by a "
                             "mix (use kind, model or prompt_words)")
        sizes = weights(m["prompt_words"], f"{at}.prompt_words") if "prompt_words" in m else ()
        out.append(Mix(str(name), float(w), kind, model, sizes,
                       json.dumps(body, sort_keys=True, separators=(",", ":"))))
    return tuple(out)

