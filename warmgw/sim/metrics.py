"""vLLM-named Prometheus metrics for one simulated process (its own CollectorRegistry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Bucket boundaries as in vLLM's own metrics.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

CONTENT_TYPE = CONTENT_TYPE_LATEST
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class SimMetrics:
    """Created afresh for every simulated process start, so counters reset on restart."""

    def __init__(
        self,
        model: str,
        start_time: float,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_usage: Callable[[], float],
        max_loras: int | None = None,
        wall_clock: Callable[[], float] | None = None,
        cache: tuple[int, int, bool] = (16, 0, False),
    ) -> None:
        """``max_loras`` (LoRA enabled) exports vllm:lora_requests_info; ``wall_clock``
        stamps it (default: the process start time); ``cache`` is (block_size,
        num_gpu_blocks, enable_prefix_caching), exported as vllm:cache_config_info."""
        self.registry = CollectorRegistry()
        labels = ("model_name", "engine")
        values = (model, "0")
        r = self.registry

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> None:
            Gauge(name, doc, labels, registry=r).labels(*values).set_function(fn)

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              running)  # fmt: skip
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
        ).labels(*values)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        ).labels(*values)
        # In tokens, as vLLM: queries = prompt tokens scheduled, hits = those cached.
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels, registry=r,
        ).labels(*values)
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels, registry=r,
        ).labels(*values)
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*labels, "finished_reason"),
            registry=r,
        )
        self._values = values
        for reason in FINISHED_REASONS:  # exported at 0 from the start, as real vLLM 0.32
            self._success.labels(*values, reason)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(*values)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        ).labels(*values)
        # As vLLM (v1 loggers' log_metrics_info): CacheConfig's fields as labels, value 1.
        block_size, blocks, prefix_caching = cache
        info = {"block_size": str(block_size), "cache_dtype": "auto",
                "enable_prefix_caching": str(prefix_caching), "gpu_memory_utilization": "0.9",
                "num_cpu_blocks": "None", "num_gpu_blocks": str(blocks), "engine": "0"}
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              tuple(info), registry=r).labels(**info).set(1)
        self._wall = wall_clock or (lambda: start_time)
        self._lora: Gauge | None = None
        self._max_loras = str(max_loras)
        if max_loras is not None:
            # As vLLM: no model_name/engine labels; each label set seen keeps the time it
            # was last current, so the series with the highest value is the current one.
            self._lora = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ("max_lora", "waiting_lora_adapters", "running_lora_adapters"),
                registry=r,
            )
            self.lora_update([], [])
        Gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            registry=r,
        ).set(start_time)

    def success(self, finished_reason: str) -> None:
        self._success.labels(*self._values, finished_reason).inc()

    def lora_update(self, running: list[str], waiting: list[str]) -> None:
        """The LoRA adapters of running and waiting requests changed."""
        if self._lora is not None:
            self._lora.labels(self._max_loras, ",".join(waiting), ",".join(running)).set(
                self._wall()
            )

    def render(self) -> bytes:
        return generate_latest(self.registry)
