"""The printed table (pure: rows in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = (  # name, alignment
    ("mode", "<"), ("c", ">"), ("target", "<"), ("req/s", ">"), ("x direct", ">"),
    ("x gw", ">"), ("p50 ms", ">"), ("p99 ms", ">"), ("+p50 ms", ">"), ("+p99 ms", ">"),
    ("proxy CPU us/req", ">"), ("CPU x gw", ">"), ("replica CPU us/req", ">"),
    ("others cores", ">"), ("errors", ">"),
)


def _f(x: Any, fmt: str = ".2f", signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float | int):
        return format(x, ("+" if signed else "") + fmt)
    return str(x)


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
        _f(cpu.get("target") if proxy else None, ".0f"),
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
        "request over the gateway's"
    )
    lines.append(
        "proxy CPU: the proxy's processes only; others cores: CPU that processes outside "
        "the benchmark used meanwhile (noise)"
    )
    if any(r.get("truncated") for r in rows):
        lines.append("* the time limit cut this cell short")
    return "\n".join(lines)
