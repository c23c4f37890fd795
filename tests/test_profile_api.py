"""The traffic profile as the operator sees it: GET /admin/v1/profile and `warmgw profile`,
against a gateway over simulated replicas that make first uses cost (tests/
test_learned_warmup.py's traffic: sizes, schemas, tools, logprobs, n, an adapter).

Two replicas warmed by the grid alone serve the mix: the coverage figure says part of it
was of shapes no warmup had sent, and the learned shapes, the kept specs and the cold hits
are listed (the same numbers /metrics exports). A third replica joins, its warmup sends the
learned shapes, and with the first two drained every further request lands on it: the
coverage figure rises by exactly those requests, all of them covered."""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import gateway_config, wait_all_ready, wait_for, wait_state
from tests.test_cli_ops import warmgw
from tests.test_learned_warmup import SCHEMA_A, TOOLS, config, mix, send_all
from warmgw.app import Gateway
from warmgw.core.lifecycle import State
from warmgw.core.model import EndpointSpec
from warmgw.sim import SimFleet

TOKEN = "cli-token"  # tests.test_cli_ops.warmgw's default


async def get(gw: Gateway, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(
        gw.admin_url + "/admin/v1" + path, headers=headers
    ) as r:
        return r.status, await r.json()


async def scrape(gw: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        return {f.name: f for f in text_string_to_metric_families(await r.text())}


async def check_against_metrics(gw: Gateway, pr: dict[str, Any]) -> None:
    """The answer and /metrics tell the same story (no traffic in between)."""
    fam = await scrape(gw)
    assert fam["warmgw_profile_shapes"].samples[0].value == pr["profile"]["shapes"]
    ratio = fam["warmgw_warmup_coverage_ratio"].samples[0].value
    assert pr["coverage"]["ratio"] == pytest.approx(ratio, abs=1e-6)
    hits = {(s.labels["replica"], s.labels["reason"]): s.value
            for s in fam["warmgw_cold_hits"].samples if s.name.endswith("_total")}
    assert hits == {(r, why): n for r, by in pr["cold_hits"].items() for why, n in by.items()}


def check_shape(pr: dict[str, Any]) -> None:
    shapes = pr["shapes"]
    shares = [s["share"] for s in shapes]
    assert shares == sorted(shares, reverse=True)
    assert 0.0 < sum(shares) <= 1.0 + 1e-3  # each rounded to 1e-6
    assert pr["profile"]["shapes"] >= len(shapes)
    for s in shapes:
        assert set(s) == {"shape", "model", "kind", "stream", "prompt_tokens", "bucket_tokens",
                          "features", "share", "pinned"}
        assert s["kind"] in ("chat", "completions") and s["model"] in ("tiny", "sql-lora")
        lo, hi = s["prompt_tokens"]["lo"], s["prompt_tokens"]["hi"]
        b_lo, b_hi = s["bucket_tokens"]
        if lo is not None:
            assert b_lo <= lo <= hi <= b_hi, s  # exact sizes inside the shape's bucket
        assert s["shape"].startswith(f"{s['model']} {s['kind']}/")
        assert s["shape"].endswith(s["features"]["text"])


@pytest.mark.timeout(240)
async def test_profile_from_the_api_and_the_cli() -> None:
    rng = random.Random(11)
    async with SimFleet([config("features")] * 3) as fleet:
        r0, r1, r2 = fleet.replicas
        cfg = gateway_config({"r0": r0.url, "r1": r1.url}, admin={"port": 0, "token": TOKEN},
                             warmup={"deadline": 120, "tolerance": 0.5, "abs_tolerance": 0.05})
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=60)

            # the token is needed, as for every admin call
            assert (await get(gw, "/profile", token=None))[0] == 401
            assert (await get(gw, "/profile", token="wrong"))[0] == 401
            code, _, err = await warmgw(gw, "profile", token="wrong")
            assert code == 3 and "401" in err
            assert (await get(gw, "/profile?specs=maybe"))[0] == 400

            # before any user request: nothing learned, no coverage figure
            status, pr = await get(gw, "/profile")
            assert status == 200
            assert pr["coverage"] == {"ratio": None, "window_s": 3600.0}
            assert pr["shapes"] == [] and pr["cold_hits"] == {}
            assert [r["name"] for r in pr["replicas"]] == ["r0", "r1"]
            assert all(r["warmed_shapes"] > 0 for r in pr["replicas"])  # the grid's shapes
            code, out, _ = await warmgw(gw, "profile")
            assert code == 0 and out.startswith("coverage: - (no user request in the last 1 h)")
            assert "no user traffic learned yet" in out

            # the mix, on replicas warmed with the grid alone
            first = mix(rng) * 2
            await send_all(gw.url, first)
            status, pr = await get(gw, "/profile")
            assert status == 200
            check_shape(pr)
            await check_against_metrics(gw, pr)
            before = pr["coverage"]["ratio"]
            assert 0.0 <= before < 1.0  # schemas, tools ...: no warmup had sent them
            features = {s["features"]["text"].split(":")[0] for s in pr["shapes"]}
            assert {"plain", "schema", "tools", "logprobs", "n"} <= features
            assert {s["model"] for s in pr["shapes"]} == {"tiny", "sql-lora"}
            specs = pr["specs"]
            assert specs["kept"] == 3 and specs["bytes"] > 0  # two schemas, one tool list
            assert "content" not in specs
            status, with_specs = await get(gw, "/profile?specs=1")
            content = with_specs["specs"]["content"]
            assert len(content) == 3
            assert {"response_format": SCHEMA_A} in content.values()
            assert {"tools": TOOLS, "tool_choice": "auto"} in content.values()

            # the CLI: coverage first, then the shapes by share, then the replicas
            code, out, _ = await warmgw(gw, "profile", "--top", "0")
            assert code == 0
            lines = out.splitlines()
            assert lines[0].startswith(f"coverage: {before * 100:.1f}% of the last 1 h's")
            head = next(i for i, line in enumerate(lines) if line.startswith("SHARE"))
            rows = [line.split() for line in lines[head + 1:head + 1 + len(pr["shapes"])]]
            assert [float(r[0].rstrip("%")) for r in rows] == [
                float(f"{s['share'] * 100:.1f}") for s in pr["shapes"]]
            assert any(r[1] == "tiny" and r[2] == "chat/json" and r[4].startswith("schema:")
                       for r in rows), out
            warmed = {r["name"]: r["warmed_shapes"] for r in pr["replicas"]}
            table = {line.split()[0]: line.split() for line in lines[head + len(rows):]
                     if line.split() and line.split()[0] in warmed}
            assert {n: int(t[3]) for n, t in table.items()} == warmed
            code, out, _ = await warmgw(gw, "profile", "--json")
            assert code == 0 and json.loads(out)["shapes"] == pr["shapes"]
            code, out, _ = await warmgw(gw, "profile", "--specs")
            assert code == 0
            assert sorted(line.split(":")[0] for line in out.splitlines()
                          if line.startswith("spec ")) == [f"spec {i}" for i in sorted(content)]

            # a third replica: its warmup sends what users sent
            learned = len(pr["shapes"])
            gw.static.add(EndpointSpec("r2", r2.url, "blue"))
            await wait_state(gw, "r2", State.RAMPING, timeout=90)
            _, pr = await get(gw, "/profile")
            row = next(r for r in pr["replicas"] if r["name"] == "r2")
            assert row["warmed_shapes"] >= learned, row
            # only r2 is left to serve: every request now is of a shape its warmup sent
            for name in ("r0", "r1"):
                code, out, _ = await warmgw(gw, "drain", name)
                assert code == 0, out
            served = len(r2.log)
            batch = mix(rng) * 2
            await send_all(gw.url, batch)
            await wait_for(lambda: len(r2.log) >= served + len(batch), 10)
            status, pr = await get(gw, "/profile")
            await check_against_metrics(gw, pr)
            total = len(first)  # user requests so far, each counted once
            assert pr["coverage"]["ratio"] == pytest.approx(
                (before * total + len(batch)) / (total + len(batch)), abs=1e-5)
            assert not any(name == "r2" for name in pr["cold_hits"])
            code, out, _ = await warmgw(gw, "profile")
            assert code == 0 and f"coverage: {pr['coverage']['ratio'] * 100:.1f}%" in out
