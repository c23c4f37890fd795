"""Scenario runner: the same workload and event against each strategy, then a report.

    python -m loadtest run SCENARIO
        [--strategies warm,slow_start,round_robin,envoy,haproxy,warm_envoy]
        [--quick] [--out DIR] [--no-progress]
    python -m loadtest list                  # the scenarios in loadtest/scenarios/
    python -m loadtest report DIR            # report.md and plot.png again from result.json

Writes loadtest/results/SCENARIO-TIMESTAMP/ (or --out): result.json, report.md, plot.png
and logs/. Peers that are not installed are skipped with a note. Exit status 1 when a
strategy failed (not when a peer was skipped); 130 on Ctrl-C, after every child process
has been stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

import uvloop

from loadtest import plot, prefix_report, scenario_report, spec
from loadtest.progress import Progress
from loadtest.runner import STRATEGIES, default_strategies, known, run_all

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario", help="a name from loadtest/scenarios/ or a YAML file")
    r.add_argument("--strategies",
                   help=f"comma-separated, in run order (default: the scenario's "
                        f"`strategies`, else {','.join(STRATEGIES)})")
    r.add_argument("--quick", action="store_true", help="the scenario's short variant (CI)")
    r.add_argument("--out", type=Path, help="result directory (default loadtest/results/"
                                            "SCENARIO-TIMESTAMP)")
    r.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    sub.add_parser("list", help="list the scenarios")
    rep = sub.add_parser("report", help="make report.md and plot.png again from result.json")
    rep.add_argument("dir", type=Path)
    return p.parse_args(argv)


def write_outputs(out: Path, data: dict[str, object], s: spec.Scenario) -> str:
    scenario_report.write_json(out / "result.json", data)
    text = scenario_report.markdown(data, s)
    (out / "report.md").write_text(text)
    if s.workload.prefix is not None:
        newcomers = [r.name for r in s.fleet.replicas if not r.initial]
        plotted = prefix_report.plot(data, out / "plot.png", newcomers)
    else:
        plotted = plot.plot(data, out / "plot.png")
    return text if plotted else text + "\n(no plot: matplotlib missing or nothing ran)\n"


async def run(args: argparse.Namespace) -> int:
    s = spec.load(args.scenario, args.quick)
    given = args.strategies or ",".join(default_strategies(s))
    strategies = [x.strip() for x in given.split(",") if x.strip()]
    for x in strategies:
        if x not in known(s):
            raise spec.SpecError(f"--strategies: unknown {x!r} (known: {', '.join(known(s))})")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"{s.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    p = s.phases
    expected = p.warmup + p.steady + p.during + p.after
    progress = Progress(s.name, expected, enabled=not args.no_progress,
                        after_event=p.during + p.after)

    # Ctrl-C and SIGTERM cancel the run (also where SIGINT came in ignored, as in a
    # background job); unwinding stops every child process
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    runs = await run_all(s, strategies, out, progress)
    meta = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python -m loadtest " + " ".join(sys.argv[1:])}
    data = scenario_report.result(s, runs, meta)
    text = write_outputs(out, data, s)
    summary = text.split("## Summary", 1)[-1].split("\n## ", 1)[0]
    print(f"Scenario {s.name}{' (quick)' if s.quick else ''}:{summary}")
    print(f"report: {out / 'report.md'}\nresult: {out / 'result.json'}\nplot:   {out / 'plot.png'}")
    return 1 if any(r.status == "failed" for r in runs) else 0


def report_again(d: Path) -> int:
    data = json.loads((d / "result.json").read_text())
    s = dataclasses.replace(spec.parse(data["spec"]), quick=bool(data.get("quick")))
    scenario_report.add_summaries(data, s)
    write_outputs(d, data, s)
    print(f"wrote {d / 'report.md'} and {d / 'plot.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "list":
            for name in spec.available():
                text = spec.load(name).description
                print(f"{name:10} {text[:88] + '...' if len(text) > 90 else text}")
            return 0
        if args.command == "report":
            return report_again(args.dir)
        return uvloop.run(run(args))
    except spec.SpecError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nloadtest: interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
