"""The printed table (pure: rows in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loadtest import overhead_meta

COLUMNS = (  # name, alignment
    ("mode", "<"), ("c", ">"), ("target", "<"), ("req/s", ">"), ("x direct", ">"),
    ("x gw", ">"), ("p50 ms", ">"), ("p99 ms", ">"), ("+p50 ms", ">"), ("+p99 ms", ">"),
    ("proxy CPU us/req", ">"), ("CPU x gw", ">"), ("replica CPU us/req", ">"),
    ("others cores", ">"), ("errors", ">"),
)
MISSED = 0.01


def _f(x: Any, fmt: str = ".2f", signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float | int):
        return format(x, ("+" if signed else "") + fmt)
    return str(x)


def _missed(row: Mapping[str, Any]) -> bool:
    """The per-thread CPU figures missed over 1 % of the target's CPU (threads exited)."""
    return (row.get("cpu_missed_share") or 0.0) > MISSED


def _cells(row: Mapping[str, Any]) -> list[str]:
    cpu = row.get("cpu_us_per_req", {})
    proxy = row["target"] != "direct"
    return [
        row["mode"],
        str(row["concurrency"]),
        row["target"],
        _f(row["rps"], ".0f"),
        _f(row.get("rps_ratio", 1.0 if not proxy else None)),
        _f(row.get("rps_vs_gateway")),
        _f(row["p50_ms"], ".3f"),
        _f(row["p99_ms"], ".3f"),
        _f(row.get("added_p50_ms"), ".3f", signed=True),
        _f(row.get("added_p99_ms"), ".3f", signed=True),
        _f(cpu.get("target") if proxy else None, ".0f") + ("!" if _missed(row) else ""),
        _f(row.get("cpu_vs_gateway")),
        _f(cpu.get("replica"), ".0f"),
        _f(row.get("others_cores")),
        str(row["errors"]) + ("*" if row.get("truncated") else ""),
    ]


def table(rows: Sequence[Mapping[str, Any]], unavailable: Mapping[str, str]) -> str:
    body = [_cells(row) for row in rows]
    widths = [max([len(name), *(len(cells[i]) for cells in body)])
              for i, (name, _) in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            format(v, f"{spec[0]}{w}") for v, (_, spec), w in zip(cells, COLUMNS, widths,
                                                                   strict=True)
        )

    head = line([name for name, _ in COLUMNS])
    lines = [head, "-" * len(head)]
    previous: tuple[str, int] | None = None
    for row, cells in zip(rows, body, strict=True):
        group = (row["mode"], row["concurrency"])
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        lines.append(line(cells))
    for name, note in unavailable.items():
        lines.append(f"{name}: {note}")
    lines.append(
        "x direct, x gw: req/s over direct's, over the gateway's; CPU x gw: proxy CPU per "
        "request over the gateway's, median of the rounds' ratios"
    )
    lines.append(
        "proxy CPU: the proxy's processes only (schedstat ns, median of the rounds); others "
        "cores: CPU that processes outside the benchmark used meanwhile (noise)"
    )
    if any(_missed(r) for r in rows):
        lines.append(f"! threads that exited took over {MISSED:.0%} of the proxy's CPU "
                     "with them: the figure is low (see cpu_missed in the JSON)")
    if any(r.get("truncated") for r in rows):
        lines.append("* the time limit cut this cell short")
    return "\n".join(lines)


def compare_table(
    rows: Sequence[Mapping[str, Any]], gateway: str, this: str, other: Mapping[str, Any]
) -> str:
    """Cell by cell, the gateway's proxy CPU per request over the compare tree's: the
    median of the rounds' ratios, and each round's."""
    name = str(other["target"])
    by_cell = {(r["mode"], r["concurrency"], r["target"]): r for r in rows}
    head = ["mode", "c", f"{gateway} us/req", f"{name} us/req", "ratio", "rounds"]
    body = []
    for r in rows:
        if r["target"] != gateway:
            continue
        ref = by_cell.get((r["mode"], r["concurrency"], name), {})
        body.append([
            r["mode"], str(r["concurrency"]),
            _f(r["cpu_us_per_req"].get("target"), ".1f"),
            _f(ref.get("cpu_us_per_req", {}).get("target"), ".1f"),
            _f(r.get("cpu_vs_compare"), ".3f"),
            " ".join(f"{x:.3f}" for x in r.get("cpu_vs_compare_rounds", [])),
        ])
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            format(v, ("<" if i in (0, 5) else ">") + str(w))
            for i, (v, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    where = f"{other['path']}" + (f", commit {other['commit']}" if other.get("commit") else "")
    if "compiled" in other:
        where += f", {overhead_meta.build_label(other)}"
    return "\n".join([
        f"proxy CPU per request, this tree ({this}) over the compare tree {name} ({where}):",
        "ratio = median of the rounds' ratios (each round ran both side by side)",
        line(head), "-" * len(line(head)), *(line(b) for b in body),
    ])


def parts_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """For the targets made of several processes (Envoy + its EPP): each one's CPU per
    request, their sum, and how many cores of the first one a core of the last one serves
    (first's CPU per request over last's); "" if there is no such target."""
    head = ["mode", "c", "target", "parts us/req", "sum", "per core of the last"]
    body = []
    for r in rows:
        cpu = r.get("cpu_us_per_req", {})
        parts = [(k.split(":", 1)[1], v) for k, v in cpu.items() if k.startswith("target:")]
        if len(parts) < 2:
            continue
        per = " + ".join(f"{name} {_f(v, '.0f')}" for name, v in parts)
        first, last = parts[0][1], parts[-1][1]
        serves = (f"{first / last:.1f} {parts[0][0]} cores per {parts[-1][0]} core"
                  if first and last else "-")
        body.append([r["mode"], str(r["concurrency"]), r["target"], per,
                     _f(cpu.get("target"), ".0f"), serves])
    if not body:
        return ""
    widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(format(v, ("<" if i in (0, 2, 3, 5) else ">") + str(w))
                         for i, (v, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([
        "CPU per request of each process of a target (schedstat ns, median of the rounds; "
        "the sum is the target's own median, so it need not equal the parts' sum):",
        line(head), "-" * len(line(head)), *(line(b) for b in body),
    ])
