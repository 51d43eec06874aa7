"""The terminal waterfall for ``./d11 trace``: the same picture the web viewer draws."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_COLORS = ["blue", "green", "magenta", "dark_orange", "cyan", "deep_pink3", "yellow4", "grey50"]


def ordered(spans: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Depth-first by start time; spans whose parent is missing count as roots."""
    ids = {s["span_id"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for span in spans:
        parent = span.get("parent_span_id")
        if parent and parent in ids:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    out: list[tuple[dict[str, Any], int]] = []

    def walk(span: dict[str, Any], depth: int) -> None:
        out.append((span, depth))
        for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start_ns"]):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s["start_ns"]):
        walk(root, 0)
    return out


def site_of(span: dict[str, Any] | None) -> str:
    """The data centre a span ran in: its resource's ``cloud.region`` (the topology's site)."""
    return str(((span or {}).get("resource") or {}).get("cloud.region") or "")


def site_crossing(span: dict[str, Any], parent: dict[str, Any] | None) -> tuple[str, str] | None:
    """(from, to) where a span ran in another site than its parent: the inter-site hop."""
    here, there = site_of(span), site_of(parent)
    return (there, here) if here and there and here != there else None


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}"


def render(trace_id: str, spans: list[dict[str, Any]], console: Console, *, attrs: bool) -> None:
    start = min(s["start_ns"] for s in spans)
    total = max(max(s["end_ns"] for s in spans) - start, 1)
    services = sorted({s["service"] for s in spans})
    color = {svc: _COLORS[i % len(_COLORS)] for i, svc in enumerate(services)}
    width = max(20, min(60, console.width - 80))
    table = Table(
        title=f"trace {trace_id} · {len(spans)} spans · {len(services)} services · {_ms(total)} ms",
        title_justify="left",
        expand=False,
    )
    table.add_column("service: span", overflow="fold")
    table.add_column("start ms", justify="right")
    table.add_column("dur ms", justify="right")
    table.add_column("timeline", no_wrap=True)
    by_id = {s["span_id"]: s for s in spans}
    for span, depth in ordered(spans):
        error = span["status"]["code"] == "ERROR"
        label = Text("  " * depth)
        label.append(span["service"], style=f"bold {color[span['service']]}")
        crossing = site_crossing(span, by_id.get(span.get("parent_span_id") or ""))
        if crossing:
            label.append(f" [{crossing[0]} → {crossing[1]}]", style="bold dark_orange")
        label.append(": ")
        label.append(span["name"], style="bold red" if error else "")
        if error and span["status"].get("message"):
            label.append(f" ({span['status']['message']})", style="red")
        if attrs:
            for key, value in span["attributes"].items():
                label.append(f"\n{'  ' * depth}  {key}={value}", style="dim")
        offset = int((span["start_ns"] - start) / total * width)
        length = max(1, round(span["duration_ns"] / total * width))
        bar = Text(" " * offset)
        bar.append(
            "█" * min(length, width - offset or 1), style="red" if error else color[span["service"]]
        )
        table.add_row(label, _ms(span["start_ns"] - start), _ms(span["duration_ns"]), bar)
    console.print(table)
