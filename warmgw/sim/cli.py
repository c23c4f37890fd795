"""``warmgw sim``: run simulated vLLM replicas until SIGINT/SIGTERM.

A signal drains, as vLLM's uvicorn does: no new connection is accepted, idle keep-alive
connections are closed, the requests in flight finish (up to --drain-timeout), then the
process exits. A second signal exits at once. SIGKILL is the crash."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from typing import Any

import uvloop

from warmgw.sim.cold import COLD_RULES, cold_rules
from warmgw.sim.config import SimConfig
from warmgw.sim.fleet import SimFleet

_DEFAULTS = SimConfig()


def _items(text: str) -> list[str]:
    """ "a,b", "a b" or a Python tuple/list repr such as "('a', 'b')" -> ["a", "b"]."""
    text = text.strip().strip("()[]")
    return [x.strip().strip("'\"") for x in text.replace(",", " ").split() if x.strip("'\"")]


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _items(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,16, got {text!r}") from None


def str_list(text: str) -> tuple[str, ...]:
    return tuple(_items(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every SimConfig option defaults to None (= SimConfig's default, or the
    --cold-rules preset's), so an explicit flag overrides the preset."""
    d = _DEFAULTS
    add = parser.add_argument
    add("--replicas", type=int, default=1, help="number of replicas (default 1)")
    add("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    add(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds the requests in flight may take to finish (default 30)",
    )
    add(
        "--base-port",
        type=int,
        default=0,
        help="replica i listens on base-port + i; 0 = any free port (default)",
    )
    add(
        "--distinct-hosts",
        action="store_true",
        help="replica i listens on host + i (127.0.0.1, 127.0.0.2, ...), all on one port",
    )
    add("--model", help=f"served model name (default {d.model})")
    add("--max-model-len", type=int, help=f"default {d.max_model_len}")
    add("--load-time", type=float, help="seconds /health answers 503 after start or restart")
    add(
        "--refuse-while-loading",
        action="store_true",
        default=None,
        help="refuse connections while loading (like real vLLM) instead of 503",
    )
    add("--ttft-base", type=float, help=f"default {d.ttft_base}")
    add("--ttft-per-prompt-token", type=float, help=f"default {d.ttft_per_prompt_token}")
    add("--itl", type=float, help=f"seconds per output token (default {d.itl})")
    add("--max-running", type=int, help=f"default {d.max_running}")
    add("--default-max-tokens", type=int, help=f"default {d.default_max_tokens}")
    add("--jitter", type=float, help="relative latency jitter, e.g. 0.05 (default 0)")
    add("--seed", type=int, help="replica i uses seed + i (default 0)")
    add(
        "--chars-per-token",
        type=int,
        help="tokenizer: a word of L characters is ceil(L/N) tokens; 0 = one per word (default)",
    )
    g = parser.add_argument_group("cold start (first-use costs in seconds, once per process)")
    add = g.add_argument
    add(
        "--cold-rules",
        choices=COLD_RULES,
        help="preset cold rules (grid, fine, features: see warmgw.sim.cold.cold_rules); "
        "explicit flags override it",
    )
    add(
        "--cold-scale",
        type=float,
        default=1.0,
        help="multiply the preset's penalties (default 1)",
    )
    add("--cold-shape-penalty", type=float, help="first request in each prompt-length bucket")
    add("--cold-batch-penalty", type=float, help="first request reaching each batch-size bucket")
    add(
        "--prompt-buckets",
        type=int_list,
        help=f"prompt-length bucket bounds, e.g. 16,256 (default {_csv(d.prompt_buckets)})",
    )
    add(
        "--prompt-bucket-factor",
        type=float,
        help="> 1: geometric prompt buckets instead, e.g. 1.5 (default 0 = --prompt-buckets)",
    )
    add(
        "--prompt-bucket-min",
        type=int,
        help=f"first geometric prompt bucket (default {d.prompt_bucket_min})",
    )
    add(
        "--batch-sizes",
        "--batch-buckets",
        dest="batch_sizes",
        type=int_list,
        help="batch-size buckets, e.g. 1,2,4,8 (default: powers of two up to --max-running)",
    )
    add(
        "--lora-adapters",
        "--lora-modules",
        dest="lora_adapters",
        type=str_list,
        help="LoRA adapters served, as vLLM's --lora-modules: name or name=path, comma-separated",
    )
    add("--max-loras", type=int, help="LoRA slots, least recently used evicted (default 1)")
    add("--cold-adapter-penalty", type=float, help="loading an adapter into a slot")
    add("--cold-grammar-penalty", type=float, help="each distinct structured-output spec")
    add("--cold-tools-penalty", type=float, help="each distinct tools list (with tool_choice)")
    add("--cold-logprobs-penalty", type=float, help="first request asking for logprobs")
    add("--cold-n-penalty", type=float, help="first request asking for n > 1")
    add("--prefix-block-tokens", type=int,
        help=f"prefix cache block size in tokens (default {d.prefix_block_tokens})")
    add("--prefix-cache-blocks", type=int,
        help="prefix cache capacity in blocks, least recently used evicted (default 0: off)")


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Raises ValueError naming the bad option."""
    options: dict[str, Any] = {}
    if getattr(args, "cold_rules", None):
        options |= cold_rules(args.cold_rules, args.cold_scale)
    for f in dataclasses.fields(SimConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            options[f.name] = value
    return SimConfig(**options)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Logging is the caller's to configure."""
    try:
        fleet = SimFleet(
            config_from_args(args),
            args.replicas,
            host=args.host,
            base_port=args.base_port,
            distinct_hosts=args.distinct_hosts,
        )
    except ValueError as exc:
        print(f"warmgw sim: {exc}", file=sys.stderr)
        return 2
    try:
        return uvloop.run(_serve(fleet, args.drain_timeout))
    except OSError as exc:  # e.g. port in use
        print(f"warmgw sim: {exc}", file=sys.stderr)
        return 1


async def _serve(fleet: SimFleet, drain_timeout: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for r in fleet.replicas:
            print(f"sim replica {r.name} serving model {r.config.model} at {r.url}", flush=True)
        await stop.wait()
        stop.clear()
        drain = asyncio.ensure_future(fleet.drain(drain_timeout))
        again = asyncio.ensure_future(stop.wait())  # a second signal: at once
        await asyncio.wait([drain, again], return_when=asyncio.FIRST_COMPLETED)
        again.cancel()
        if not drain.done():
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        elif drain.result():
            print(f"sim: {drain.result()} requests cut at the drain timeout", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m warmgw.sim``: the same options plus --log-level."""
    parser = argparse.ArgumentParser(prog="python -m warmgw.sim", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    return run(args)
