"""Query results as a readable table, CSV or JSON for the terminal."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Sequence

import orjson


def _cell(value: Any, exact: bool = False) -> str:
    """A value as text: rounded for people (the table), exact for machines (``exact``: CSV)."""
    if value is None:
        return "NULL" if not exact else ""
    if isinstance(value, bool):
        return ("true" if value else "false") if exact else str(value)
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, v in enumerate(values):
            numeric = bool(rows) and isinstance(rows[0][i], (int, float)) and not isinstance(rows[0][i], bool)
            parts.append(v.rjust(widths[i]) if numeric else v.ljust(widths[i]))
        return "│ " + " │ ".join(parts) + " │"

    top = "┌─" + "─┬─".join("─" * w for w in widths) + "─┐"
    mid = "├─" + "─┼─".join("─" * w for w in widths) + "─┤"
    bottom = "└─" + "─┴─".join("─" * w for w in widths) + "─┘"
    out = [top, line(list(columns)), mid] + [line(r) for r in cells] + [bottom]
    out.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return "\n".join(out)


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v, exact=True) for v in row])
    return buf.getvalue().rstrip("\n")


def format_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return orjson.dumps([dict(zip(columns, row)) for row in rows], default=str,
                        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


FORMATS = {"table": format_table, "csv": format_csv, "json": format_json}
