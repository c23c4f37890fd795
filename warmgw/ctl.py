"""Operator commands that talk to the admin API: status, profile, cutover, rollback, drain, ...

Exit codes: 0 done; 1 refused by the gateway (409: cold target, conflict); 2 a bad call
(400/404); 3 the admin API could not be reached or refused the token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

DEFAULT_ADMIN = "http://127.0.0.1:8001"


class CtlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    token = args.token or os.environ.get("WARMGW_ADMIN_TOKEN")
    if not token:
        raise CtlError(3, "no admin token: pass --token or set WARMGW_ADMIN_TOKEN")
    url = (args.admin or os.environ.get("WARMGW_ADMIN_URL") or DEFAULT_ADMIN).rstrip("/")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/admin/v1" + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        code = {401: 3, 409: 1}.get(e.code, 2)
        raise CtlError(code, f"{e.code}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        raise CtlError(3, f"cannot reach the admin API at {url}: {e}") from None


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def show_status(st: dict[str, Any], out: TextIO) -> None:
    pol = st["policy"]
    shares = ", ".join(f"{p}={s:g}" for p, s in sorted(pol["shares"].items()))
    out.write(f"active pool: {pol['active']}   shares: {shares}   "
              f"previous: {pol['previous'] or '-'}   strategy: {st['strategy']}\n")
    if pol["cutover_in_progress"]:
        c = pol["cutover_in_progress"]
        out.write(f"cutover in progress: {c['frm']} -> {c['to']}, target share {c['share']:g}\n")
    out.write("\n")
    rows = [["POOL", "SHARE", "REPLICAS", "WARM", "READY", "IN-FLIGHT"]]
    for name, p in st["pools"].items():
        rows.append([name, f"{p['share']:g}", str(p["replicas"]), str(p["warm"]),
                     str(p["ready"]), str(p["inflight"])])
    table(rows, out)
    out.write("\n")
    rows = [["REPLICA", "POOL", "STATE", "WEIGHT", "IN-FLIGHT", "REQUESTS", "ERRORS",
             "LATENCY/FLEET", "FOR", "WHY"]]
    for r in st["replicas"]:
        ratio = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}x"
        rows.append([r["name"], r["pool"], r["state"], f"{r['weight']:.2f}", str(r["inflight"]),
                     str(r["requests"]), str(r["errors"]), ratio, f"{r['since_s']:.0f}s",
                     r["reason"][:60]])
    table(rows, out)
    if st["cutovers"]:
        out.write("\nrecent cutovers:\n")
        rows = [["ID", "FROM", "TO", "MODE", "OUTCOME", "REASON"]]
        for c in st["cutovers"][:5]:
            rows.append([str(c["id"]), c["frm"], c["to"], c["mode"], c["outcome"],
                         c["reason"][:60]])
        table(rows, out)


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _tokens(prompt: dict[str, Any], bucket: list[int]) -> str:
    lo, hi = prompt["lo"], prompt["hi"]
    if lo is None:
        return f"~{bucket[0]}-{bucket[1]}"  # only estimated so far: the bucket's range
    return str(lo) if lo == hi else f"{lo}-{hi}"


def show_profile(pr: dict[str, Any], out: TextIO, top: int) -> None:
    cov = pr["coverage"]
    window = _span(cov["window_s"])
    if cov["ratio"] is None:
        out.write(f"coverage: - (no user request in the last {window})\n")
    else:
        out.write(f"coverage: {cov['ratio'] * 100:.1f}% of the last {window}'s user requests "
                  "were of a shape their replica's warmup had sent\n")
    p, sp, shapes = pr["profile"], pr["specs"], pr["shapes"]
    out.write(f"learned shapes: {p['shapes']} (the top {len(shapes)} cover "
              f"{p['top_share'] * 100:g}% of traffic)   specs kept: {sp['kept']} "
              f"({_size(sp['bytes'])}{', off' if not sp['enabled'] else ''})\n\n")
    if shapes:
        rows = [["SHARE", "MODEL", "KIND", "PROMPT TOKENS", "FEATURES", "PINNED"]]
        shown = shapes if top <= 0 else shapes[:top]
        for s in shown:
            rows.append([f"{s['share'] * 100:.1f}%", s["model"],
                         f"{s['kind']}/{'stream' if s['stream'] else 'json'}",
                         _tokens(s["prompt_tokens"], s["bucket_tokens"]),
                         s["features"]["text"], "pinned" if s["pinned"] else ""])
        table(rows, out)
        if len(shown) < len(shapes):
            out.write(f"... {len(shapes) - len(shown)} more (--top 0 for all)\n")
    else:
        out.write("no user traffic learned yet\n")
    out.write("\n")
    rows = [["REPLICA", "POOL", "STATE", "WARMED SHAPES", "USER-FIRST SHAPES", "COLD HITS"]]
    for r in pr["replicas"]:
        hits = pr["cold_hits"].get(r["name"], {})
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(hits.items()))
        rows.append([r["name"], r["pool"], r["state"], str(r["warmed_shapes"]),
                     str(r["first_seen_from_users"]),
                     f"{r['cold_hits']} ({why})" if why else "0"])
    table(rows, out)
    gone = sorted(set(pr["cold_hits"]) - {r["name"] for r in pr["replicas"]})
    for name in gone:
        hits = pr["cold_hits"][name]
        out.write(f"cold hits on {name} (gone): "
                  + ", ".join(f"{reason} {n}" for reason, n in sorted(hits.items())) + "\n")
    for sid, spec in sp.get("content", {}).items():
        out.write(f"spec {sid}: {json.dumps(spec, sort_keys=True)}\n")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        cmd = args.command
        if cmd == "status":
            st = call(args, "GET", "/status")
            if args.json:
                out.write(json.dumps(st, indent=1) + "\n")
            else:
                show_status(st, out)
            return 0
        if cmd == "profile":
            pr = call(args, "GET", "/profile" + ("?specs=1" if args.specs else ""))
            if args.json:
                out.write(json.dumps(pr, indent=1) + "\n")
            else:
                show_profile(pr, out, args.top)
            return 0
        if cmd == "cutover":
            body: dict[str, Any] = {"to": args.pool, "mode": args.mode, "force": args.force}
            if args.mode == "gradual":
                body.update(duration=args.duration, steps=args.steps)
            if args.expect_from:
                body["from"] = args.expect_from
            res = call(args, "POST", "/cutover", body)
            c = res["cutover"]
            out.write(f"cutover {c['id']}: {c['frm']} -> {c['to']} ({c['mode']}): {c['outcome']}\n")
            return 0
        if cmd == "rollback":
            res = call(args, "POST", "/rollback", {"force": args.force})
            c = res["cutover"]
            out.write(f"rolled back: {c['frm']} -> {c['to']}\n")
            return 0
        if cmd in ("drain", "undrain", "rewarm"):
            res = call(args, "POST", f"/replicas/{args.replica}/{cmd}")
            r = res["replica"]
            out.write(f"replica {r['name']}: {r['state']} ({r['reason']})\n")
            return 0
        if cmd == "add":
            spec = {"name": args.name, "url": args.url, "pool": args.pool}
            if args.model:
                spec["model"] = args.model
            res = call(args, "POST", "/replicas", spec)
            out.write(f"replica {res['replica']['name']} added: {res['replica']['state']}\n")
            return 0
        if cmd == "remove":
            call(args, "DELETE", f"/replicas/{args.replica}")
            out.write(f"replica {args.replica} removed: draining\n")
            return 0
        if cmd == "reload":
            res = call(args, "POST", "/reload")
            out.write(f"reloaded: added {res['added']}, removed {res['removed']}\n")
            return 0
        if cmd == "route":
            if args.to or args.weight:
                weights = dict(_weight(w) for w in args.weight) if args.weight else None
                res = call(args, "POST", "/route", {"to": args.to, "weights": weights})
            else:
                res = call(args, "GET", "/route")
            shown = ", ".join(f"{p}={w}" for p, w in sorted(res["weights"].items()))
            out.write(f"HTTPRoute {res['route']}: {shown}\n")
            if "note" in res:
                out.write(f"({res['note']})\n")
            return 0
        raise CtlError(2, f"unknown command {cmd}")
    except CtlError as e:
        print(f"warmgw {args.command}: {e}", file=sys.stderr)
        return e.code


def _weight(text: str) -> tuple[str, int]:
    pool, _, n = text.partition("=")
    if not pool or not n.isdigit():
        raise CtlError(2, f"--weight: expected POOL=N, got {text!r}")
    return pool, int(n)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", help=f"admin API URL (env WARMGW_ADMIN_URL; {DEFAULT_ADMIN})")
    common.add_argument("--token", help="admin bearer token (env WARMGW_ADMIN_TOKEN)")
    common.add_argument("--timeout", type=float, default=10.0)

    p = sub.add_parser("status", parents=[common], help="pools, replicas, policy, cutovers")
    p.add_argument("--json", action="store_true", help="the raw JSON")
    p = sub.add_parser("profile", parents=[common],
                       help="warmup coverage of user traffic, learned shapes, cold hits")
    p.add_argument("--json", action="store_true", help="the raw JSON")
    p.add_argument("--top", type=int, default=20, help="shapes shown (0: all)")
    p.add_argument("--specs", action="store_true",
                   help="also the kept structured-output specs and tool lists")
    p = sub.add_parser("cutover", parents=[common], help="switch new requests to a pool")
    p.add_argument("pool")
    p.add_argument("--mode", choices=["instant", "gradual"], default="instant")
    p.add_argument("--duration", type=float, default=60.0, help="gradual: seconds")
    p.add_argument("--steps", type=int, default=5, help="gradual: number of share steps")
    p.add_argument("--force", action="store_true", help="even if the target is not warm")
    p.add_argument("--from", dest="expect_from", help="refuse unless this pool is active")
    p = sub.add_parser("route", parents=[common],
                       help="across InferencePools: show or set the HTTPRoute's weights")
    p.add_argument("--to", help="every request to this pool (0 to the route's others)")
    p.add_argument("--weight", action="append", default=[], metavar="POOL=N")
    p = sub.add_parser("rollback", parents=[common], help="back to the previous pool")
    p.add_argument("--force", action="store_true")
    for name, text in (("drain", "no new requests to a replica"),
                       ("undrain", "let a drained replica back (after a probe)"),
                       ("rewarm", "warm a replica again"),
                       ("remove", "drain a replica and forget it")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("replica")
    p = sub.add_parser("add", parents=[common], help="add a replica (static deployments)")
    p.add_argument("name")
    p.add_argument("url")
    p.add_argument("--pool", default="default")
    p.add_argument("--model")
    sub.add_parser("reload", parents=[common], help="re-read the config's replica list")
