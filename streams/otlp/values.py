"""OTLP values as the Collector's ClickHouse exporter stores them: AnyValue → string, attributes →
maps, service names, ids as hex, timestamps checked against DateTime64(9). Pure functions.
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import Any, Iterable

import orjson

class BadMessage(Exception):
    """A message that cannot become rows; ``reason`` goes into the dead-letter headers."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- AnyValue to string


def format_double(value: float) -> str:
    """A double as Go's strconv.FormatFloat(v, 'f', -1, 64) writes it (the Collector's AsString)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text


def any_value_raw(value: Any) -> Any:
    """AnyValue as a JSON-able Python value (bytes as base64), for arrays and kvlists."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        v = value.double_value
        return v if math.isfinite(v) else format_double(v)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return [any_value_raw(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_raw(kv.value) for kv in value.kvlist_value.values}
    return None


def any_value_str(value: Any) -> str:
    """AnyValue flattened to one string, as the Collector's ClickHouse exporter stores it."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_double(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value" or kind == "kvlist_value":
        return orjson.dumps(any_value_raw(value), option=orjson.OPT_SORT_KEYS).decode()
    return ""


def _value_str(value: Any) -> str:
    # Strings are by far the most common kind: a non-empty string_value settles it without
    # asking which kind is set; anything else (including "") takes the general path.
    return value.string_value or any_value_str(value)


def attributes_map(kvs: Iterable[Any]) -> dict[str, str]:
    # _value_str inlined: this runs for every attribute of every record.
    return {kv.key: kv.value.string_value or any_value_str(kv.value) for kv in kvs}


def service_name(resource_attrs: dict[str, str]) -> str:
    name = resource_attrs.get("service.name")
    if name:
        return name
    executable = resource_attrs.get("process.executable.name")
    return f"unknown_service:{executable}" if executable else "unknown_service"


# DateTime64(9) holds nanoseconds as Int64: 2262-04-11 is the last instant it can store.
MAX_TIMESTAMP_NS = 2**63 - 1


def checked_timestamp(value: int, what: str) -> int:
    if value > MAX_TIMESTAMP_NS:
        raise BadMessage("invalid_value", f"{what} {value} ns is past 2262-04-11, the last DateTime64(9) instant")
    return value


def id_hex(raw: bytes, size: int, what: str) -> str:
    if not raw:
        return ""
    if len(raw) != size:
        raise BadMessage("invalid_id", f"{what} must be {size} bytes, got {len(raw)}")
    return raw.hex()
