"""A trace as a terminal waterfall: the span tree, durations drawn to scale, errors marked, logs
interleaved by time under the span they belong to.

``render_trace(spans, logs, width, color)`` takes rows as dicts (``Timestamp`` in integer
nanoseconds) and returns the lines. Pure: no I/O; colour only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RED, DIM, BOLD, RESET = "\033[31m", "\033[2m", "\033[1m", "\033[0m"


@dataclass
class _Node:
    span: dict[str, Any]
    children: list["_Node"] = field(default_factory=list)


def _ms(ns: int) -> str:
    ms = ns / 1e6
    if ms >= 1000:
        return f"{ms / 1000:.2f}s"
    if ms >= 10:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def build_tree(spans: list[dict[str, Any]]) -> list[_Node]:
    """Roots (spans whose parent is absent from the trace) with their children, by start time."""
    nodes = {s["SpanId"]: _Node(s) for s in spans}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.span["ParentSpanId"])
        if parent is not None and parent is not node:
            parent.children.append(node)
        else:
            roots.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: (n.span["Timestamp"], n.span["SpanName"]))
    roots.sort(key=lambda n: n.span["Timestamp"])
    return roots


def render_trace(spans: list[dict[str, Any]], logs: list[dict[str, Any]], width: int = 40,
                 color: bool = False) -> list[str]:
    if not spans:
        return []
    start = min(s["Timestamp"] for s in spans)
    end = max(s["Timestamp"] + s["Duration"] for s in spans)
    total = max(end - start, 1)
    services = sorted({s["ServiceName"] for s in spans})
    errors = sum(1 for s in spans if s["StatusCode"] == "Error")
    logs_by_span: dict[str, list[dict[str, Any]]] = {}
    for log in sorted(logs, key=lambda r: r["Timestamp"]):
        logs_by_span.setdefault(log.get("SpanId") or "", []).append(log)

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    header = (f"trace {spans[0]['TraceId']}: {len(spans)} spans, {len(services)} services "
              f"({', '.join(services)}), {_ms(total)}, {errors} error span{'s' if errors != 1 else ''}, "
              f"{len(logs)} log{'s' if len(logs) != 1 else ''}")
    lines = [paint(header, BOLD)]
    rows: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []

    def walk(node: _Node, prefix: str, last: bool, depth: int) -> None:
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        rows.append((prefix + branch, node.span, None))
        child_prefix = prefix + ("" if depth == 0 else ("   " if last else "│  "))
        for log in logs_by_span.pop(node.span["SpanId"], []):
            rows.append((child_prefix + ("│  " if node.children else "   "), None, log))
        for i, child in enumerate(node.children):
            walk(child, child_prefix, i == len(node.children) - 1, depth + 1)

    for root in build_tree(spans):
        walk(root, "", True, 0)
    orphans = [log for group in logs_by_span.values() for log in group]

    label_width = min(70, max(len(p) + len(s["ServiceName"]) + len(s["SpanName"]) + 3
                              for p, s, _ in rows if s is not None))
    for prefix, span, log in rows:
        if span is not None:
            label = f"{prefix}{span['ServiceName']}: {span['SpanName']}"
            label = label if len(label) <= label_width else label[: label_width - 1] + "…"
            offset = span["Timestamp"] - start
            left = int(offset / total * width)
            length = max(1, round(span["Duration"] / total * width))
            length = min(length, width - left) if left < width else 1
            bar = " " * left + "█" * length
            bar = bar.ljust(width)
            is_error = span["StatusCode"] == "Error"
            text = f"{label.ljust(label_width)} │{bar}│ {_ms(span['Duration']).rjust(8)} +{_ms(offset)}"
            if is_error:
                text += "  ERROR" + (f": {span['StatusMessage']}" if span.get("StatusMessage") else "")
                text = paint(text, RED)
            lines.append(text)
        else:
            assert log is not None
            lines.append(_log_line(prefix, log, start, paint))
    for log in orphans:
        lines.append(_log_line("", log, start, paint))
    return lines


def _log_line(prefix: str, log: dict[str, Any], start: int, paint: Any) -> str:
    severity = log.get("SeverityText") or str(log.get("SeverityNumber", ""))
    body = str(log.get("Body", "")).replace("\n", " ")
    if len(body) > 120:
        body = body[:119] + "…"
    text = f"{prefix}· +{_ms(log['Timestamp'] - start)} {severity:<5} {log.get('ServiceName', '')}: {body}"
    if severity.upper() in ("ERROR", "FATAL") or (log.get("SeverityNumber") or 0) >= 17:
        return paint(text, RED)
    return paint(text, DIM)
