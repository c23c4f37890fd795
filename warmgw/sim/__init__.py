"""A vLLM look-alike for demos, integration tests and load tests.

``SimReplica`` serves vLLM's OpenAI routes (/v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models, /tokenize, /health, /ping, /version, /load, /metrics) with the
same JSON and SSE shapes (n choices, logprobs, LoRA adapters named as the model), a
latency model (ttft_base + ttft_per_prompt_token * prompt, then itl per token), a FIFO
queue of at most max_running requests, and a cold-start model: first uses cost time once
per process (a prompt-length bucket, a batch-size bucket, a LoRA adapter load into one of
max_loras slots, a structured-output grammar, a tools list, logprobs, n > 1; see
``warmgw.sim.config``); a restart makes the replica cold again. ``cold_rules(name)`` gives
named presets ("grid", "fine", "features") as SimConfig overrides.

Requests with ``X-Warmgw-Warmup: 1`` are counted as warmup in ``replica.stats`` and
``replica.log``; each record carries the prompt tokens, the model or adapter named, the
features used and the cold costs paid (GET /sim/requests), so tests can prove that no
user request paid a cold penalty.

Faults (``replica.set_faults(...)`` or POST /sim/faults): error_rate, hang, slow_drip,
drop_mid_stream, unhealthy; plus ``stop_listening()``/``resume_listening()`` and
``restart()`` (POST /sim/restart). See ``warmgw.sim.faults`` and ``warmgw.sim.control``.

Everything random comes from ``random.Random(config.seed)``; ``SimFleet`` gives replica i
the seed ``seed + i``.
"""

from warmgw.sim.cold import COLD_RULES, cold_rules
from warmgw.sim.engine import RequestRecord, SimStats
from warmgw.sim.faults import Faults
from warmgw.sim.fleet import SimFleet
from warmgw.sim.model import SimConfig
from warmgw.sim.server import WARMUP_HEADER, SimReplica

__all__ = [
    "COLD_RULES",
    "WARMUP_HEADER",
    "Faults",
    "RequestRecord",
    "SimConfig",
    "SimFleet",
    "SimReplica",
    "SimStats",
    "cold_rules",
]
