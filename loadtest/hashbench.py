"""The time to hash a prompt for prefix affinity, against the issue's bound (50 us for an
8 KB prompt): warmgw.core.prefix.chunks_of, i.e. render (a chat's messages in order, role
and text; a completion's prompt) + chain (chained crc32 of each full chunk), on the JSON
object the gateway has already parsed (parsing the body is the request path's cost with
or without prefix routing).

    .venv/bin/python -m loadtest.hashbench [--prompt-bytes 8192] [--chunk-bytes 256]
                                           [--repeat 7] [--number 2000]

Prints, for a chat request (a system prompt and a user message, half the bytes each) and
a completions request: the best of --repeat timings of --number calls (the usual timeit
reading: the least disturbed by other processes), the median of them, and the chunks
hashed. Exit status 1 if a best time is over the bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

from warmgw.core.prefix import PrefixParams, chunks_of

BOUND_US = 50.0


def text(n: int, seed: str) -> str:
    """n bytes of ASCII words, distinct per seed."""
    out = " ".join(f"{seed}{i}" for i in range(n // 4 + 2))
    return out[:n]


def bodies(prompt_bytes: int) -> dict[str, tuple[str, dict[str, Any]]]:
    half = prompt_bytes // 2
    return {
        "chat": ("chat", {"model": "tiny", "max_tokens": 16, "messages": [
            {"role": "system", "content": text(half, "s")},
            {"role": "user", "content": text(prompt_bytes - half, "u")}]}),
        "completions": ("completions", {"model": "tiny", "max_tokens": 16,
                                        "prompt": text(prompt_bytes, "p")}),
    }


def measure(fn: Callable[[], object], repeat: int, number: int) -> tuple[float, float]:
    """(best, median) microseconds per call."""
    times = timeit.repeat(fn, repeat=repeat, number=number)
    per = [t / number * 1e6 for t in times]
    return min(per), statistics.median(per)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.hashbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-bytes", type=int, default=8192)
    p.add_argument("--chunk-bytes", type=int, default=PrefixParams().chunk_bytes)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--number", type=int, default=2000)
    a = p.parse_args(argv)
    for name in ("prompt_bytes", "chunk_bytes", "repeat", "number"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a whole number >= 1, "
                    f"got {getattr(a, name)}")
    params = PrefixParams(enabled=True, chunk_bytes=a.chunk_bytes)
    print(f"hashing a {a.prompt_bytes}-byte prompt in {a.chunk_bytes}-byte chunks "
          f"(render + chain), best / median of {a.repeat} x {a.number} calls; "
          f"bound {BOUND_US:g} us")
    over = False
    for label, (route, obj) in bodies(a.prompt_bytes).items():
        n = len(chunks_of(route, obj, "tiny", params))
        best, median = measure(lambda r=route, o=obj: chunks_of(r, o, "tiny", params),
                               a.repeat, a.number)
        verdict = "ok" if best <= BOUND_US else "OVER the bound"
        over |= best > BOUND_US
        print(f"  {label:12} {best:6.2f} us best, {median:6.2f} us median, {n} chunks: "
              f"{verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
