"""Child processes of a benchmark, and the CPU time they spend.

Every child runs in its own process group with its output in a log file, is told to die
with its parent (Linux PR_SET_PDEATHSIG), and is stopped - SIGTERM, then SIGKILL - when
the `Children` that started it closes, also on Ctrl-C.

CPU time of a process and all its descendants: `cpu_seconds` from /proc/PID/stat (utime +
stime, in clock ticks: 10 ms steps), and `read_cpu` in nanoseconds from
/proc/PID/task/*/schedstat (see there for what it can miss).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU time ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields after the command name of /proc/PID/stat: [0] is field 3 (state)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.rindex(b")") + 2 :].decode().split()


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        f = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(f[11]) + int(f[12])


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie, not yet reaped, has exited)."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def descendants(roots: Iterable[int]) -> set[int]:
    """The roots and every live process below them (e.g. nginx's workers)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(roots)
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= new
        grew = bool(new)
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds of the roots and their descendants."""
    return sum(cpu_ticks(p) for p in descendants(roots)) / CLK_TCK


@dataclass(frozen=True)
class CpuReading:
    """Nanoseconds on CPU of some processes, read at one moment.

    tasks: every thread (task id -> first field of /proc/PID/task/TID/schedstat, the
    scheduler's sum_exec_runtime). clocks: every process (pid -> its process CPU clock,
    clock_gettime of the pid's CPUCLOCK_SCHED): the same scheduler time summed over its
    threads, with the threads that have exited. /proc/PID/schedstat alone is the main
    thread's only, and /proc/PID/stat's process-wide utime + stime comes in clock ticks.
    """

    tasks: Mapping[int, int]
    clocks: Mapping[int, int]


def _process_clock_ns(pid: int) -> int | None:
    """The process CPU clock of any pid (Linux: ((~pid) << 3) | CPUCLOCK_SCHED); glibc's
    clock_getcpuclockid is not in Python's time module, the kernel allows the read."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except OSError:  # gone
        return None


def _task_ns(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, IndexError, ValueError):  # the thread exited meanwhile
            continue
    return out


def pin(roots: Iterable[int], cpus: set[int]) -> int:
    """Bind every thread of the roots and their descendants to cpus (threads started later
    inherit it from the thread that starts them); how many threads were bound."""
    n = 0
    for pid in descendants(roots):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
                n += 1
            except OSError:
                continue  # the thread ended meanwhile
    return n


def read_cpu(roots: Iterable[int]) -> CpuReading:
    """Every thread and process of the roots and their descendants."""
    tasks: dict[int, int] = {}
    clocks: dict[int, int] = {}
    for pid in descendants(roots):
        tasks |= _task_ns(pid)
        ns = _process_clock_ns(pid)
        if ns is not None:
            clocks[pid] = ns
    return CpuReading(tasks, clocks)


def cpu_between(before: CpuReading, after: CpuReading) -> tuple[float, float]:
    """(seconds on CPU, seconds missed) between two readings.

    Seconds on CPU: summed over the threads of the later reading, each from its earlier
    figure (0 for a thread started since). A thread that exited between the readings is
    not in the later one and its time since the earlier reading is lost; a process that
    exited likewise. Seconds missed: how much more the live processes' CPU clocks (which
    keep their exited threads' time) moved than that sum; near 0 when no thread exited.
    """
    on_cpu = sum(ns - before.tasks.get(tid, 0) for tid, ns in after.tasks.items())
    clocks = sum(ns - before.clocks.get(pid, 0) for pid, ns in after.clocks.items())
    return on_cpu / 1e9, max(0, clocks - on_cpu) / 1e9


def host_cpu() -> tuple[float, float]:
    """(busy, busy + idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


# -- network ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


# -- children ---------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        log: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace: float = 3.0,
    ) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.stop_signal = stop_signal
        self.grace = grace

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float) -> None:
        """Until GET url answers 200; raises ChildFailed if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while http_status(url) != 200:
            if not self.alive():
                raise ChildFailed(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name}: {url} not 200 after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """stop_signal (SIGTERM) to its process group, SIGKILL after grace seconds; closes
        its pipes."""
        if self.proc.poll() is None:
            self._signal(self.stop_signal)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(self.grace)
        else:
            self._signal(signal.SIGKILL)  # leftovers in its group (e.g. orphaned workers)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def send_signal(self, sig: signal.Signals) -> None:
        """Send sig to its process group (a crash or a graceful stop, by the caller)."""
        self._signal(sig)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Children:
    """`with Children(workdir) as kids:` - every child started through it is stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        pipes: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace: float = 3.0,
    ) -> Child:
        """Start argv; its stderr (and stdout unless pipes) goes to workdir/NAME.log."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out,
                stderr=out,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the benchmark starts no threads
            )
        child = Child(name, proc, log, stop_signal, grace)
        self._children.append(child)
        return child

    def close(self) -> None:
        """Stop every child, the last started first (peers and gateway before the replica)."""
        while self._children:
            child = self._children.pop()
            try:
                child.stop()
            except Exception as e:  # keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {e}", file=sys.stderr)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark's entry point: SIGTERM and SIGINT (even if started ignoring it, as a
    background job does) unwind through the finally blocks that stop the children."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        raise SystemExit(130) from None
