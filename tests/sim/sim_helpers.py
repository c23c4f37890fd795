"""Helpers shared by the simulator tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from warmgw.sim import SimConfig

# Millisecond latencies keep the suite fast.
FAST = SimConfig(ttft_base=0.002, ttft_per_prompt_token=0.0, itl=0.001)


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """/metrics as {'name{k="v",...}': value}, labels sorted; parsed by prometheus_client."""
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def vllm(name: str, **extra: str) -> str:
    """Key of a vLLM sample for model tiny, engine 0 (as produced by scrape())."""
    labels = {"model_name": "tiny", "engine": "0", **extra}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


async def wait_until(predicate: Callable[[], bool], seconds: float = 2.0) -> None:
    """Poll predicate every 5 ms; fail the test if it is still false after ``seconds``."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition still false after {seconds}s")
