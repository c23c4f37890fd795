"""A vLLM look-alike for demos, integration tests and load tests.

``SimReplica`` serves vLLM's OpenAI routes (/v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models, /health, /ping, /version, /load, /metrics) with the same JSON
and SSE shapes, a latency model (ttft_base + ttft_per_prompt_token * prompt, then itl per
token), a FIFO queue of at most max_running requests, and a cold-start model: the first
request in each prompt-length bucket pays cold_shape_penalty, the first admitted at each
batch-size bucket pays cold_batch_penalty; a restart makes the replica cold again.

Requests with ``X-Warmgw-Warmup: 1`` are counted as warmup in ``replica.stats`` and
``replica.log``, so tests can prove that no user request paid a cold penalty.

Faults (``replica.set_faults(...)`` or POST /sim/faults): error_rate, hang, slow_drip,
drop_mid_stream, unhealthy; plus ``stop_listening()``/``resume_listening()`` and
``restart()`` (POST /sim/restart). See ``warmgw.sim.faults`` and ``warmgw.sim.control``.

Everything random comes from ``random.Random(config.seed)``; ``SimFleet`` gives replica i
the seed ``seed + i``.
"""

from warmgw.sim.engine import RequestRecord, SimStats
from warmgw.sim.faults import Faults
from warmgw.sim.fleet import SimFleet
from warmgw.sim.model import SimConfig
from warmgw.sim.server import WARMUP_HEADER, SimReplica

__all__ = [
    "WARMUP_HEADER",
    "Faults",
    "RequestRecord",
    "SimConfig",
    "SimFleet",
    "SimReplica",
    "SimStats",
]
