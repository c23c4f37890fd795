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

The replicas serve the tiny model's LoRA adapter as LORA_NAME (one at a time: --max-loras
1) and log every request they receive (REQUEST_LOG): what the engine was asked to run, its
prompt in tokens and the request body, so a test can tell from a replica's own log what
reached it, and in which order (read_request_log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.vllm.build_model import LORA_DIR, is_current

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
LORA_NAME = "tiny-lora"
MAX_MODEL_LEN = 1024
# the tests' replicas: the LoRA adapter served, every request logged (REQUEST_LOG)
SERVE_FLAGS = (
    "--enable-lora", "--lora-modules", f"{LORA_NAME}={MODEL / LORA_DIR}",
    "--max-loras", "1", "--max-lora-rank", "8", "--enable-log-requests",
)  # fmt: skip
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
LINE_CHARS = 400  # the request log's lines hold whole prompts: cut in a tail


def tail(path: Path, lines: int = 60) -> str:
    """The log's last lines, without the access-log lines of the gateway's polling."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    kept = [line[:LINE_CHARS] for line in text.splitlines()
            if not any(n in line for n in NOISE)]
    return "\n".join(kept[-lines:])


# vLLM's default logging, with its request logger (on with --enable-log-requests) at DEBUG:
# at INFO it says only "Received request ID: params: SamplingParams(...), lora_request:
# ...", at DEBUG also each request's JSON body and its prompt's token ids. Nothing else of
# vLLM's logs at DEBUG (its DEBUG everywhere would flood the log at every engine step).
# vLLM hands this file (VLLM_LOGGING_CONFIG_PATH) to uvicorn as well, which then logs only
# what it configures: hence uvicorn's own loggers, as uvicorn's defaults set them up.
REQUEST_LOG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "vllm": {
            "()": "vllm.logging_utils.NewLineFormatter", "datefmt": "%m-%d %H:%M:%S",
            "format": "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s "
                      "[%(fileinfo)s:%(lineno)d] %(message)s",
        },
        "default": {"()": "uvicorn.logging.DefaultFormatter",
                    "fmt": "%(levelprefix)s %(message)s", "use_colors": False},
        "access": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                   "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
    },
    "handlers": {
        "vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": "DEBUG",
                 "stream": "ext://sys.stdout"},
        "default": {"class": "logging.StreamHandler", "formatter": "default",
                    "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
        "vllm.entrypoints.serve.utils.request_logger": {"level": "DEBUG"},
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}  # fmt: skip


class Replica:
    """One `vllm.entrypoints.openai.api_server` process (and its engine core child)."""

    def __init__(
        self, name: str, cpu: int, workdir: Path, extra_args: tuple[str, ...] = (),
        request_log: bool = False,
    ) -> None:
        self.name = name
        self.cpu = cpu
        self.extra_args = extra_args  # more `vllm serve` flags (LoRA, tool parser, ...)
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        # with --enable-log-requests: each request's body and prompt tokens too
        self.log_config = workdir / "request-log.json" if request_log else None
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
        if self.log_config is not None:
            env["VLLM_LOGGING_CONFIG_PATH"] = str(self.log_config)
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.cache_root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self.log_config is not None:
            self.log_config.write_text(json.dumps(REQUEST_LOG, indent=1) + "\n")
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
        self.all = [Replica(name, cpu, workdir, SERVE_FLAGS, request_log=True)
                    for name, cpu in (("r0", 0), ("r1", 1))]
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


@dataclass(frozen=True)
class Logged:
    """One generation request as a replica logged it (REQUEST_LOG): what its engine was
    asked to run, with the ids vLLM gave it."""

    id: str  # the engine's request id: cmpl-BASE-0 or chatcmpl-BASE
    base: str  # the client's X-Request-Id, or the body's request_id (random when unset)
    kind: str  # "chat" or "completions"
    model: str  # the LoRA adapter the engine ran it with, else the body's model
    stream: bool
    prompt_tokens: int  # the prompt's token ids, counted
    n: int
    logprobs: int | None
    structured: str  # repr of the engine's StructuredOutputsParams ("None": none)
    body: dict[str, object]


_BODY = re.compile(r"\] Request (\S+) JSON body: (\{.*\})$")
_DETAILS = re.compile(r"\] Request (\S+) details: .*prompt_token_ids: (\[[^\]]*\]|None), "
                      r"prompt_embeds shape")
_RECEIVED = re.compile(r"\] Received request ((?:chat)?cmpl-\S+): params: (SamplingParams\(.*\)),"
                       r" lora_request: (.*)\.$")


def read_request_log(path: Path, offset: int = 0) -> list[Logged]:
    """The chat and completions requests the replica received after byte `offset` of its
    log, in the order its API server handed them to the engine."""
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    bodies: dict[str, dict[str, object]] = {}
    tokens: dict[str, int] = {}
    out: list[Logged] = []
    for line in text.splitlines():
        if m := _BODY.search(line):
            bodies[m.group(1)] = json.loads(m.group(2))
        elif m := _DETAILS.search(line):
            ids = m.group(2)
            tokens[m.group(1)] = 0 if ids == "None" else len(re.findall(r"\d+", ids))
        elif m := _RECEIVED.search(line):
            rid, params, lora = m.groups()
            if rid.startswith("chatcmpl-"):
                kind, base = "chat", rid[len("chatcmpl-"):]
            else:
                kind, base = "completions", re.sub(r"-\d+$", "", rid[len("cmpl-"):])
            body = bodies.get(base, {})
            n = re.search(r"\bn=(\d+)", params)
            lp = re.search(r"\blogprobs=(\d+|None)", params)
            so = re.search(r"\bstructured_outputs=(.*), extra_args=", params)
            adapter = re.search(r"lora_name='([^']*)'", lora)
            out.append(Logged(
                id=rid, base=base, kind=kind,
                model=adapter.group(1) if adapter else str(body.get("model", "")),
                stream=bool(body.get("stream", False)),
                prompt_tokens=tokens.get(rid, -1),
                n=int(n.group(1)) if n else 1,
                logprobs=int(lp.group(1)) if lp and lp.group(1) != "None" else None,
                structured=so.group(1) if so else "None",
                body=body,
            ))  # fmt: skip
    return out


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
FIGURES: dict[str, str] = {}  # what a test measured, shown after the run (passed or not)


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
    if not ENABLED:
        return
    if TIMINGS:
        terminalreporter.section("real vLLM timings")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")
    if FIGURES:
        terminalreporter.section("real vLLM figures")
        for what, text in FIGURES.items():
            terminalreporter.write_line(f"{what}: {text}")
