"""Scenario files (loadtest/scenarios/NAME.yaml), read and checked into frozen dataclasses.

A scenario names a simulated fleet, a workload, phase lengths and the events of the run:

    name: scale_up
    limit: 90                  # s: hard bound on one strategy's load, events included
    fleet:
      sim: {ttft_base: 0.03, cold_shape_penalty: 1.5, cold_batch_penalty: 0.8, ...}
                               # or cold_rules: features (warmgw.sim.cold), cold_scale: 0.5,
                               # explicit penalties overriding the preset's
      replicas:                # all started at the outset; initial ones are in the balancer
        - {name: r0}           #   pool defaults to blue, initial to true
        - {name: r2, initial: false}
    workload:
      seed: 7
      prompt_words: {8: 1, 100: 1, 600: 1}      # words -> weight
      max_tokens: {8: 1}
      stream_fraction: 0.5
      chat_fraction: 0.5
      arrivals: {kind: closed, concurrency: 8}  # or {kind: poisson, rate: 80, max_inflight: 64}
      text: repeat             # or mixed; see loadtest.mixes, also for:
      mixes: {plain: {weight: 9}, tools: {weight: 1, kind: chat, body: {tools: [...]}}}
      stream_usage: 0.5        # share of streams asking for stream_options.include_usage
    phases: {warmup: 3, steady: 10, during: 20, after: 6, settle: 2}
    events:                    # `at`: seconds after the event time (the end of steady)
      - {at: 0, action: add, replicas: [r2]}
    slow_start: {window: 30, aggression: 1.0, min_weight_percent: 10}  # time-based peers
    health: {interval: 1, timeout: 2, fall: 3, rise: 2}  # every balancer's health checks
    gateway: {warmup: {...}, ramp: {...}}      # warmgw config sections, as in gateway.yaml
    quick: {phases: {...}, ...}                # merged over the file by --quick

The prefix scenario adds (loadtest.prefix_spec): `workload.prefix` (multi-turn sessions on
shared system prompts, sent by loadtest.sessions instead of the request mix above),
`strategies` (the scenario's default run order) and `variants` (warmgw under another name,
with its own config merged over `gateway`).

Actions: add (replicas), remove (replicas), restart (replicas: a simulated process
restart; with `signal: kill` or `signal: term` and `fleet.processes: each`, a real
SIGKILL or SIGTERM to the replica's own process, started again on its port, one replica
at a time, each routable again before the next), cutover (from, to: pools; warmgw's
admin API, or membership for peers), rolling
(pairs [old, new]: add new, wait until the balancer routes to it, hold, remove old).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.mixes import TEXTS, Mix, parse_mixes
from loadtest.prefix_spec import (
    PrefixSpecError,
    PrefixWorkload,
    Variant,
    parse_prefix,
    parse_strategies,
    parse_variants,
)
from warmgw.sim import SimConfig
from warmgw.sim.cold import COLD_RULES, cold_rules

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ACTIONS = ("add", "remove", "restart", "cutover", "rolling")
# SimConfig fields that `python -m warmgw.sim` takes as options
SIM_KEYS = {
    "model", "max_model_len", "load_time", "refuse_while_loading", "cold_shape_penalty",
    "cold_batch_penalty", "ttft_base", "ttft_per_prompt_token", "itl", "max_running",
    "default_max_tokens", "jitter", "seed", "chars_per_token", "prompt_buckets",
    "prompt_bucket_factor", "prompt_bucket_min", "batch_sizes", "lora_adapters", "max_loras",
    "cold_adapter_penalty", "cold_grammar_penalty", "cold_tools_penalty",
    "cold_logprobs_penalty", "cold_n_penalty", "prefix_block_tokens", "prefix_cache_blocks",
}
SIM_TUPLES = {"prompt_buckets", "batch_sizes", "lora_adapters"}


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class Arrivals:
    kind: str = "closed"  # closed | poisson
    concurrency: int = 8  # closed: clients, each sends its next request when one ends
    rate: float = 0.0  # poisson: requests per second
    max_inflight: int = 256  # poisson: arrivals beyond this are shed (counted as errors)


@dataclass(frozen=True)
class Workload:
    seed: int = 0
    prompt_words: tuple[tuple[int, float], ...] = ((8, 1.0), (100, 1.0), (600, 1.0))
    max_tokens: tuple[tuple[int, float], ...] = ((8, 1.0),)
    stream_fraction: float = 0.5
    chat_fraction: float = 0.5
    arrivals: Arrivals = field(default_factory=Arrivals)
    request_timeout: float = 60.0
    mixes: tuple[Mix, ...] = ()  # feature mixes (loadtest.mixes); (): every request plain
    text: str = "repeat"  # prompt text: repeat | mixed
    stream_usage: float = 0.0  # share of streams that ask for usage in the last event
    prefix: PrefixWorkload | None = None  # multi-turn sessions (loadtest.sessions) instead


@dataclass(frozen=True)
class ReplicaDef:
    name: str
    pool: str = "blue"
    initial: bool = True


@dataclass(frozen=True)
class Fleet:
    replicas: tuple[ReplicaDef, ...]
    sim: SimConfig
    processes: str = "one"  # one: every replica in one simulator process; each: one apiece

    def get(self, name: str) -> ReplicaDef:
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def initial(self) -> list[ReplicaDef]:
        return [r for r in self.replicas if r.initial]

    @property
    def active_pool(self) -> str:
        return self.initial[0].pool


@dataclass(frozen=True)
class Phases:
    warmup: float = 3.0  # load runs, not measured
    steady: float = 10.0  # the baseline
    during: float = 20.0  # from the event time on (longer if the events take longer)
    after: float = 6.0
    settle: float = 2.0  # after the last event action ends, before "after" may begin


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    replicas: tuple[str, ...] = ()
    frm: str = ""
    to: str = ""
    pairs: tuple[tuple[str, str], ...] = ()
    hold: float = 1.0
    timeout: float = 60.0
    signal: str = ""  # restart: "" (POST /sim/restart), kill (SIGKILL) or term (SIGTERM)

    def label(self) -> str:
        if self.action == "cutover":
            return f"cutover {self.frm}->{self.to}"
        if self.action == "rolling":
            return "rolling " + ", ".join(f"{a}->{b}" for a, b in self.pairs)
        if self.signal:
            return f"{self.signal} {','.join(self.replicas)}"
        return f"{self.action} {','.join(self.replicas)}"


@dataclass(frozen=True)
class SlowStart:
    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 10.0


@dataclass(frozen=True)
class Health:
    interval: float = 1.0  # warmgw's defaults
    timeout: float = 2.0
    fall: int = 3  # peers only (HAProxy's defaults): failed checks before a replica is down
    rise: int = 2  # ... and passed checks before it is up again; warmgw has no such knob


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fleet: Fleet
    workload: Workload
    phases: Phases
    events: tuple[Event, ...]
    slow_start: SlowStart
    health: Health
    gateway: Mapping[str, Any]
    limit: float
    quick: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict)
    strategies: tuple[str, ...] = ()  # the default run order (): the runner's
    variants: tuple[Variant, ...] = ()  # named warmgw configurations (loadtest.prefix_spec)

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


# -- reading ----------------------------------------------------------------------------


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; lists and scalars in `over` replace."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load(name_or_path: str, quick: bool = False) -> Scenario:
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIOS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError(f"no scenario {name_or_path!r} (known: {', '.join(available())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return parse(data, quick, default_name=path.stem)


def _map(data: Any, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {data!r}")
    return data


def _num(data: Mapping[str, Any], key: str, default: float, where: str,
         positive: bool = False) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (positive and v <= 0):
        want = "a number > 0" if positive else "a number >= 0"
        raise SpecError(f"{where}.{key}: expected {want}, got {v!r}")
    return float(v)


def _int(data: Mapping[str, Any], key: str, default: int, where: str) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{where}.{key}: expected a whole number >= 1, got {v!r}")
    return v


def _only(data: Mapping[str, Any], known: set[str], where: str) -> None:
    for k in data:
        if k not in known:
            raise SpecError(f"{where}.{k}: unknown key (known: {', '.join(sorted(known))})")


def _weights(raw: Any, where: str) -> tuple[tuple[int, float], ...]:
    if isinstance(raw, list):
        raw = dict.fromkeys(raw, 1.0)
    m = _map(raw, where)
    out: list[tuple[int, float]] = []
    for key, w in m.items():
        # a key as JSON keeps it (result.json): "8"
        k: Any = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SpecError(f"{where}: keys must be whole numbers >= 1, got {k!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or w <= 0:
            raise SpecError(f"{where}.{k}: weight must be > 0, got {w!r}")
        out.append((k, float(w)))
    if not out:
        raise SpecError(f"{where}: expected at least one entry")
    return tuple(out)


def _fraction(data: Mapping[str, Any], key: str, default: float, where: str) -> float:
    v = _num(data, key, default, where)
    if v > 1:
        raise SpecError(f"{where}.{key}: expected a fraction in [0, 1], got {v!r}")
    return v


def _workload(raw: Any) -> Workload:
    w = _map(raw, "workload")
    _only(w, {"seed", "prompt_words", "max_tokens", "stream_fraction", "chat_fraction",
              "arrivals", "request_timeout", "mixes", "text", "stream_usage", "prefix"},
          "workload")
    a = _map(w.get("arrivals"), "workload.arrivals")
    _only(a, {"kind", "concurrency", "rate", "max_inflight"}, "workload.arrivals")
    kind = a.get("kind", "closed")
    if kind not in ("closed", "poisson"):
        raise SpecError(f"workload.arrivals.kind: expected closed or poisson, got {kind!r}")
    arrivals = Arrivals(
        kind=kind,
        concurrency=_int(a, "concurrency", 8, "workload.arrivals"),
        rate=_num(a, "rate", 0.0, "workload.arrivals", positive=kind == "poisson"),
        max_inflight=_int(a, "max_inflight", 256, "workload.arrivals"),
    )
    seed = w.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"workload.seed: expected a whole number, got {seed!r}")
    if "prefix" in w and kind != "closed":
        raise SpecError("workload.prefix: sessions need arrivals.kind: closed (a client runs "
                        "its sessions one turn after the other)")
    d = Workload()
    text = w.get("text", d.text)
    if text not in TEXTS:
        raise SpecError(f"workload.text: expected {' or '.join(TEXTS)}, got {text!r}")
    try:
        mixes = parse_mixes(w.get("mixes"), _weights)
        prefix = parse_prefix(w.get("prefix"))
    except ValueError as e:
        raise SpecError(str(e)) from None
    return Workload(
        seed=seed,
        prompt_words=_weights(w.get("prompt_words", dict(d.prompt_words)),
                              "workload.prompt_words"),
        max_tokens=_weights(w.get("max_tokens", dict(d.max_tokens)), "workload.max_tokens"),
        stream_fraction=_fraction(w, "stream_fraction", d.stream_fraction, "workload"),
        chat_fraction=_fraction(w, "chat_fraction", d.chat_fraction, "workload"),
        arrivals=arrivals,
        request_timeout=_num(w, "request_timeout", d.request_timeout, "workload", True),
        mixes=mixes, text=text,
        stream_usage=_fraction(w, "stream_usage", d.stream_usage, "workload"),
        prefix=prefix,
    )


def _fleet(raw: Any) -> Fleet:
    f = _map(raw, "fleet")
    _only(f, {"sim", "replicas", "processes"}, "fleet")
    processes = f.get("processes", "one")
    if processes not in ("one", "each"):
        raise SpecError(f"fleet.processes: expected one or each, got {processes!r}")
    sim = dict(_map(f.get("sim"), "fleet.sim"))
    _only(sim, SIM_KEYS | {"cold_rules", "cold_scale"}, "fleet.sim")
    preset, scale = sim.pop("cold_rules", None), sim.pop("cold_scale", None)
    if scale is not None and preset is None:
        raise SpecError("fleet.sim.cold_scale: scales the penalties of cold_rules, which "
                        "is not set")
    try:
        rules = cold_rules(preset, 1.0 if scale is None else scale) if preset else {}
    except (TypeError, ValueError) as e:
        raise SpecError(f"fleet.sim.cold_rules: {e} (known: {', '.join(COLD_RULES)})") from None
    for k in SIM_TUPLES & set(sim):
        if isinstance(sim[k], list):
            sim[k] = tuple(sim[k])
    try:
        config = SimConfig(**(rules | sim))
    except (TypeError, ValueError) as e:
        raise SpecError(f"fleet.sim: {e}") from None
    reps = f.get("replicas")
    if not isinstance(reps, list) or not reps:
        raise SpecError(f"fleet.replicas: expected a non-empty list, got {reps!r}")
    out: list[ReplicaDef] = []
    for i, r in enumerate(reps):
        at = f"fleet.replicas[{i}]"
        if isinstance(r, str):
            r = {"name": r}
        r = _map(r, at)
        _only(r, {"name", "pool", "initial"}, at)
        name, pool, initial = r.get("name"), r.get("pool", "blue"), r.get("initial", True)
        if not isinstance(name, str) or not name or name in {x.name for x in out}:
            raise SpecError(f"{at}.name: expected a new non-empty name, got {name!r}")
        if not isinstance(pool, str) or not pool:
            raise SpecError(f"{at}.pool: expected a pool name, got {pool!r}")
        if not isinstance(initial, bool):
            raise SpecError(f"{at}.initial: expected true or false, got {initial!r}")
        out.append(ReplicaDef(name, pool, initial))
    initial_pools = {r.pool for r in out if r.initial}
    if len(initial_pools) != 1:
        raise SpecError(f"fleet.replicas: the initial replicas must share one pool, got "
                        f"{sorted(initial_pools) or 'none'}")
    return Fleet(tuple(out), config, processes)


def _event(raw: Any, i: int, fleet: Fleet) -> Event:
    at_ = f"events[{i}]"
    e = _map(raw, at_)
    _only(e, {"at", "action", "replicas", "from", "to", "pairs", "hold", "timeout", "signal"},
          at_)
    action = e.get("action")
    if action not in ACTIONS:
        raise SpecError(f"{at_}.action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    names = {r.name for r in fleet.replicas}
    reps = tuple(e.get("replicas", ()))
    pairs_raw = e.get("pairs", ())
    if not isinstance(pairs_raw, list | tuple) or any(
        not isinstance(p, list | tuple) or len(p) != 2 for p in pairs_raw
    ):
        raise SpecError(f"{at_}.pairs: expected a list of [old, new], got {pairs_raw!r}")
    pairs = tuple((str(a), str(b)) for a, b in pairs_raw)
    for n in [*reps, *(x for p in pairs for x in p)]:
        if n not in names:
            raise SpecError(f"{at_}: no replica named {n!r} in fleet.replicas")
    pools = {r.pool for r in fleet.replicas}
    frm, to = str(e.get("from", "")), str(e.get("to", ""))
    if action == "cutover" and (frm not in pools or to not in pools or frm == to):
        raise SpecError(f"{at_}: cutover needs from and to naming two pools of the fleet "
                        f"({sorted(pools)}), got {frm!r} -> {to!r}")
    if action in ("add", "remove", "restart") and not reps:
        raise SpecError(f"{at_}.replicas: {action} needs at least one replica")
    sig = str(e.get("signal", ""))
    if sig not in ("", "kill", "term") or (sig and action != "restart"):
        raise SpecError(f"{at_}.signal: kill or term, for a restart only, got {sig!r}")
    if sig and fleet.processes != "each":
        raise SpecError(f"{at_}.signal: needs fleet.processes: each (a process per replica)")
    if action == "rolling" and not pairs:
        raise SpecError(f"{at_}.pairs: rolling needs at least one [old, new] pair")
    return Event(
        at=_num(e, "at", 0.0, at_), action=action, replicas=reps, frm=frm, to=to, pairs=pairs,
        hold=_num(e, "hold", 1.0, at_), timeout=_num(e, "timeout", 60.0, at_, positive=True),
        signal=sig,
    )


def parse(data: Any, quick: bool = False, default_name: str = "scenario") -> Scenario:
    data = _map(data, "scenario")
    _only(data, {"name", "description", "fleet", "workload", "phases", "events", "slow_start",
                 "health", "gateway", "limit", "quick", "strategies", "variants"}, "scenario")
    if quick:
        data = merge(data, _map(data.get("quick"), "quick"))
    fleet = _fleet(data.get("fleet"))
    ph = _map(data.get("phases"), "phases")
    _only(ph, {"warmup", "steady", "during", "after", "settle"}, "phases")
    d = Phases()
    phases = Phases(
        warmup=_num(ph, "warmup", d.warmup, "phases"),
        steady=_num(ph, "steady", d.steady, "phases", True),
        during=_num(ph, "during", d.during, "phases"),
        after=_num(ph, "after", d.after, "phases"),
        settle=_num(ph, "settle", d.settle, "phases"),
    )
    raw_events = data.get("events") or []
    if not isinstance(raw_events, list):
        raise SpecError(f"events: expected a list, got {raw_events!r}")
    events = tuple(_event(e, i, fleet) for i, e in enumerate(raw_events))
    ss = _map(data.get("slow_start"), "slow_start")
    _only(ss, {"window", "aggression", "min_weight_percent"}, "slow_start")
    slow = SlowStart(
        window=_num(ss, "window", 30.0, "slow_start", True),
        aggression=_num(ss, "aggression", 1.0, "slow_start", True),
        min_weight_percent=_num(ss, "min_weight_percent", 10.0, "slow_start"),
    )
    h = _map(data.get("health"), "health")
    _only(h, {"interval", "timeout", "fall", "rise"}, "health")
    dh = Health()
    health = Health(_num(h, "interval", dh.interval, "health", True),
                    _num(h, "timeout", dh.timeout, "health", True),
                    _int(h, "fall", dh.fall, "health"), _int(h, "rise", dh.rise, "health"))
    gateway = _map(data.get("gateway"), "gateway")
    for key in ("listen", "admin", "replicas", "strategy", "policy", "state_file"):
        if key in gateway:
            raise SpecError(f"gateway.{key}: set by the runner, not by the scenario")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"name: expected a non-empty string, got {name!r}")
    limit = _num(data, "limit", 120.0, "scenario", True)
    need = phases.warmup + phases.steady + phases.during + phases.after
    if limit < need:
        raise SpecError(f"limit: {limit:g} s is shorter than the phases ({need:g} s)")
    try:
        strategies, variants = parse_strategies(data.get("strategies")), parse_variants(
            data.get("variants"))
    except PrefixSpecError as e:
        raise SpecError(str(e)) from None
    return Scenario(
        strategies=strategies, variants=variants,
        name=name, description=str(data.get("description", "")).strip(), fleet=fleet,
        workload=_workload(data.get("workload")), phases=phases, events=events,
        slow_start=slow, health=health, gateway=dict(gateway), limit=limit, quick=quick,
        raw=dict(data),
    )
