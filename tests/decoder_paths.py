"""The native span and log decoders beside the Python one, on the same messages: how their results differ.

``differences(payloads, signal="traces")`` is [] when ``streams.otlp.native.decode_traces``
(``decode_logs``) refuses the same messages as ``decode_messages(signal, ...)`` (same reason and
detail) and stores the same rows otherwise, every otel_traces (otel_logs) column value for value and
type for type, with the same message per row.
"""

from __future__ import annotations

from streams.otlp import native
from streams.otlp.batch import ORIGIN, RawMessage
from streams.otlp.columns import LOG_COLUMNS, TRACE_COLUMNS
from streams.otlp.decode import decode_messages
from tests.fuzz.targets import first_difference, same


TABLES = {"traces": ("otel_traces", TRACE_COLUMNS), "logs": ("otel_logs", LOG_COLUMNS)}


def python_result(payloads: list[bytes], signal: str = "traces", **kwargs):
    messages = [RawMessage("t", 0, i, p) for i, p in enumerate(payloads)]
    return decode_messages(signal, messages, **kwargs)


def differences(payloads: list[bytes], signal: str = "traces", **kwargs) -> list[str]:
    """How the native block differs from the Python decoder's result ([] when they agree)."""
    table, names = TABLES[signal]
    block = native.DECODERS[signal](payloads, **kwargs)
    result = python_result(payloads, signal, **kwargs)
    out = []
    letters = [(d.message.offset, d.reason, d.detail) for d in result.dead_letters]
    if block.errors != letters:
        out.append(f"refused: native {block.errors[:3]} python {letters[:3]}")
    if block.messages != len(payloads) or len(block.errors) + result.decoded_messages != len(payloads):
        out.append(f"{block.messages} messages, {len(block.errors)} refused, python decoded {result.decoded_messages}")
    batch = result.batches.get(table)
    columns = block.to_columns()
    if block.table != table or list(columns) != names:
        out.append(f"columns {list(columns)}")
    if batch is None:
        if block.rows:
            out.append(f"native stores {block.rows} rows, python none")
        return out
    for name in names:
        if not same(columns[name], batch.columns[name]):
            out.append(f"{name}: native vs python: {first_difference(columns[name], batch.columns[name])}")
    if block.origins() != batch.columns[ORIGIN]:
        out.append("origins differ")
    if block.rows != len(batch):
        out.append(f"{block.rows} rows vs {len(batch)}")
    return out


def native_refuses(payload: bytes, signal: str = "traces") -> bool:
    return bool(native.DECODERS[signal]([payload]).errors)
