"""The gateway's overhead: the same load sent straight to a replica and through warmgw.

    .venv/bin/python -m loadtest.overhead [--quick] [--requests N] [--rounds N]
        [--concurrency 1,16,64] [--prompt-bytes N] [--prefix-routing] [--compare-src DIR]
        [--peers a,b|'']

Four processes: a simulated replica with near-zero latency, the gateway (`python -m warmgw
serve`, from this source tree), the peer proxies that are installed (nginx, HAProxy,
Envoy, vllm-router, sglang-router: see loadtest.peers and scripts/install-peers.sh), Envoy
with this tree's warmgw as its endpoint picker (target envoy+epp, unless --no-envoy-epp;
loadtest.envoy_epp), and an aiohttp load generator; this one only orchestrates. For each
cell (mode JSON or stream, concurrency) the requests of each target are split into rounds,
and the targets take turns round by round (the order rotating) so that a noisy machine
slows them alike. Reported per target: req/s, p50/p99 latency, the added latency over
direct, and CPU microseconds per request of the proxy's processes (the replica's and load
generator's CPU are not in that figure; for envoy+epp, both processes, and each one's
apart in a second table): the median of the rounds' figures, each read in nanoseconds from
/proc/PID/task/*/schedstat (every thread of the process and its descendants); req/s and
CPU per request also as ratios to the gateway's, CPU as the median of the ratios of the
same rounds.

--compare-src DIR runs the warmgw package of another source tree (a git checkout of the
reference commit, or `git archive` unpacked) as one more target, and the report gives,
cell by cell, this tree's CPU per request over that tree's (median of the rounds' ratios),
naming both commits. The project's standard for such a comparison: 20,000 requests per
cell or more (--requests, the default) in 5 rounds or more (--rounds, the default); a run
below it says so. Caveat: a thread that exits within a round takes its time in that round
with it (its schedstat file is gone; /proc/PID/schedstat is the main thread's alone); the
processes' CPU clocks keep it, so they are read too, and a cell whose thread figures fall
over 1 % short of them is marked "!" in the CPU column (cpu_missed in the JSON).

Writes loadtest/results/overhead.json. Exit status 1 if a request to the replica or the
gateway failed or the time limit cut the run short. A peer that fails to start, exits, or
completes no request of a run is reported and left out of the rest; its errors do not
change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from loadtest import overhead_meta
from loadtest.driver import LoadGen
from loadtest.envoy_epp import envoy_epp_starter
from loadtest.peers import PEERS
from loadtest.procs import (
    CLK_TCK,
    Child,
    ChildFailed,
    Children,
    CpuReading,
    cpu_between,
    host_cpu,
    pin,
    read_cpu,
    run_main,
    running,
)
from loadtest.report import compare_table, parts_table, table
from loadtest.stats import Run, summarise
from loadtest.targets import ReplicaSpec, Target, Unavailable, gateway_starter, start_replica

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "results"
PATH = "/v1/completions"
WORDS = "the quick brown fox jumps over the lazy dog and then some more words to read".split()


@dataclass(frozen=True)
class Options:
    requests: int = overhead_meta.STANDARD_REQUESTS  # per cell and target, over the rounds
    rounds: int = overhead_meta.STANDARD_ROUNDS
    concurrency: tuple[int, ...] = (1, 16, 64)
    stream: bool = True  # also run the streaming variant
    warmup: int | None = None  # per run; None: max(2 c, 100), or max(c, 10) when quick
    max_tokens: int = 8
    prompt_words: int = 16  # ~5 bytes a word; the simulator counts a token per word
    prompt_bytes: int | None = None  # instead of prompt_words: a prompt of exactly N bytes
    strategy: str = "warm"
    prefix_routing: bool = False  # the gateway hashes every prompt (routing.prefix.enabled)
    peers: tuple[str, ...] = tuple(PEERS)
    envoy_epp: bool = True  # also Envoy with this tree's warmgw as its EPP (if Envoy is found)
    time_limit: float = 3600.0  # the whole benchmark
    run_limit: float = 60.0  # one run
    out: Path = RESULTS / "overhead.json"
    profile: str | None = None  # "cprofile": the gateway runs under cProfile
    py_spy: str | None = None  # a py-spy binary: record the gateway's stacks
    py_spy_native: bool = False  # with C frames (uvloop, libc: where syscalls show)
    compare_src: Path | None = None  # another warmgw source tree, run as a third target
    quick: bool = False
    pin: bool = False  # proxies on the last CPU, everything else on the others

    def warmup_for(self, c: int) -> int:
        if self.warmup is not None:
            return self.warmup
        return max(c, 10) if self.quick else max(2 * c, 100)

    def prompt(self) -> str:
        return prompt_text(self.prompt_words, self.prompt_bytes)


def prompt_text(words: int, nbytes: int | None = None) -> str:
    """`words` words, or as many as make exactly nbytes bytes (the last one cut short)."""
    if nbytes is None:
        return " ".join(WORDS[i % len(WORDS)] for i in range(words))
    out: list[str] = []
    size = -1
    while size < nbytes:
        out.append(WORDS[len(out) % len(WORDS)])
        size += len(out[-1]) + 1
    return " ".join(out)[:nbytes]


QUICK: dict[str, Any] = {"requests": 40, "rounds": 2, "time_limit": 25.0, "run_limit": 5.0}


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtest.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int,
                   help="per mode, concurrency and target, over the rounds (20000)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per cell (5)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated (1,16,64)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="also run streaming requests (default on)")
    p.add_argument("--warmup", type=int, help="warmup requests per run (max(2c, 100))")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--prompt-words", type=int, default=16,
                   help="prompt size in words (16); the replica accepts up to 4096 tokens")
    p.add_argument("--prompt-bytes", type=int, metavar="N",
                   help="a prompt of N bytes instead (e.g. 8192: about 1,700 words)")
    p.add_argument("--strategy", default="warm", choices=["warm", "round_robin"])
    p.add_argument("--prefix-routing", action="store_true",
                   help="prefix affinity on in this tree's gateway (routing.prefix.enabled), so "
                        "every prompt is hashed: with --prompt-bytes 8192, the hashing's cost; "
                        "a --compare-src tree runs without it (what the feature costs against "
                        "a tree that has none)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"peer proxies to try if installed ({','.join(PEERS)}; "
                        "'none' or '' for none)")
    p.add_argument("--envoy-epp", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure Envoy with warmgw as its endpoint picker (target "
                        "envoy+epp; CPU of both and of each; default on, if Envoy is found)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole benchmark (3600)")
    p.add_argument("--run-limit", type=float, help="seconds for one run (60)")
    p.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    p.add_argument("--profile", choices=["cprofile"],
                   help="run the gateway under cProfile (its figures are then not comparable)")
    p.add_argument("--py-spy", metavar="BIN",
                   help="record the gateway's stacks with this py-spy binary, into "
                        "gateway-py-spy.txt beside --out (collapsed stacks)")
    p.add_argument("--py-spy-native", action="store_true", help="with C frames")
    p.add_argument("--compare-src", type=Path, metavar="DIR",
                   help="also run the warmgw package of this source tree (e.g. `git archive "
                        "HEAD` unpacked) as another target")
    p.add_argument("--quick", action="store_true", help="a small run for CI (< 30 s)")
    p.add_argument("--pin", action="store_true",
                   help="bind the proxies under test to the last CPU and the replica, the "
                        "load generator and this process to the others (less noise from "
                        "sharing a core; needs 2 CPUs or more)")
    a = p.parse_args(argv)
    try:
        conc = tuple(int(x) for x in a.concurrency.split(",") if x.strip())
    except ValueError:
        p.error(f"--concurrency: expected numbers like 1,16,64, got {a.concurrency!r}")
    peers = tuple(x for x in a.peers.split(",") if x and x != "none")
    for name in peers:
        if name not in PEERS:
            p.error(f"--peers: unknown peer {name!r} (known: {', '.join(PEERS)})")
    opts = Options(quick=a.quick, **(QUICK if a.quick else {}))
    given: dict[str, Any] = {
        "requests": a.requests, "rounds": a.rounds, "time_limit": a.time_limit,
        "run_limit": a.run_limit, "warmup": a.warmup,
    }
    opts = replace(
        opts, concurrency=conc, stream=a.stream, max_tokens=a.max_tokens,
        prompt_words=a.prompt_words, prompt_bytes=a.prompt_bytes, strategy=a.strategy,
        prefix_routing=a.prefix_routing,
        peers=peers, envoy_epp=a.envoy_epp, out=a.out, profile=a.profile, py_spy=a.py_spy,
        py_spy_native=a.py_spy_native, pin=a.pin,
        compare_src=a.compare_src.resolve() if a.compare_src else None,
        **{k: v for k, v in given.items() if v is not None},
    )
    if not conc or min(conc) < 1 or opts.requests < opts.rounds or opts.rounds < 1:
        p.error("need concurrency >= 1, rounds >= 1 and requests >= rounds")
    if opts.pin and len(os.sched_getaffinity(0)) < 2:
        p.error("--pin: needs 2 CPUs or more")
    if opts.prefix_routing and opts.strategy == "round_robin":
        p.error("--prefix-routing: round_robin never uses affinity (use --strategy warm)")
    if opts.prompt_bytes is not None and opts.prompt_bytes < 1:
        p.error(f"--prompt-bytes: expected a size >= 1, got {opts.prompt_bytes}")
    words = len(opts.prompt().split())
    if not 1 <= words <= 4000 - opts.max_tokens or opts.max_tokens < 1:
        p.error(f"need a prompt of 1 to 4000 - --max-tokens words (got {words}), "
                "and --max-tokens >= 1")
    return opts


# -- one run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What every run needs: the load generator and the processes whose CPU is read."""

    loadgen: LoadGen
    replica: Target
    opts: Options

    def measure(self, target: Target, mode: str, c: int, n: int, rnd: int) -> Run:
        body = {"model": "tiny", "prompt": self.opts.prompt(), "max_tokens": self.opts.max_tokens,
                "stream": mode == "stream"}
        spec = {"url": target.url, "path": PATH, "body": body, "stream": mode == "stream",
                "concurrency": c, "warmup": self.opts.warmup_for(c), "requests": n,
                "time_limit": self.opts.run_limit}
        roles = {"target": target.pids, "replica": self.replica.pids,
                 "loadgen": (self.loadgen.child.pid,)}
        roles |= {f"target:{part}": pids for part, pids in target.parts}

        def probe() -> tuple[dict[str, CpuReading], dict[str, float]]:
            busy, everything = host_cpu()
            cpu = {role: read_cpu(pids) for role, pids in roles.items()}
            return cpu, {"host_busy": busy, "host_all": everything,
                         "bench": time.process_time()}  # this process, probing

        done, before, after = self.loadgen.measure(spec, probe, self.opts.run_limit + 30.0)
        got = {role: cpu_between(before[0][role], after[0][role]) for role in roles}
        delta = {k: after[1][k] - before[1][k] for k in after[1]}
        ours = got["target"][0] + got["loadgen"][0] + delta["bench"]  # parts: in target
        ours += got["replica"][0] if target.proxy else 0.0
        return Run(
            target=target.name, mode=mode, concurrency=c, round=rnd, elapsed=done["elapsed"],
            lat_us=tuple(done["lat_us"]), ttfb_us=tuple(done["ttfb_us"]),
            errors=done["errors"] + done["warmup_errors"],
            error_samples=tuple(done["error_samples"] + done["warmup_error_samples"]),
            truncated=done["truncated"],
            cpu={role: on_cpu for role, (on_cpu, _) in got.items()},
            cpu_missed={role: missed for role, (_, missed) in got.items()},
            others_cpu=max(0.0, delta["host_busy"] - ours),
            host_cpu=delta["host_all"],
        )


def plan(opts: Options, targets: list[Target]) -> list[tuple[str, int, int, int, Target]]:
    """(mode, concurrency, requests, round, target) in run order: the rounds of a cell
    interleave the targets, the order rotating each round."""
    modes = ["json", "stream"] if opts.stream else ["json"]
    out = []
    for mode in modes:
        for c in opts.concurrency:
            for rnd in range(opts.rounds):
                n = opts.requests // opts.rounds + (rnd < opts.requests % opts.rounds)
                k = rnd % len(targets)
                for t in targets[k:] + targets[:k]:
                    out.append((mode, c, n, rnd, t))
    return out


def peer_failure(target: Target, run: Run) -> str | None:
    """Why a peer is left out of the rest of the benchmark after this run, if it is."""
    where = f"{run.mode} c={run.concurrency} round {run.round}"
    if not all(running(pid) for pid in target.pids):
        return f"exited during {where}"
    if run.completed == 0:
        sample = run.error_samples[0] if run.error_samples else "no sample"
        return f"no request completed in {where} ({run.errors} errors; {sample[:200]})"
    if run.truncated:
        return f"too slow: {where} hit the run time limit"
    return None


# -- the benchmark ----------------------------------------------------------------------


def start_targets(
    kids: Children, opts: Options, compare: str | None = None
) -> tuple[Target, list[Target], dict[str, str]]:
    """The replica, every target to measure (the replica first), and the peers missing."""
    replica = start_replica(kids, ReplicaSpec(max_tokens=opts.max_tokens))
    wrap = None
    if opts.profile == "cprofile":
        wrap = ["-m", "cProfile", "-o", str(opts.out.with_name("gateway.prof"))]
    # this tree's warmgw, whatever else the environment would import
    routing = {"prefix": {"enabled": True}} if opts.prefix_routing else None
    starters = [gateway_starter(kids.workdir, opts.strategy, wrap, src=REPO, routing=routing)]
    if opts.compare_src is not None:
        starters.append(gateway_starter(kids.workdir, opts.strategy, name=compare or "compare",
                                        src=opts.compare_src))
    if opts.envoy_epp:
        starters.append(envoy_epp_starter(kids.workdir, opts.strategy, src=REPO))
    starters += [PEERS[name] for name in opts.peers]
    targets = [replica]
    unavailable: dict[str, str] = {}
    for start in starters:
        t = start(kids, replica.url)
        if isinstance(t, Unavailable):
            unavailable[t.name] = t.note
        else:
            targets.append(t)
    return replica, targets, unavailable


def run(opts: Options) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + opts.time_limit
    runs: list[Run] = []
    incomplete = False
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    cmp_tree = overhead_meta.tree(opts.compare_src) if opts.compare_src else None
    cmp_name = f"warmgw@{overhead_meta.tree_label(cmp_tree)}" if cmp_tree else None
    with tempfile.TemporaryDirectory(prefix="warmgw-overhead-") as tmp, Children(
        Path(tmp)
    ) as kids:
        replica, targets, unavailable = start_targets(kids, opts, cmp_name)
        argv = [sys.executable, "-m", "loadtest.loadgen"]
        loadgen = LoadGen(kids.start("loadgen", argv, pipes=True, cwd=REPO))
        spy = _start_py_spy(kids, opts, targets[1])
        if opts.pin:
            _pin(targets, loadgen)
        bench = Bench(loadgen, replica, opts)
        peers = {t.name for t in targets[2:] if t.name in PEERS}
        dropped: dict[str, str] = {}
        try:
            for mode, c, n, rnd, target in plan(opts, targets):
                if time.monotonic() > deadline:
                    incomplete = True
                    break
                if target.name in dropped:
                    continue
                r = bench.measure(target, mode, c, n, rnd)
                runs.append(r)
                why = peer_failure(target, r) if target.name in peers else None
                if why is not None:
                    dropped[target.name] = f"left out after a failed run: {why}"
                    print(f"overhead: {target.name} {dropped[target.name]}", file=sys.stderr)
            loadgen.quit()  # otherwise (Ctrl-C, a failure) kids.close() kills it at once
        finally:
            if spy is not None:
                spy.stop()  # SIGINT: py-spy writes its file
    if cmp_tree is not None:
        cmp_tree["target"] = cmp_name
    return {
        "meta": _meta(opts, time.monotonic() - t0, incomplete, cmp_tree),
        "targets": [{"name": t.name, "url": t.url, "proxy": t.proxy} for t in targets]
        + [{"name": k, "note": v} for k, v in unavailable.items()],
        "unavailable": unavailable,
        "dropped": dropped,
        "peers": sorted(peers),
        "gateway": targets[1].name,
        "summary": summarise(runs, gateway=targets[1].name, compare=cmp_name),
        "runs": [overhead_meta.run_json(r) for r in runs],
    }


def _pin(targets: list[Target], loadgen: LoadGen) -> None:
    """The proxies on the last CPU; the replica, the load generator and this process on
    the others: a proxy then never shares its core with the load it is measured under."""
    cpus = sorted(os.sched_getaffinity(0))
    rest = set(cpus[:-1])
    pin([os.getpid(), loadgen.child.pid, *targets[0].pids], rest)
    pin([pid for t in targets[1:] for pid in t.pids], {cpus[-1]})


def _start_py_spy(kids: Children, opts: Options, gateway: Target) -> Child | None:
    if opts.py_spy is None:
        return None
    out = opts.out.with_name("gateway-py-spy.txt")
    argv = [opts.py_spy, "record", "--pid", str(gateway.pids[0]), "--format", "raw",
            "--rate", "200", "--output", str(out)]
    if opts.py_spy_native:
        argv.append("--native")
    return kids.start("py-spy", argv, stop_signal=signal.SIGINT, grace=20.0)


def _meta(opts: Options, elapsed: float, incomplete: bool,
          compare: dict[str, Any] | None) -> dict[str, Any]:
    d = asdict(opts)
    d["out"] = str(opts.out)
    d["compare_src"] = str(opts.compare_src) if opts.compare_src else None
    d["prompt_chars"] = len(opts.prompt())
    return overhead_meta.meta(d, elapsed, incomplete, REPO, compare, CLK_TCK) | {
        "replica": asdict(ReplicaSpec(max_tokens=opts.max_tokens)) | {"ttft": 0, "itl": 0},
        "profiled": bool(opts.profile or opts.py_spy),
    }


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    old = overhead_meta.stale_trees(overhead_meta.tree(REPO), overhead_meta.tree(
        opts.compare_src) if opts.compare_src else None)
    if old is not None:
        print(f"overhead: {old}", file=sys.stderr)
        return 2
    try:
        results = run(opts)
    except ChildFailed as e:
        print(f"overhead: {e}", file=sys.stderr)
        return 2
    opts.out.write_text(json.dumps(results, indent=1) + "\n")
    m = results["meta"]
    prompt = (f"{opts.prompt_bytes} bytes" if opts.prompt_bytes is not None
              else f"{opts.prompt_words} words")
    print(
        f"warmgw overhead: tree {overhead_meta.tree_label(m['git'])} "
        f"({overhead_meta.build_label(m['git'])}), 1 sim replica (ttft 0, "
        f"itl 0, max_tokens {opts.max_tokens}, prompt {prompt}), "
        f"strategy {opts.strategy}" + (", prefix routing on" if opts.prefix_routing else "")
        + f", {opts.requests} requests per cell in {opts.rounds} "
        f"interleaved rounds, {m['cpus']} CPUs, {m['elapsed_s']} s"
        + (" [PROFILED: not comparable]" if m["profiled"] else "")
    )
    if not m["meets_cpu_standard"]:
        print(f"(below the standard for a CPU comparison: "
              f"{overhead_meta.STANDARD_REQUESTS} requests per cell in "
              f"{overhead_meta.STANDARD_ROUNDS} rounds or more)")
    print(table(results["summary"], results["unavailable"] | results["dropped"]))
    split = parts_table(results["summary"])
    if split:
        print()
        print(split)
    if m["compare"] is not None:
        print()
        print(compare_table(results["summary"], results["gateway"],
                            overhead_meta.tree_label(m["git"]), m["compare"]))
    print(f"wrote {opts.out}")
    peers = set(results["peers"])
    for r in results["summary"]:
        if r["errors"] and r["target"] in peers:
            print(f"{r['target']} ({r['mode']}, c={r['concurrency']}): {r['errors']} errors, "
                  f"e.g. {r['error_samples'][:1]}", file=sys.stderr)
    failed = m["incomplete"] or any(
        r["errors"] for r in results["summary"] if r["target"] not in peers
    )
    if m["incomplete"]:
        print("the time limit stopped the benchmark early", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
