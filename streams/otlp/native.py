"""The native columnar decoder of spans (``streams.otlp._native``, built from ``native/``), behind
one small Python surface.

Input: the values of a batch of Kafka messages of the spans topic, each an OTLP
``ExportTraceServiceRequest`` in protobuf (``otlp_proto``). Output: a ``TracesBlock`` holding the
rows of ``otel_traces`` as native buffers, plus one ``(message index, reason, detail)`` per
message it refused. The rows and refusals are exactly those of ``decode.decode_messages("traces",
...)`` on the same messages (the tests compare both on every column, on hostile input too): a
message gives all of its rows or none, and a refusal carries the Python decoder's reason
(``undecodable``, ``wrong_encoding``, ``invalid_id``, ``invalid_value``, ``too_large``).

``decode_traces(payloads, max_message_bytes=16 MiB) -> TracesBlock``
    One call per batch; never raises for what a payload holds. The GIL is released while decoding.
``TracesBlock``
    ``.rows``, ``.messages``, ``.errors``, ``.origins()`` (message index per row);
    ``.to_columns(names=None)``: ``{name: list}`` with the values and types of the Python
    decoder's ``ColumnBatch.columns`` (for tests: it builds a Python object per value);
    ``.to_native(names=None) -> bytes``: one ClickHouse Native block of those columns, in that
    order, for ``client.raw_insert(table, names, insert_block=..., fmt="Native")``;
    ``.distinct_attribute_values()``: the distinct ``(key, value)`` attribute pairs of the batch
    (keys and values are stored once per batch; maps hold indexes);
    ``.remap_attribute_values({(key, value): new value or None})``: a policy decided once per
    distinct pair in Python, applied natively to every map (``None`` drops the pair).

The extension is optional (a machine without cargo installs without it): ``available()`` says
whether it is built; without it the caller decodes with ``decode.decode_messages``. Only
protobuf payloads go here; OTLP JSON and content-type routing stay with ``decode_messages``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from streams.otlp.batch import DeadLetter, RawMessage

try:
    from streams.otlp import _native
except ImportError:  # built without cargo: the Python decoder does everything
    _native = None

if TYPE_CHECKING:
    from streams.otlp._native import TracesBlock

# decode.decode_messages' default limit
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def available() -> bool:
    """Whether the native decoder is built (else use ``decode.decode_messages``)."""
    return _native is not None


def decode_traces(payloads: Sequence[bytes], max_message_bytes: int = MAX_MESSAGE_BYTES) -> "TracesBlock":
    """Protobuf ExportTraceServiceRequest payloads → one TracesBlock (see the module's text)."""
    if _native is None:
        raise RuntimeError("streams.otlp._native is not built (install with cargo available); "
                           "decode with streams.otlp.decode.decode_messages instead")
    return _native.decode_traces(list(payloads), max_message_bytes)


def column_types() -> dict[str, str]:
    """{otel_traces column: the Native type its data is sent as}."""
    if _native is None:
        raise RuntimeError("streams.otlp._native is not built")
    return _native.column_types()


def dead_letters(messages: Sequence[RawMessage], block: Any) -> list[DeadLetter]:
    """The block's refusals as dead letters of the messages it was decoded from."""
    return [DeadLetter(messages[index], reason, detail) for index, reason, detail in block.errors]
