"""Reading a replica over HTTP: what /v1/models and /metrics say of it, and how a failed
request to it reads in a log line."""

from __future__ import annotations

import errno
import logging
import re
from typing import NamedTuple

import aiohttp

from warmgw.core.routing import ColdHit

log = logging.getLogger("warmgw.lifecycle")

_START = re.compile(rb"^process_start_time_seconds(?:\{[^}]*\})?\s+(\S+)", re.M)
_MAX_LORA = re.compile(rb'^vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', re.M)
_ENGINE = re.compile(
    rb"^vllm:(num_requests_waiting|num_requests_running|kv_cache_usage_perc|gpu_cache_usage_perc)"
    rb"(?:\{[^}]*\})?\s+(\S+)", re.M,
)
_CACHE_INFO = re.compile(rb"^vllm:cache_config_info\{([^}]*)\}", re.M)
_BLOCK_SIZE = re.compile(rb'(?:^|,)block_size="(\d+)"')
_GPU_BLOCKS = re.compile(rb'(?:^|,)num_gpu_blocks="(\d+)"')



class ProbeFailed(Exception):
    pass


class Probe(NamedTuple):
    models: frozenset[str]
    adapters: frozenset[str]  # the models that are LoRA adapters of another
    max_model_len: int | None
    marker: float | None  # process_start_time_seconds


def engine_gauges(metrics_text: bytes) -> dict[str, float]:
    """vLLM's queue and KV-cache gauges, summed over engines; KV usage under one name;
    "cache_tokens": the KV cache's size in tokens (vllm:cache_config_info's num_gpu_blocks
    x block_size, summed over engines), when it is exported and known."""
    out: dict[str, float] = {}
    for info in _CACHE_INFO.finditer(metrics_text):
        labels = info.group(1)
        size, blocks = _BLOCK_SIZE.search(labels), _GPU_BLOCKS.search(labels)
        if size and blocks:  # num_gpu_blocks is "None" before the engine profiled memory
            out["cache_tokens"] = (out.get("cache_tokens", 0.0)
                                   + float(int(size.group(1)) * int(blocks.group(1))))
    lora = _MAX_LORA.search(metrics_text)
    if lora:
        out["max_lora"] = float(lora.group(1))
    for m in _ENGINE.finditer(metrics_text):
        name = m.group(1).decode().replace("gpu_cache_usage_perc", "kv_cache_usage_perc")
        try:
            out[name] = out.get(name, 0.0) + float(m.group(2))
        except ValueError:
            continue
    return out


def start_marker(metrics_text: bytes) -> float | None:
    """process_start_time_seconds from a Prometheus exposition, if present."""
    m = _START.search(metrics_text)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def log_cold_hit(hit: ColdHit) -> None:
    log.warning("cold hit: replica %s served the first %s (%s) %.1fx slower than the fleet; "
                "every later warmup sends it", hit.replica, hit.shape.describe(), hit.reason,
                hit.ratio)


def base_model(models: frozenset[str], adapters: frozenset[str]) -> str:
    """The model a replica serves that is not an adapter (the first, if several)."""
    return sorted(models - adapters or models)[0]


def out_of_fds(e: BaseException) -> bool:
    """EMFILE/ENFILE: the gateway (or the host) has no file descriptor left to connect
    with; not a sign that the replica is down."""
    os_error = getattr(e, "os_error", e)
    return isinstance(os_error, OSError) and os_error.errno in (errno.EMFILE, errno.ENFILE)


def what(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):  # without aiohttp's ssl/errno noise
        return f"cannot connect to {e.host}:{e.port} ({e.os_error.strerror or e.os_error})"
    return str(e) or type(e).__name__
