"""A scenario run's files: result.json (every sample, every event, the simulator's
counters, the per-strategy summaries) and report.md (Markdown tables)."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest import prefix_report
from loadtest.runner import StrategyRun
from loadtest.spec import Scenario
from loadtest.summary import CLAIM_RATIO, PHASES, claim, summarise
from warmgw.sim import SimConfig

NOISY = 0.3  # cores busy outside the benchmark above which the report warns


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def run_record(run: StrategyRun) -> dict[str, Any]:
    rec = asdict(run)
    rec["samples"] = [
        {"t": round(s.t, 6), "lat": _num(s.lat), "ttfb": _num(s.ttfb), "ok": s.ok,
         "replica": s.replica, "stream": s.stream, "words": s.words, "status": s.status,
         "error": s.error, **({"mix": s.mix} if s.mix else {})}
        for s in run.samples
    ]
    return rec


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def add_summaries(data: dict[str, Any], s: Scenario) -> None:
    """(Re)compute every strategy's summary and the claim from the recorded samples."""
    newcomers = [r.name for r in s.fleet.replicas if not r.initial]
    for rec in data["strategies"].values():
        # the plain data of result.json (None where a time is missing) -> nan
        plain = {**rec, "samples": [
            {**x, "ttfb": math.nan if x["ttfb"] is None else x["ttfb"],
             "lat": math.nan if x["lat"] is None else x["lat"]} for x in rec["samples"]]}
        rec["summary"] = summarise(plain, newcomers)
    data["claim"] = claim({k: v["summary"] for k, v in data["strategies"].items()})
    if s.workload.prefix is not None:
        prefix_report.add_prefix_summaries(data, [r.name for r in s.fleet.initial], newcomers,
                                           s.fleet.sim.prefix_block_tokens)


def result(s: Scenario, runs: Sequence[StrategyRun], meta: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scenario": s.name,
        "description": s.description,
        "quick": s.quick,
        **meta,
        "machine": machine(),
        "spec": s.raw,
        "claim": None,
        "strategies": {run.strategy: run_record(run) for run in runs},
    }
    add_summaries(data, s)
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n")


# -- report.md ----------------------------------------------------------------------------


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def _r(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def _first(first: Mapping[str, float | None] | None) -> str:
    """The earliest first user request on a new replica, as T0+s (or "-")."""
    if not first:
        return "-"
    seen = [v for v in first.values() if v is not None]
    return f"T0{min(seen):+.1f} s" if seen else "never"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---" if i == 0 else "--:" for i in range(len(head))]
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _workload_line(s: Scenario) -> str:
    w = s.workload
    a = w.arrivals
    arr = (f"closed loop, {a.concurrency} clients" if a.kind == "closed"
           else f"open loop, Poisson at {a.rate:g} req/s (max {a.max_inflight} in flight)")
    words = ", ".join(f"{k}" for k, _ in w.prompt_words)
    toks = ", ".join(f"{k}" for k, _ in w.max_tokens)
    line = (f"{arr}; prompts of {words} words" + (" (mixed text)" if w.text == "mixed" else "")
            + f"; max_tokens {toks}; {w.stream_fraction:.0%} streamed, "
            f"{w.chat_fraction:.0%} chat; seed {w.seed}")
    if w.stream_usage:
        line += f"; {w.stream_usage:.0%} of streams ask for usage"
    if w.prefix is not None:
        p = w.prefix
        return (f"{arr}; multi-turn chat sessions on {p.system_prompts} shared system prompts "
                f"of {p.system_tokens[0]}-{p.system_tokens[1]} tokens (Zipf {p.zipf:g}), "
                f"{p.turns[0]}-{p.turns[1]} turns of {p.turn_tokens[0]}-{p.turn_tokens[1]} "
                f"tokens (+{p.answer_tokens} for each answer kept), session header "
                f"{p.session_header or 'none'}; every request streamed with usage; max_tokens "
                f"{toks}; seed {w.seed}")
    if w.mixes:
        total = sum(m.weight for m in w.mixes)
        line += "; feature mixes: " + ", ".join(
            f"{m.name} {m.weight / total:.0%}" + (f" ({m.kind})" if m.kind else "")
            for m in w.mixes)
    return line


def _fleet_line(s: Scenario) -> str:
    c = s.fleet.sim
    init = ", ".join(r.name for r in s.fleet.initial)
    later = ", ".join(f"{r.name} ({r.pool})" for r in s.fleet.replicas if not r.initial)
    cache = (f"; prefix cache {c.prefix_cache_blocks} blocks of {c.prefix_block_tokens} "
             "tokens per replica (LRU)" if c.prefix_cache_blocks else "")
    return (f"initial {init} (pool {s.fleet.active_pool})" + (f"; later {later}" if later else "")
            + f". Simulated replica: TTFT {c.ttft_base * 1000:g} ms + "
            f"{c.ttft_per_prompt_token * 1e6:g} us/prompt token, {c.itl * 1000:g} ms/token, "
            f"max_running {c.max_running}, jitter {c.jitter:g}; cold start "
            f"{c.cold_shape_penalty:g} s per new prompt bucket + {c.cold_batch_penalty:g} s "
            f"per new batch size" + _buckets(c) + _features(c)
            + (f"; restart loads for {c.load_time:g} s refusing connections"
               if c.refuse_while_loading else "") + cache)


def _buckets(c: SimConfig) -> str:
    if c.prompt_bucket_factor:
        return (f" (prompt buckets x{c.prompt_bucket_factor:g} from {c.prompt_bucket_min} "
                f"tokens: {len(c.prompt_grid)} up to {c.max_model_len})")
    return " (prompt buckets " + ", ".join(str(b) for b in c.prompt_grid) + " tokens)"


def _features(c: SimConfig) -> str:
    costs = [(c.cold_adapter_penalty, "per LoRA adapter loaded"),
             (c.cold_grammar_penalty, "per new grammar"), (c.cold_tools_penalty,
                                                           "per new tools list"),
             (c.cold_logprobs_penalty, "for the first logprobs"),
             (c.cold_n_penalty, "for the first n > 1")]
    out = ", ".join(f"{p:g} s {what}" for p, what in costs if p)
    if c.lora_adapters:
        out += (", " if out else "") + (f"adapters {', '.join(c.adapters)} "
                                        f"({c.max_loras} slot(s))")
    if c.chars_per_token:
        out += (", " if out else "") + f"tokenizer {c.chars_per_token} characters a token"
    return "; " + out if out else ""


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:g}"


def _paid(sm: Mapping[str, Any]) -> str:
    """User requests on new replicas that paid a first-use cost, by reason."""
    nc = sm.get("newcomer_cold")
    if nc is None:
        return "-"
    reasons = ", ".join(f"{k} {v}" for k, v in nc["by_reason"].items())
    return f"{nc['requests']}" + (f" ({reasons})" if reasons else "")


def markdown(data: Mapping[str, Any], s: Scenario) -> str:
    strategies: Mapping[str, Any] = data["strategies"]
    out = [f"# Scenario `{s.name}`" + (" (--quick)" if s.quick else ""), ""]
    if s.description:
        out += [s.description, ""]
    m = data["machine"]
    out += [
        f"- run: {data.get('started', '')}, `{data.get('command', '')}`",
        f"- machine: {m['cores']} cores, Python {m['python']}, {m['platform']}",
        f"- fleet: {_fleet_line(s)}",
        f"- workload: {_workload_line(s)}",
        f"- phases (s): warm-up {s.phases.warmup:g} (not counted), steady {s.phases.steady:g}+"
        f", during {s.phases.during:g}+ from the event, after {s.phases.after:g}",
        "- events: " + ("; ".join(f"T0+{e.at:g} s {e.label()}" for e in s.events) or "none"),
        f"- time-based slow start (slow_start, envoy, haproxy): window "
        f"{s.slow_start.window:g} s, aggression {s.slow_start.aggression:g}, "
        f"min weight {s.slow_start.min_weight_percent:g} % (HAProxy: window only)",
        f"- health checks on /health every {s.health.interval:g} s, timeout "
        f"{s.health.timeout:g} s; peers: down after {s.health.fall} failures, up after "
        f"{s.health.rise} passes (warmgw: out after 3 failures in a row, its "
        "health.failures; at once on a refused connection)",
        "",
        "TTFT: time to the first body byte of streamed requests (the first SSE event). "
        "Latency: whole request, every request. Percentiles in ms, of successful requests "
        "by start time. Cold hits: user requests that paid a cold-start penalty on a "
        "replica (the simulator's user_cold_hits, summed over replicas); on new replicas: "
        "those of them on the replicas that joined during the run, from those replicas' own "
        "request logs, with what they were the first to use (a request that paid for two "
        "first uses counts under both). Other load: "
        "cores that processes outside this benchmark kept busy meanwhile (noise; the "
        "machine has " + str(m["cores"]) + ").",
        "",
        "## Summary",
        "",
        *prefix_report.markdown(data, [r.name for r in s.fleet.initial]),
    ]
    rows = []
    for name, rec in strategies.items():
        sm = rec["summary"]
        if sm["status"] != "ok":
            note = " ".join(sm.get("note", "").split())
            rows.append([name, sm["status"], *["-"] * 12, note[:160]])
            continue
        st, du = sm["phases"].get("steady", {}), sm["phases"].get("during", {})
        ratios = sm.get("ratios", {})
        rows.append([
            name, str(sm["cold_hits"]), _paid(sm),
            f'{_ms(st.get("latency", {}).get("p99"))} / {_ms(du.get("latency", {}).get("p99"))}',
            _ms(st.get("latency", {}).get("p999")), _ms(du.get("latency", {}).get("p999")),
            _r(ratios.get("latency_p999")), _ms(du.get("latency", {}).get("max")),
            _ms(st.get("ttft", {}).get("p999")), _ms(du.get("ttft", {}).get("p999")),
            str(sm["errors"]), str(sm["warmup_cold_hits"]),
            _first(sm.get("first_user_request")),
            _r(sm.get("cpu", {}).get("others_cores")),
            (sm.get("note") or "") + (" (cut short by the limit)" if sm["truncated"] else ""),
        ])
    out += _table(["strategy", "cold hits", "on new replicas (by first use paid)",
                   "p99 steady / during", "steady p99.9", "during p99.9", "during/steady",
                   "during max", "TTFT steady p99.9", "TTFT during p99.9", "errors",
                   "cold starts paid by warmup", "1st user request on a new replica",
                   "other load (cores)", "note"], rows)
    noisy = {n: r["summary"].get("cpu", {}).get("others_cores") for n, r in strategies.items()}
    noisy = {n: x for n, x in noisy.items() if x is not None and x > NOISY}
    if noisy:
        out += ["", f"**Warning:** other processes kept {max(noisy.values()):.1f} of the "
                f"machine's {m['cores']} cores busy during the run ({', '.join(noisy)}): "
                "the latencies above include that contention; measure again on a quiet "
                "machine before reading much into the tails."]
    restarts = {n: r["summary"]["restart_failures"] for n, r in strategies.items()
                if r["summary"].get("restart_failures")}
    if restarts:
        hows = list(dict.fromkeys(h for r in restarts.values() for h in r))
        rows = [[n, *(f"{r[h]['requests']} / {r[h]['plain']} / {r[h]['cut']} / "
                      f"{r[h]['streams']}" if h in r else "-" for h in hows)]
                for n, r in restarts.items()]
        out += ["", "Requests that ended while replicas were restarted by a signal (from "
                "the first kill, or term, on): requests / failed non-streamed / streams cut "
                "after they began (a 200 that ended early or with an SSE error event) / "
                "other failed streams.", ""]
        out += _table(["strategy", *(f"after SIG{h.upper()}" for h in hows)], rows)
    c = data.get("claim")
    if c is not None:
        verdict = "holds" if c["holds"] else "does NOT hold"
        out += ["", f"**Claim ({verdict}):** warmgw sent {c['cold_hits']} user request(s) "
                f"to a cold replica; its p99.9 latency during the event was "
                f"{_r(c['latency_p999_ratio'])}x steady state (limit {CLAIM_RATIO}x; TTFT "
                f"p99.9: {_r(c['ttft_p999_ratio'])}x)."]
    for name, rec in strategies.items():
        out += ["", f"## {name}", ""]
        sm = rec["summary"]
        if sm["status"] != "ok":
            out.append(f"{sm['status']}: {sm.get('note', '')}")
            continue
        rows = []
        for ph in PHASES:
            p = sm["phases"].get(ph)
            if p is None:
                continue
            t, lat = p["ttft"], p["latency"]
            rows.append([
                ph, f"{p['window'][0]:.1f}-{p['window'][1]:.1f}", str(p["requests"]),
                str(p["errors"]), _ms(t["p50"]), _ms(t["p99"]), _ms(t["p999"]), _ms(t["max"]),
                _ms(lat["p50"]), _ms(lat["p99"]), _ms(lat["p999"]), _ms(lat["max"]),
                "-" if p["cold_hits"] is None else str(p["cold_hits"]),
            ])
        out += _table(["phase", "window s", "requests", "errors", "TTFT p50", "p99", "p99.9",
                       "max", "latency p50", "p99", "p99.9", "max", "cold hits"], rows)
        nc = sm.get("newcomer_cold")
        if nc is not None:
            out += ["", f"User requests on new replicas that paid a first-use cost (their "
                    f"own logs): {_paid(sm)}; by replica: " + (", ".join(
                        f"{k} {v}" for k, v in nc["by_replica"].items()) or "-")]
        gw = sm.get("balancer")
        if gw:
            hits = ", ".join(f"{k} {v}" for k, v in gw.get("cold_hits", {}).items()) or "none"
            out += ["", f"The gateway's own count: cold hits {hits}; learned profile "
                    f"{_g(gw.get('profile_shapes'))} shapes; warmup coverage (share of user "
                    f"requests whose shape their replica's warmup had sent) "
                    f"{_g(gw.get('coverage'))}; warmup requests refused "
                    f"{_g(gw.get('warmup_refused'))}"]
        if sm["cold_hits_by_replica"]:
            out += ["", "Cold hits by replica: " + ", ".join(
                f"{k} {v}" for k, v in sm["cold_hits_by_replica"].items())]
        first = sm.get("first_user_request") or {}
        if first:
            out += ["", "First user request on a new replica (s after T0): " + ", ".join(
                f"{k} {'never' if v is None else f'{v:+.1f}'}" for k, v in first.items())]
        share = sm["phases"].get("during", {}).get("by_replica", {})
        if share:
            out += ["", "Requests per replica during the event: " + ", ".join(
                f"{k} {v}" for k, v in share.items())]
        if rec["events"]:
            out += ["", "Events (s since the load started):", ""]
            out += [f"- {e['t']:.1f}: {e['what']}" + (f" - {e['note']}" if e["note"] else "")
                    for e in rec["events"]]
        if sm["error_samples"]:
            out += ["", "Errors, e.g.: " + "; ".join(f"`{x}`" for x in sm["error_samples"])]
    out += ["", "Files: result.json (every sample), plot.png, logs/ (each process's log "
            "and config).", ""]
    return "\n".join(out)
