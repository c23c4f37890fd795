"""Summarise py-spy's collapsed stacks (`--format raw`): where the gateway's CPU goes.

    .venv/bin/python -m loadtest.stacks loadtest/results/gateway-py-spy.txt

Prints the share of samples by category (warmgw's code, aiohttp client and server, the
syscalls seen with --py-spy-native, GC), the top functions by self time, and the warmgw
functions by inclusive time.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

SYSCALLS = frozenset({"write", "writev", "send", "sendmsg", "read", "recv", "recvmsg",
                      "epoll_wait", "epoll_pwait", "getpid", "getrandom"})
_LINE = re.compile(r":\d+\)")


def parse(lines: Iterable[str]) -> Iterator[tuple[list[str], int]]:
    """(frames root first, line numbers dropped; sample count) per stack."""
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, n = line.rsplit(" ", 1)
        yield [_LINE.sub(")", f) for f in stack.split(";")], int(n)


def _file(frame: str) -> str:
    m = re.search(r"\(([^)]*)\)$", frame)
    return m.group(1) if m else frame


def category(frames: list[str]) -> str:
    leaf = frames[-1].split(" (")[0]
    py = [f for f in frames if ".py)" in f]
    if leaf in SYSCALLS:
        side = "server"
        if any("client_reqrep" in f or "ClientSession" in f for f in py):
            side = "upstream client"
        elif not any("web_" in f for f in py):
            side = "event loop"
        return f"syscall {leaf} ({side})"
    if any("gc_collect" in f for f in frames[-4:]):
        return "gc"
    path = _file(py[-1]) if py else "C"
    if path.startswith("warmgw/"):
        return path
    if path.startswith("aiohttp/"):
        if any(k in path for k in ("client", "connector", "payload")):
            return "aiohttp client"
        return "aiohttp server/http/streams"
    if path.startswith("asyncio/runners"):
        return "event loop (C, no Python frame)"
    return path.split("/")[0]


def report(stacks: Iterable[tuple[list[str], int]], top: int = 25) -> str:
    total = 0
    cats: Counter[str] = Counter()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in stacks:
        total += n
        cats[category(frames)] += n
        own[frames[-1]] += n
        for f in set(frames):
            if "warmgw/" in f:
                incl[f] += n
    if not total:
        return "no samples"

    def pct(counter: Counter[str], k: int | None = None) -> list[str]:
        return [f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(k)]

    return "\n".join(
        [f"{total} samples", "", "== by category", *pct(cats), "", f"== self time, top {top}",
         *pct(own, top), "", "== warmgw functions, inclusive", *pct(incl, top)]
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0]) as f:
        print(report(parse(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
