"""The `warmgw` command: serve, epp, sim, demo."""

from __future__ import annotations

import argparse
import sys

from warmgw import logs


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    import uvloop

    from warmgw.config import ConfigError, EppParams, load
    from warmgw.fdlimit import raise_open_files_limit
    from warmgw.loopsteps import LoopSteps, wanted
    from warmgw.policy.codec import PolicyReadError
    from warmgw.serve import serve_forever

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"warmgw: bad config: {e}", file=sys.stderr)
        return 2
    if args.command == "epp":  # the endpoint picker on, whatever the file says
        epp = config.epp or EppParams()
        if args.host is not None:
            epp = dataclasses.replace(epp, host=args.host)
        if args.port is not None:
            epp = dataclasses.replace(epp, port=args.port)
        config = dataclasses.replace(config, epp=epp)
    raise_open_files_limit()
    steps = LoopSteps() if wanted() else None
    try:
        if steps is None:
            uvloop.run(serve_forever(config))
        else:  # benchmarks: asyncio's loop, each step timed (warmgw.loopsteps)
            steps.install()
            asyncio.run(serve_forever(config, steps))
    except PolicyReadError as e:
        print(f"warmgw: {e}; fix or remove it (the policy is not guessed)", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from warmgw.demo import run

    return int(run(args))


def _sim(args: argparse.Namespace) -> int:
    from warmgw.sim import cli as sim_cli

    return sim_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    from warmgw import ctl
    from warmgw.sim import cli as sim_cli

    parser = argparse.ArgumentParser(
        prog="warmgw", description="A warm-aware OpenAI-compatible gateway for vLLM fleets."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", "-c", required=True, help="YAML config file")
    p.set_defaults(func=_serve)

    p = sub.add_parser("epp", help="run the gateway as Envoy's endpoint picker (ext_proc "
                       "gRPC), beside its HTTP listener")
    p.add_argument("--config", "-c", required=True, help="YAML config file")
    p.add_argument("--host", help="gRPC listen address (default: epp.listen.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default: epp.listen.port, 9002)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("sim", help="run simulated vLLM replicas")
    sim_cli.add_arguments(p)
    p.set_defaults(func=_sim)

    p = sub.add_parser("demo", help="simulated replicas + the gateway + client traffic")
    p.add_argument("--seconds", type=float, default=40.0, help="how long the traffic runs")
    p.set_defaults(func=_demo)

    ctl.add_parsers(sub)
    for name in ("status", "profile", "cutover", "route", "rollback", "drain", "undrain",
                 "rewarm", "add", "remove", "reload"):
        sub.choices[name].set_defaults(func=ctl.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_json)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


