"""The native columnar decoder of spans and log records (``streams.otlp._native``, built from
``native/``), behind one small Python surface.

Input: the values of a batch of Kafka messages of the spans (logs) topic, each an OTLP
``ExportTraceServiceRequest`` (``ExportLogsServiceRequest``) in protobuf (``otlp_proto``). Output: a
``NativeBlock`` holding the rows of ``otel_traces`` (``otel_logs``) as native buffers, plus one
``(message index, reason, detail)`` per message it refused. The rows and refusals are exactly those
of ``decode.decode_messages("traces", ...)`` (``"logs"``) on the same messages (the tests compare
both on every column, on hostile input too): a message gives all of its rows or none, and a refusal
carries the Python decoder's reason (``undecodable``, ``wrong_encoding``, ``invalid_id``,
``invalid_value``, ``too_large``).

``decode_traces(payloads, max_message_bytes=16 MiB) -> NativeBlock``, ``decode_logs(...)``
    One call per batch; never raises for what a payload holds. The GIL is released while decoding.
``NativeBlock``
    ``.table``, ``.rows``, ``.messages``, ``.errors``, ``.origins()`` (message index per row);
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

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from streams.otlp.batch import ORIGIN, ColumnBatch, DeadLetter, RawMessage, SourceRange

try:
    from streams.otlp import _native
except ImportError:  # built without cargo: the Python decoder does everything
    _native = None

if TYPE_CHECKING:
    from streams.otlp._native import NativeBlock

# decode.decode_messages' default limit
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def available() -> bool:
    """Whether the native decoder is built (else use ``decode.decode_messages``)."""
    return _native is not None


def _built() -> Any:
    if _native is None:
        raise RuntimeError("streams.otlp._native is not built (install with cargo available); "
                           "decode with streams.otlp.decode.decode_messages instead")
    return _native


def decode_traces(payloads: Sequence[bytes], max_message_bytes: int = MAX_MESSAGE_BYTES) -> "NativeBlock":
    """Protobuf ExportTraceServiceRequest payloads → one NativeBlock of otel_traces (see the module's text)."""
    return _built().decode_traces(list(payloads), max_message_bytes)


def decode_logs(payloads: Sequence[bytes], max_message_bytes: int = MAX_MESSAGE_BYTES) -> "NativeBlock":
    """Protobuf ExportLogsServiceRequest payloads → one NativeBlock of otel_logs."""
    return _built().decode_logs(list(payloads), max_message_bytes)


DECODERS = {"traces": decode_traces, "logs": decode_logs}


def redaction_inputs(signal: str, payload: bytes, secrets: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """What redaction could change in a protobuf spans or logs request, read without building rows:
    (distinct attribute keys at any depth, distinct other strings some detector may match), or None
    when the protobuf library would not parse it."""
    return _built().redaction_inputs(signal, payload, list(secrets))


def redact_request(signal: str, payload: bytes, drop_keys: Iterable[str], replace: Mapping[str, str | None]
                   ) -> tuple[bytes, int] | None:
    """A protobuf spans or logs request redacted at the wire level with decisions made in Python:
    attributes whose key is in ``drop_keys`` leave their lists, strings in ``replace`` take their new
    value (None: dropped, as ``redact_otlp.redact_request`` drops or masks them). (bytes, values
    changed), or None when the request does not parse, holds an attribute or AnyValue that
    protobuf would merge from two values, or nests more than 32 messages deep (the protobuf
    library's walk decides then)."""
    return _built().redact_request(signal, payload, list(drop_keys), dict(replace))


def split_by_trace(signal: str, payload: bytes, max_total: int, validated: bool = False
                   ) -> list[tuple[str, bytes, int, int]] | None:
    """A protobuf spans or logs request cut into one request per trace at the wire level:
    [(trace id hex, part, records, latest end ns)], traces in the order first seen ("" for records
    without one). None when the protobuf library would not parse it; ``ValueError("too_large",
    bytes)`` when the parts would add up to more than ``max_total`` bytes. ``validated``:
    ``redaction_inputs`` read this payload already (it is valid), so it is not read twice."""
    return _built().split_by_trace(signal, payload, max_total, validated)


def triage_spans(payload: bytes) -> tuple[int, int, int, int | None, bool, bytes | None] | None:
    """Tail sampling's triage of one routed spans part, read without decoding it: (spans, statuses
    (bit c set when a span has status Unset, Ok, Error), longest duration, longest duration of a
    root span or None, whether the decoder would refuse a span, the part cut to its root spans or
    None); None when it does not parse."""
    return _built().triage_spans(payload)


def column_types(table: str = "otel_traces") -> dict[str, str]:
    """{column of ``table`` (otel_traces, otel_logs): the Native type its data is sent as}."""
    return _built().column_types(table)


def dead_letters(messages: Sequence[RawMessage], block: Any) -> list[DeadLetter]:
    """The block's refusals as dead letters of the messages it was decoded from."""
    return [DeadLetter(messages[index], reason, detail) for index, reason, detail in block.errors]


class NativeBatch(ColumnBatch):
    """Rows of ``otel_traces`` or ``otel_logs`` held as native blocks: a ``ColumnBatch`` whose Python columns are
    made only when something asks for them.

    The hot path never does: its length, column names, time range and Native bytes come from the
    blocks (``native()``: one Native block each, in order, in one insert). Everything else a
    ``ColumnBatch`` offers (``columns``, ``select``, ``of_origins``, ``rows()``...) works on the
    Python columns, made once from the blocks on first use: the slow paths (a refused insert cut
    in halves, a table that keeps times with less precision) stay exactly those of every batch.
    ``parts`` is ``[(block, shift)]``: the ``ORIGIN`` of a block's row is its message index plus
    the block's shift (the block's place in a run of several cuts).
    """

    def __init__(self, parts: Sequence[tuple[Any, int]], source: SourceRange | None = None,
                 table: str = "otel_traces"):
        self.table = table
        self.source = source
        self.parts = [(block, shift) for block, shift in parts if len(block)]
        self._columns: dict[str, list[Any]] | None = None
        self._some_columns: dict[str, list[Any]] = {}  # made by columns_of, kept for the next ask
        if any(block.table != table for block, _ in self.parts):
            raise ValueError(f"a batch of {table} cannot hold blocks of {sorted({b.table for b, _ in self.parts})}")
        names = {tuple(block.column_names()) for block, _ in self.parts}
        if len(names) > 1:
            raise ValueError(f"blocks of {table} with other columns cannot be one batch: {sorted(names)}")
        default = (_native.LOG_COLUMNS if table == "otel_logs" else _native.COLUMNS) if _native else ()
        self._names = list(names.pop()) if names else list(default)

    @classmethod
    def of(cls, block: Any) -> "NativeBatch":
        return cls([(block, 0)], table=block.table)

    def __len__(self) -> int:
        return sum(len(block) for block, _ in self.parts)

    def __repr__(self) -> str:
        return f"<NativeBatch {self.table} {len(self)} rows in {len(self.parts)} blocks>"

    @property
    def columns(self) -> Mapping[str, list[Any]]:  # type: ignore[override]
        """The Python columns, read-only: the rows go to ClickHouse as the blocks' Native bytes, so
        a column set here would be lost without a word; a stage that changes rows makes a new
        ``ColumnBatch`` (``TypeError`` here says so)."""
        return MappingProxyType(self._python_columns())

    def _python_columns(self) -> dict[str, list[Any]]:
        if self._columns is None:
            columns: dict[str, list[Any]] = {name: [] for name in self._names}
            origins: list[int] = []
            for block, shift in self.parts:
                for name, values in block.to_columns(self._names).items():
                    columns[name].extend(values)
                origins.extend(o + shift for o in block.origins())
            columns[ORIGIN] = origins
            self._columns = columns
        return self._columns

    @property
    def column_names(self) -> list[str]:
        return list(self._names)

    def columns_of(self, names: Iterable[str]) -> dict[str, list[Any]]:
        """Python columns of ``names`` alone (those the batch has, read only), without making the others: what a
        stage that reads a few columns asks for (tail sampling's policies)."""
        if self._columns is not None:
            return {name: self._columns[name] for name in names if name in self._columns}
        made = self._some_columns
        missing = [name for name in names if name in self._names and name not in made]
        if missing:
            for name in missing:
                made[name] = []
            for block, _ in self.parts:
                for name, values in block.to_columns(missing).items():
                    made[name].extend(values)
        return {name: made[name] for name in names if name in made}

    def apply_tail(self, keep: Sequence[bool], factors: Sequence[float]) -> "NativeBatch":
        """Tail sampling's decisions, one flag and one weight factor per row in order, applied by the
        blocks (``NativeBlock.apply_tail``: the rows whose flag is set stay, their SampleWeight
        multiplied by the factor). The blocks change: the batch they came in is spent."""
        if len(keep) != len(self) or len(factors) != len(self):
            raise ValueError(f"{len(keep)} flags and {len(factors)} factors for {len(self)} rows")
        start = 0
        for block, _ in self.parts:
            stop = start + len(block)
            block.apply_tail(list(keep[start:stop]), list(factors[start:stop]))
            start = stop
        return NativeBatch(self.parts, self.source, self.table)

    def apply_tail_traces(self, kept: dict[str, float]) -> "NativeBatch":
        """Tail sampling's decisions by trace: the rows of the traces in ``kept`` ({trace id: weight
        factor}) stay, their SampleWeight multiplied by the factor; the others go
        (``NativeBlock.apply_tail_traces``). The blocks change: the batch they came in is spent."""
        for block, _ in self.parts:
            block.apply_tail_traces(kept)
        return NativeBatch(self.parts, self.source, self.table)

    def insert_columns(self) -> list[list[Any]]:
        columns = self._python_columns()
        return [columns[name] for name in self._names]

    @property
    def has_origins(self) -> bool:
        return True

    def origins(self) -> list[int]:
        return [o + shift for block, shift in self.parts for o in block.origins()]

    def with_source(self, source: SourceRange) -> "NativeBatch":
        return NativeBatch(self.parts, source, self.table)

    def shifted(self, base: int) -> "NativeBatch":
        """The same rows with every ``ORIGIN`` moved by ``base`` (a cut placed in a longer run)."""
        return NativeBatch([(block, shift + base) for block, shift in self.parts], self.source, self.table)

    @classmethod
    def join(cls, batches: list[ColumnBatch]) -> ColumnBatch:
        names = {tuple(b.column_names) for b in batches}
        if len(names) > 1:
            return ColumnBatch.join(batches)
        return NativeBatch([part for b in batches for part in b.parts], batches[0].source, batches[0].table)

    def without_origins(self, origins: Iterable[int]) -> ColumnBatch:
        unwanted = set(origins)
        if not unwanted:
            return self
        return super().without_origins(unwanted)

    def time_range(self) -> tuple[int, int] | None:
        """(earliest, latest) ``Timestamp`` in ns, None without rows."""
        ranges = [r for block, _ in self.parts if (r := block.time_range()) is not None]
        if not ranges:
            return None
        return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)

    def native(self) -> bytes:
        """The rows as ClickHouse Native data of ``column_names``: one block per part."""
        return b"".join(self.native_blocks())

    def native_blocks(self) -> Iterator[bytes]:
        """The Native blocks of ``native()``, each encoded when it is asked for: an insert streams
        them (``raw_insert`` takes an iterator), so only one part's bytes are held at a time."""
        for block, _ in self.parts:
            yield block.to_native(self._names)

