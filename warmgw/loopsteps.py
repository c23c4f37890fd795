"""The longest single event-loop step, in the thread CPU time it took: for benchmarks only.

A step (one callback the loop runs: a task's step up to its next await, a protocol's
data_received, a timer) that takes long delays every other request on the gateway by as
much. Wall-clock lag on a shared machine measures the OS scheduler too; the thread's own
CPU time (time.thread_time) around each step measures only what the step itself cost.

uvloop runs its callbacks in C, where they cannot be wrapped, so `WARMGW_LOOP_STEPS=1`
makes `warmgw serve` run on asyncio's own loop with `Handle._run` wrapped (see cli.py); the
callbacks are the gateway's Python code either way. /metrics then carries
`warmgw_loop_step_max_cpu_seconds`: the longest step since the previous scrape (reset by
each scrape), labelled with what ran (the callback, e.g. the task's coroutine).
"""

from __future__ import annotations

import asyncio.events
import os
import time
from collections.abc import Callable
from typing import Any

ENV = "WARMGW_LOOP_STEPS"


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class LoopSteps:
    """The slowest step since the last `take`, and how many steps ran."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.what = ""
        self.steps = 0
        self._handle: Any = None
        self._saved: Callable[[Any], None] | None = None

    def seen(self, seconds: float, callback: object, args: tuple[Any, ...] | None = None
             ) -> None:
        self.steps += 1
        if seconds > self.max_s:
            self.max_s = seconds
            self.what = describe(callback, args)

    def take(self) -> tuple[float, str]:
        """The longest step since the last take (and what ran), starting over."""
        out = (self.max_s, self.what)
        self.max_s, self.what = 0.0, ""
        return out

    def install(self) -> None:
        """Wrap asyncio's Handle._run (the stdlib loop's one way to run a callback)."""
        if self._saved is not None:
            return
        handle_cls: Any = asyncio.events.Handle
        original: Callable[[Any], None] = handle_cls._run
        clock = time.thread_time
        seen = self.seen

        def _run(handle: Any) -> None:
            callback, args = handle._callback, handle._args  # cleared if cancelled meanwhile
            t0 = clock()
            try:
                original(handle)
            finally:
                seen(clock() - t0, callback, args)

        self._saved = original
        handle_cls._run = _run

    def uninstall(self) -> None:
        if self._saved is not None:
            handle_cls: Any = asyncio.events.Handle
            handle_cls._run = self._saved
            self._saved = None


def describe(cb: object, args: tuple[Any, ...] | None = None) -> str:
    """What a callback was, briefly: the task's coroutine, or the callback's name (with
    the method an aiohttp weakref timer calls)."""
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" at line {frame.f_lineno}" if frame is not None else ""
        return f"task {getattr(coro, '__qualname__', owner.get_name())}{where}"[:120]
    name = str(getattr(cb, "__qualname__", type(cb).__name__))
    if name == "_weakref_handle" and args and isinstance(args[0], tuple) and len(args[0]) == 2:
        ref, method = args[0]
        target = ref() if callable(ref) else None
        name = f"{name} {type(target).__name__}.{method}"
    return name[:120]
