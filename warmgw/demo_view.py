"""What `warmgw demo` prints: the story, one line per lifecycle transition, a fleet table
every few seconds and a summary in words. Formatting only; the demo owns the timeline."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from warmgw.core.lifecycle import ROUTABLE
from warmgw.core.registry import Registry, Transition
from warmgw.sim import SimReplica


@dataclass(frozen=True, slots=True)
class Sample:
    """One user request as the client saw it."""

    end: float
    latency: float  # time to first byte for streams, the whole response otherwise
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Stats:
    requests: int
    errors: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Stats:
        lat = sorted(s.latency for s in samples if s.ok)
        nan = float("nan")
        return cls(
            requests=len(samples),
            errors=sum(not s.ok for s in samples),
            p50=percentile(lat, 0.50) if lat else nan,
            p99=percentile(lat, 0.99) if lat else nan,
            max=lat[-1] if lat else nan,
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f} ms"


_SSL_NOISE = re.compile(r" ssl:\S+ \[[^\]]*\]")  # aiohttp's "ssl:default [Connect call ...]"


def _short(reason: str, limit: int = 80) -> str:
    reason = _SSL_NOISE.sub("", reason)
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


class View:
    """Prints to `out` (stdout by default), flushing every line so pipes see it live."""

    def __init__(self, now: Callable[[], float], out: TextIO | None = None) -> None:
        self.now = now
        self.t0 = now()
        self.out = out or sys.stdout
        self._blank = True  # the last line printed was blank

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)
        self._blank = not text

    def gap(self) -> None:
        """One blank line, unless the last line already was one."""
        if not self._blank:
            self.say()

    def stamp(self, at: float | None = None) -> str:
        return f"{(self.now() if at is None else at) - self.t0:6.1f}s"

    def event(self, *lines: str) -> None:
        """Something the demo does to the fleet, set apart from the transition lines."""
        self.gap()
        self.say(f"{self.stamp()}  >> {lines[0]}")
        for line in lines[1:]:
            self.say(f"{'':7}     {line}")
        self.say()

    def intro(self, blue: Sequence[str], green: Sequence[str], late: str, seconds: float) -> None:
        say = self.say
        say("warmgw demo: the gateway in front of simulated vLLM replicas, all in this process.")
        say()
        say("A fresh vLLM replica answers /health long before it is fast: its first requests")
        say("of each prompt and batch size pay a cold start (here 1.5 s and 0.8 s; ~60 ms warm).")
        say("warmgw warms each new replica itself with synthetic requests; users reach it only")
        say("once its latency has converged, at a weight that grows while it keeps pace.")
        say()
        say(f"  pool blue  (active):  {', '.join(blue)}; {late} joins later")
        say(f"  pool green (standby): {', '.join(green)}: kept warm, no user traffic")
        say(f"  users: client traffic for about {seconds:g} s once the first replicas are warm")
        say()
        say("Below: one line per replica state change, and every 2 s a table of the fleet.")
        say()

    def hint(self, admin_url: str, token: str) -> None:
        self.say(f"{self.stamp()}  gateway up; to look inside while it runs, in another terminal:")
        self.say(f"{'':9}python -m warmgw status --admin {admin_url} --token {token}")
        self.say()

    def transition(self, t: Transition) -> None:
        move = f"{t.frm} -> {t.to}"
        self.say(f"{self.stamp(t.at)}  {t.name:<8} {move:<22} ({_short(t.reason)})")

    def table(
        self,
        registry: Registry,
        replicas: Mapping[str, SimReplica],
        window: Sequence[Sample],
        seconds: float,
    ) -> None:
        s = Stats.of(window)
        self.gap()
        self.say(
            f"{self.stamp()}  users, last {seconds:.1f} s: {s.requests} requests, "
            f"p50 {ms(s.p50)}, p99 {ms(s.p99)}, errors {s.errors}"
        )
        self.say(
            f"{'':9}{'replica':<9}{'pool':<7}{'state':<10}{'weight':>8}{'in-flight':>11}"
            f"{'user reqs':>11}{'warmup reqs':>13}"
        )
        now = registry.clock.now()
        for name, ep in sorted(registry.endpoints.items()):
            if ep.state not in ROUTABLE:
                weight = "-"
            elif registry.policy.share(ep.pool) <= 0.0:
                weight = "standby"
            else:
                weight = f"{ep.weight(now):.2f}"
            st = replicas[name].stats
            self.say(
                f"{'':9}{name:<9}{ep.pool:<7}{ep.state:<10}{weight:>8}{ep.inflight:>11}"
                f"{st.user_requests:>11}{st.warmup_requests:>13}"
            )
        self.say()

    def summary(
        self, samples: Sequence[Sample], replicas: Mapping[str, SimReplica], seconds: float
    ) -> bool:
        """Print the outcome in words; True when no user request hit a cold replica or
        failed."""
        s = Stats.of(samples)
        user_cold = sum(r.stats.user_cold_hits for r in replicas.values())
        warm_cold = sum(r.stats.warmup_cold_hits for r in replicas.values())
        warmups = sum(r.stats.warmup_requests for r in replicas.values())
        say = self.say
        self.gap()
        say(f"Summary after {seconds:.0f} s of user traffic:")
        say(f"  requests served: {s.requests - s.errors} of {s.requests}, errors: {s.errors}")
        say(f"  latency seen by users: p50 {ms(s.p50)}, p99 {ms(s.p99)}, max {ms(s.max)}")
        say(f"  user requests that reached a cold replica: {user_cold}")
        say(f"  synthetic warmup requests that paid the cold start instead: {warm_cold}")
        say(f"  (the gateway sent {warmups} warmup requests in all; a cold request costs")
        say("   up to 1.5 s + 0.8 s here, on top of its normal latency)")
        say()
        errors = [x.error for x in samples if not x.ok]
        ok = user_cold == 0 and not errors
        if ok:
            say("OK: every user request was served warm, and none failed.")
        if user_cold:
            say(f"FAILED: {user_cold} user request(s) reached a replica that was still cold.")
        if errors:
            kinds = sorted(set(errors))
            say(f"FAILED: {len(errors)} user request(s) failed, e.g.: {'; '.join(kinds[:3])}")
        return ok
