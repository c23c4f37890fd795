"""What each vLLM feature costs the first time a fresh replica sees it (a script, not a test).

    PYTHONPATH=$PWD .venv/bin/python tests/vllm/first_use.py [--json OUT] [--no-lora]

Starts ONE fresh replica of the tiny model (the tests' Replica, unpinned, one OpenMP
thread), then for each request kind in turn sends one request (its first use on this
process) and REPEATS more, and prints the first latency against the median of the rest.
The kinds run in the order of CASES, so "first" means: the first of its kind, after all
the kinds above it. Prompt sizes are measured with the server's POST /tokenize. Writes
the results as JSON. Bounded: HEALTH_TIMEOUT for start-up, REQUEST_TIMEOUT per request,
--deadline for the whole measurement; the replica is killed at the end in any case.

Environment as for tests/vllm (WARMGW_VLLM_VENV, WARMGW_VLLM_MODEL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.vllm.build_model import LORA_DIR
from tests.vllm.conftest import (
    MODEL,
    SERVED,
    Replica,
    count_tokens,
    ensure_model,
    remove_leaked_shm,
    shm_segments,
    sized_prompt,
)

LORA_NAME = "tiny-lora"
REPEATS = 5
HEALTH_TIMEOUT = 300.0
REQUEST_TIMEOUT = 120.0
MAX_TOKENS = 8
NO_EOS = {"ignore_eos": True}  # random weights: same output lengths every time
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def chat(content: str = "say something nice", **extra: Any) -> dict[str, Any]:
    return {"model": SERVED, "messages": [{"role": "user", "content": content}],
            "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


def completion(prompt: str = "tell me a story", **extra: Any) -> dict[str, Any]:
    return {"model": SERVED, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            **extra}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Callable[[dict[str, str]], dict[str, Any]]  # prompts by size -> request body
    needs_lora: bool = False


CASES = [
    Case("chat", "/v1/chat/completions", lambda p: chat(**NO_EOS)),
    Case("completion", "/v1/completions", lambda p: completion(**NO_EOS)),
    Case("completion logprobs=5", "/v1/completions",
         lambda p: completion(logprobs=5, **NO_EOS)),
    Case("chat logprobs+top_logprobs=5", "/v1/chat/completions",
         lambda p: chat(logprobs=True, top_logprobs=5, **NO_EOS)),
    Case("chat response_format json_schema", "/v1/chat/completions",
         lambda p: chat("a person as JSON", max_tokens=24, response_format={
             "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})),
    Case("completion temperature=1 top_p top_k", "/v1/completions",
         lambda p: completion(temperature=1.0, top_p=0.9, top_k=20, **NO_EOS)),
    Case("completion n=3 (temperature=1)", "/v1/completions",
         lambda p: completion(n=3, temperature=1.0, **NO_EOS)),
    Case("chat tools, tool_choice=auto", "/v1/chat/completions",
         lambda p: chat("weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto",
                        **NO_EOS)),
    Case("chat tools, tool_choice=named", "/v1/chat/completions",
         lambda p: chat("weather in Paris?", max_tokens=24, tools=[WEATHER_TOOL],
                        tool_choice={"type": "function",
                                     "function": {"name": "get_weather"}})),
    Case("completion LoRA adapter", "/v1/completions",
         lambda p: {**completion(**NO_EOS), "model": LORA_NAME}, needs_lora=True),
    *(Case(f"completion prompt {n} tokens", "/v1/completions",
           lambda p, n=n: completion(p[str(n)], **NO_EOS)) for n in (8, 100, 500)),
]  # fmt: skip
PROMPT_SIZES = (8, 100, 500)


@dataclass
class Row:
    name: str
    first_ms: float | None = None
    median_ms: float | None = None
    rest_ms: list[float] = field(default_factory=list)
    status: int | None = None
    note: str = ""


async def timed(s: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any],
                timeout: float) -> tuple[float, int, dict[str, Any] | str]:
    t0 = time.perf_counter()
    async with s.post(url + path, json=body,
                      timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        raw = await r.read()
    ms = (time.perf_counter() - t0) * 1000
    try:
        return ms, r.status, json.loads(raw)
    except ValueError:
        return ms, r.status, raw[:300].decode(errors="replace")


def describe(reply: dict[str, Any] | str) -> str:
    """What came back, in a few words: tokens, a tool call, an error message."""
    if isinstance(reply, str):
        return reply[:200]
    if "error" in reply:
        err = reply["error"]
        return str(err.get("message", err))[:200] if isinstance(err, dict) else str(err)[:200]
    usage = reply.get("usage") or {}
    choices = reply.get("choices") or []
    parts = [f"{usage.get('prompt_tokens')}+{usage.get('completion_tokens')} tokens"]
    if choices:
        parts[0] += f" ({choices[0].get('finish_reason')})"
    if choices and "message" in choices[0]:
        msg = choices[0]["message"]
        if msg.get("tool_calls"):
            parts.append(f"tool call {msg['tool_calls'][0]['function']['arguments'][:60]!r}")
        elif msg.get("content") is not None:
            parts.append(f"{msg['content'][:40]!r}")
    elif choices:
        parts.append(f"{choices[0].get('text', '')[:40]!r}")
    return ", ".join(parts)


async def measure(url: str, lora: bool, repeats: int, deadline: float) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    prompts: dict[str, str] = {}
    extra: dict[str, Any] = {}

    def left() -> float:
        return deadline - time.monotonic()

    async with aiohttp.ClientSession() as s:
        for case in CASES:
            if case.name.startswith("completion prompt") and not prompts:
                # the first /tokenize on this process, then the prompts it sizes
                t0 = time.perf_counter()
                await count_tokens(s, url, "hello world")
                tok_row = Row("POST /tokenize (first)", (time.perf_counter() - t0) * 1000)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    await count_tokens(s, url, "hello world")
                    times.append((time.perf_counter() - t0) * 1000)
                tok_row.rest_ms, tok_row.median_ms = times, statistics.median(times)
                tok_row.status = 200
                rows.append(tok_row)
                for n in PROMPT_SIZES:
                    prompts[str(n)], got = await sized_prompt(s, url, n)
                    extra[f"prompt_{n}_tokens"] = got
            row = Row(case.name)
            rows.append(row)
            if case.needs_lora and not lora:
                row.note = "skipped: no LoRA adapter served (--no-lora)"
                continue
            if left() <= 0:
                row.note = "skipped: deadline"
                continue
            body = case.body(prompts)
            try:
                ms, row.status, reply = await timed(s, url, case.path, body,
                                                    min(REQUEST_TIMEOUT, left()))
            except TimeoutError:
                row.note = f"timed out after {min(REQUEST_TIMEOUT, left()):.0f} s"
                continue
            row.note = describe(reply)
            if row.status != 200:
                continue
            row.first_ms = ms
            for _ in range(repeats):
                if left() <= 0:
                    row.note += "; deadline: fewer repeats"
                    break
                ms, status, reply = await timed(s, url, case.path, body,
                                                min(REQUEST_TIMEOUT, left()))
                if status != 200:
                    row.note += f"; a repeat failed: {status} {describe(reply)}"
                    break
                row.rest_ms.append(ms)
            if row.rest_ms:
                row.median_ms = statistics.median(row.rest_ms)
    return rows, extra


def fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f}"


def table(rows: list[Row]) -> str:
    out = [f"{'request':<36} {'first ms':>9} {'median ms':>9} {'ratio':>6}  result",
           "-" * 100]
    for r in rows:
        ratio = (f"{r.first_ms / r.median_ms:.1f}x"
                 if r.first_ms is not None and r.median_ms else "")
        status = "" if r.status in (None, 200) else f"HTTP {r.status}: "
        out.append(f"{r.name:<36} {fmt(r.first_ms):>9} {fmt(r.median_ms):>9} {ratio:>6}  "
                   f"{status}{r.note}")
    return "\n".join(out)


def serve_flags(lora: bool) -> tuple[str, ...]:
    flags: tuple[str, ...] = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    if lora:
        flags += ("--enable-lora", "--lora-modules", f"{LORA_NAME}={MODEL / LORA_DIR}",
                  "--max-loras", "1", "--max-lora-rank", "8")
    return flags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="where to write the results")
    ap.add_argument("--no-lora", action="store_true", help="serve without the LoRA adapter")
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--deadline", type=float, default=900.0,
                    help="seconds for all the requests, after start-up")
    args = ap.parse_args()
    ensure_model()
    lora = not args.no_lora and (MODEL / LORA_DIR / "adapter_config.json").exists()
    workdir = Path(tempfile.mkdtemp(prefix="warmgw-first-use-"))
    shm_before = shm_segments()
    replica = Replica("first-use", 0, workdir, serve_flags(lora))
    result: dict[str, Any] = {"model": str(MODEL), "lora": lora, "flags": list(serve_flags(lora)),
                              "log": str(replica.log_path)}
    try:
        replica.start()
        try:
            result["startup_s"] = round(replica.wait_healthy(HEALTH_TIMEOUT), 1)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        rows, extra = asyncio.run(
            measure(replica.url, lora, args.repeats, time.monotonic() + args.deadline))
    finally:
        replica.stop()
        remove_leaked_shm(shm_before)
    result.update(extra, rows=[asdict(r) for r in rows])
    out = args.json or workdir / "first_use.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    sizes = ", ".join(f"{n}->{extra.get(f'prompt_{n}_tokens')}" for n in PROMPT_SIZES)
    print(f"fresh replica: /health 200 after {result['startup_s']} s; LoRA {lora}; "
          f"prompt tokens asked->got {sizes}")
    print(table(rows))
    print(f"JSON: {out}; replica log: {replica.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
