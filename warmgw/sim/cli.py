"""``warmgw sim``: run simulated vLLM replicas until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from warmgw.sim.fleet import SimFleet
from warmgw.sim.model import SimConfig

_DEFAULTS = SimConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    add = parser.add_argument
    add("--replicas", type=int, default=1, help="number of replicas (default 1)")
    add("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
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
    add("--model", default=d.model, help=f"served model name (default {d.model})")
    add("--max-model-len", type=int, default=d.max_model_len)
    add(
        "--load-time",
        type=float,
        default=d.load_time,
        help="seconds /health answers 503 after start or restart",
    )
    add(
        "--refuse-while-loading",
        action="store_true",
        help="refuse connections while loading (like real vLLM) instead of 503",
    )
    add(
        "--cold-shape-penalty",
        type=float,
        default=d.cold_shape_penalty,
        help="seconds paid by the first request in each prompt-length bucket",
    )
    add(
        "--cold-batch-penalty",
        type=float,
        default=d.cold_batch_penalty,
        help="seconds paid by the first request reaching each batch-size bucket",
    )
    add("--ttft-base", type=float, default=d.ttft_base)
    add("--ttft-per-prompt-token", type=float, default=d.ttft_per_prompt_token)
    add("--itl", type=float, default=d.itl, help="seconds per output token")
    add("--max-running", type=int, default=d.max_running)
    add("--default-max-tokens", type=int, default=d.default_max_tokens)
    add("--jitter", type=float, default=d.jitter, help="relative latency jitter, e.g. 0.05")
    add("--seed", type=int, default=d.seed, help="replica i uses seed + i")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Raises ValueError naming the bad option."""
    return SimConfig(
        model=args.model,
        max_model_len=args.max_model_len,
        load_time=args.load_time,
        ttft_base=args.ttft_base,
        ttft_per_prompt_token=args.ttft_per_prompt_token,
        itl=args.itl,
        max_running=args.max_running,
        default_max_tokens=args.default_max_tokens,
        cold_shape_penalty=args.cold_shape_penalty,
        cold_batch_penalty=args.cold_batch_penalty,
        jitter=args.jitter,
        seed=args.seed,
        refuse_while_loading=args.refuse_while_loading,
    )


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
        return uvloop.run(_serve(fleet))
    except OSError as exc:  # e.g. port in use
        print(f"warmgw sim: {exc}", file=sys.stderr)
        return 1


async def _serve(fleet: SimFleet) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        for r in fleet.replicas:
            print(f"sim replica {r.name} serving model {r.config.model} at {r.url}", flush=True)
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m warmgw.sim``: the same options plus --log-level."""
    parser = argparse.ArgumentParser(prog="python -m warmgw.sim", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    return run(args)
