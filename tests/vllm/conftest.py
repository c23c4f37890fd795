"""Two REAL vLLM replicas (CPU backend, a tiny local random-weight Llama) for the tests here.

Off unless WARMGW_VLLM=1: the fast suite must not depend on a 3.4 GB venv, ~6 GiB of RAM
and minutes of start-up. `make test-vllm` builds what is needed and runs this directory:

    scripts/vllm-env.sh                                   # the vLLM venv (cached)
    $VENV/bin/python tests/vllm/build_model.py DIR        # the tiny model (cached)
    WARMGW_VLLM=1 .venv/bin/pytest -q tests/vllm

Environment: WARMGW_VLLM_VENV (default ~/.cache/warmgw/vllm-venv), WARMGW_VLLM_MODEL
(default ~/.cache/warmgw/tiny-llama; built here if missing or built by an older recipe of
build_model.py), WARMGW_VLLM_KEEP_LOGS=1 keeps
the replica logs after a passing session. Replicas listen on 127.0.0.1 only; every
process is started in its own session and killed with its whole process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.vllm.build_model import is_current

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("WARMGW_VLLM") == "1"
SKIP_REASON = (
    "real-vLLM tests are off: set WARMGW_VLLM=1 or run `make test-vllm` "
    "(needs the vLLM venv from scripts/vllm-env.sh, ~6 GiB RAM, several minutes)"
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "warmgw"
VENV = Path(os.environ.get("WARMGW_VLLM_VENV") or CACHE / "vllm-venv")
MODEL = Path(os.environ.get("WARMGW_VLLM_MODEL") or CACHE / "tiny-llama")
SERVED = "tiny"
MAX_MODEL_LEN = 1024
HEALTH_TIMEOUT = 240.0  # s: /health was 200 after 32-59 s here (two starting side by side)
BUILD_TIMEOUT = 300.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        # the gateway's lifecycle transitions and warmup results, in a failed test's report
        logging.getLogger("warmgw").setLevel(logging.INFO)
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NOISE = ('"GET /health HTTP/1.1"', '"GET /metrics HTTP/1.1"', "[launcher.py:195] Route:")


def tail(path: Path, lines: int = 60) -> str:
    """The log's last lines, without the access-log lines of the gateway's polling."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    kept = [line for line in text.splitlines() if not any(n in line for n in NOISE)]
    return "\n".join(kept[-lines:])


class Replica:
    """One `vllm.entrypoints.openai.api_server` process (and its engine core child)."""

    def __init__(
        self, name: str, cpu: int, workdir: Path, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.cpu = cpu
        self.extra_args = extra_args  # more `vllm serve` flags (LoRA, tool parser, ...)
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.cache_root = workdir / f"{name}-cache"
        # vLLM leaves ZMQ IPC sockets and gloo store files in $TMPDIR at every start
        self.tmp = workdir / f"{name}-tmp"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_wall = 0.0  # time.time() at the last start
        self.startup_seconds: list[float] = []  # start -> /health 200, one per start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(MODEL), "--served-model-name", SERVED,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
            "--num-gpu-blocks-override", "16", "--max-num-seqs", "8",
            *self.extra_args,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "WARMGW_VLLM")
        }
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            VLLM_CPU_KVCACHE_SPACE="1",
            # Not pinned: with an explicit binding on a 2-core machine, vLLM reserves the
            # other core for this replica's API server, which is the core the other
            # replica's worker spins on; a restarted replica then hung in the kernel
            # (sched_setaffinity, affine_move_task) and never came up.
            VLLM_CPU_OMP_THREADS_BIND="nobind",
            OMP_NUM_THREADS="1",
            VLLM_CACHE_ROOT=str(self.cache_root),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",  # no usage report to the internet
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
            PYTHONFAULTHANDLER="1",  # SIGABRT dumps every thread's stack into the log
            TMPDIR=str(self.tmp),
        )
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.cache_root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== warmgw: starting {self.name} on {self.url} =====\n".encode())
            log.flush()
            self.started_wall = time.time()
            self.proc = subprocess.Popen(
                self.command(), env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.cache_root),
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> float:
        """Block until /health is 200; seconds since start. Fails with the log's tail."""
        deadline = time.monotonic() + timeout
        t0 = time.monotonic() - (time.time() - self.started_wall)
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(
                    f"vLLM replica {self.name} exited ({code}) before /health was 200; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            if self.healthy():
                took = time.monotonic() - t0
                self.startup_seconds.append(took)
                return took
            time.sleep(1.0)
        # where is it stuck? faulthandler prints each process's stacks on SIGABRT
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGABRT)
        time.sleep(3.0)
        raise RuntimeError(
            f"vLLM replica {self.name} not healthy after {timeout:g} s (stacks dumped); "
            f"log {self.log_path}:\n{tail(self.log_path, 150)}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, grace: float = 20.0) -> None:
        """Signal the whole process group (API server + engine core), then reap it."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # the engine core may outlive the API server by a moment: make sure the group is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Replicas:
    """The two replicas of a session: r0 on core 0, r1 on core 1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all = [Replica("r0", 0, workdir), Replica("r1", 1, workdir)]
        self.failed = False  # a test failed: keep the logs

    def __getitem__(self, i: int) -> Replica:
        return self.all[i]

    @property
    def urls(self) -> dict[str, str]:
        return {r.name: r.url for r in self.all}

    def start_all(self) -> None:
        for r in self.all:
            r.start()
        for r in self.all:
            r.wait_healthy()

    def ensure_up(self) -> None:
        """Restart any replica a failed test left dead, so later tests still run."""
        for r in self.all:
            if not r.running() or not r.healthy():
                r.kill()
                r.start()
                r.wait_healthy()

    def stop_all(self) -> None:
        for r in self.all:
            r.stop()

    def logs(self, lines: int = 80) -> list[tuple[str, str]]:
        return [(f"vLLM {r.name} log (tail of {r.log_path})", tail(r.log_path, lines))
                for r in self.all]


def ensure_model() -> None:
    """The tiny model, (re)built unless the cached one comes from this build_model.py."""
    python = VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"no vLLM venv at {VENV}: run scripts/vllm-env.sh or `make test-vllm` first"
        )
    if is_current(MODEL):
        return
    subprocess.run(
        [str(python), str(HERE / "build_model.py"), str(MODEL)],
        check=True, timeout=BUILD_TIMEOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


async def count_tokens(s: aiohttp.ClientSession, url: str, prompt: str) -> int:
    """The prompt's length in the replica's own tokens (vLLM's POST /tokenize)."""
    async with s.post(url + "/tokenize", json={"model": SERVED, "prompt": prompt}) as r:
        assert r.status == 200, await r.text()
        return int(json.loads(await r.read())["count"])


async def sized_prompt(s: aiohttp.ClientSession, url: str, tokens: int) -> tuple[str, int]:
    """Plain text of `tokens` tokens (or just under, if no filler fits) and its count.

    Sized with the server's tokenizer: the tiny model's tokenizer splits words ("hello" is
    several tokens), so a word count says little about a token count."""
    per_word = await count_tokens(s, url, " ".join(["hello"] * 64)) / 64
    words = max(1, int(tokens / per_word))
    text = " ".join(["hello"] * words)
    n = await count_tokens(s, url, text)
    while n > tokens and words > 1:
        words -= 1
        text = " ".join(["hello"] * words)
        n = await count_tokens(s, url, text)
    for _ in range(16):  # top up with short words, usually one token each
        if n >= tokens:
            break
        longer = text + " a"
        m = await count_tokens(s, url, longer)
        if m > tokens:
            break
        text, n = longer, m
    return text, n


SHM_PREFIXES = ("psm_", "sem.mp-")  # shared memory and semaphores of multiprocessing


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIXES)}
    except OSError:
        return set()


def mapped_shm() -> set[str]:
    """The /dev/shm segments some live process still maps."""
    names: set[str] = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                    if "/dev/shm/" in line:
                        names.add(line.split("/dev/shm/", 1)[1].split()[0])
    return names


def remove_leaked_shm(before: set[str]) -> None:
    """vLLM's shared-memory message queues and semaphores outlive killed replicas (their
    resource tracker dies with them): remove those that appeared during the session and
    that no live process maps."""
    for name in shm_segments() - before - mapped_shm():
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")


_SESSION: list[Replicas] = []
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def vllm_replicas() -> Iterator[Replicas]:
    ensure_model()
    workdir = Path(tempfile.mkdtemp(prefix="warmgw-vllm-"))
    shm_before = shm_segments()
    reps = Replicas(workdir)
    _SESSION.append(reps)
    t0 = time.monotonic()
    try:
        reps.start_all()
        TIMINGS["replica start-up (both, in parallel)"] = time.monotonic() - t0
        yield reps
    finally:
        reps.stop_all()
        remove_leaked_shm(shm_before)
        _SESSION.remove(reps)
        if reps.failed or os.environ.get("WARMGW_VLLM_KEEP_LOGS") == "1":
            print(f"\nvLLM replica logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and HERE in item.path.parents and _SESSION:
        reps = _SESSION[-1]
        reps.failed = True
        for title, text in reps.logs():
            report.sections.append((title, text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ENABLED or not TIMINGS:
        return
    terminalreporter.section("real vLLM timings")
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{what}: {seconds:.1f} s")
