"""The one batch type every stage passes along: named columns plus where the rows came from.

A ``ColumnBatch`` holds the rows for one ClickHouse table as parallel Python lists (column name →
values). ``source`` names the Kafka topic, partition and the inclusive offset range of the messages
the rows were decoded from; the sink derives its idempotent insert token from it, and the worker
acks exactly those offsets once the insert is durable.

``RawMessage`` is a Kafka record as the stages see it (no faust types), and ``DeadLetter`` is a
record that a stage refused, with the reason that goes into the dead-letter headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

# A column every decoded batch carries and no table has: for each row, the index (in the run of
# messages decoded together) of the message it came from. Stages keep it like any other column; the
# sink never inserts it, and uses it to name the messages of rows that ClickHouse refuses.
ORIGIN = "_origin"


@dataclass(frozen=True)
class SourceRange:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    fingerprint: str = ""  # of the first and last message: other messages at the same offsets
    #                        (a recreated topic) make another token

    def token(self, table: str) -> str:
        """Insert deduplication token: the same messages always make the same token."""
        base = f"{table}:{self.topic}:{self.partition}:{self.first_offset}-{self.last_offset}"
        return f"{base}:{self.fingerprint}" if self.fingerprint else base


@dataclass
class ColumnBatch:
    table: str
    columns: dict[str, list[Any]]
    source: SourceRange | None = None

    def __len__(self) -> int:
        for values in self.columns.values():
            return len(values)
        return 0

    @property
    def column_names(self) -> list[str]:
        """The table's columns (what is inserted): every column but ``ORIGIN``."""
        return [name for name in self.columns if name != ORIGIN]

    def insert_columns(self) -> list[list[Any]]:
        """Column values in ``column_names`` order."""
        return [values for name, values in self.columns.items() if name != ORIGIN]

    def origins(self) -> list[int] | None:
        return self.columns.get(ORIGIN)

    @property
    def has_origins(self) -> bool:
        return ORIGIN in self.columns

    def with_source(self, source: SourceRange) -> "ColumnBatch":
        return ColumnBatch(self.table, self.columns, source)

    def shifted(self, base: int) -> "ColumnBatch":
        """The same rows with every ``ORIGIN`` moved by ``base`` (a run placed in a longer run)."""
        if not base or ORIGIN not in self.columns:
            return self
        return ColumnBatch(self.table, {**self.columns, ORIGIN: [o + base for o in self.columns[ORIGIN]]}, self.source)

    @classmethod
    def join(cls, batches: list["ColumnBatch"]) -> "ColumnBatch":
        """Rows of several batches of one table, in order (columns of the first batch)."""
        first = batches[0]
        columns = {name: [v for b in batches for v in b.columns[name]] for name in first.columns}
        return ColumnBatch(first.table, columns, first.source)

    def select(self, rows: list[int]) -> "ColumnBatch":
        """The given rows (indices, in that order)."""
        return ColumnBatch(self.table, {name: [values[i] for i in rows] for name, values in self.columns.items()},
                           self.source)

    def of_origins(self, origins: Iterable[int]) -> "ColumnBatch":
        """The rows that came from these messages."""
        wanted = set(origins)
        return self.select([i for i, o in enumerate(self.columns.get(ORIGIN, ())) if o in wanted])

    def without_origins(self, origins: Iterable[int]) -> "ColumnBatch":
        """The rows that did not come from these messages."""
        unwanted = set(origins)
        if not unwanted or ORIGIN not in self.columns:
            return self
        return self.select([i for i, o in enumerate(self.columns[ORIGIN]) if o not in unwanted])

    def rows(self) -> list[dict[str, Any]]:
        """Row view of the table's columns, for tests and debugging; stages work on columns."""
        names = self.column_names
        return [dict(zip(names, values)) for values in zip(*self.insert_columns())]


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


@dataclass(frozen=True)
class DeadLetter:
    message: RawMessage
    reason: str  # short machine-readable reason: "undecodable", "too_large", ...
    detail: str = ""  # human-readable explanation

    def headers(self) -> list[tuple[str, bytes]]:
        """The original headers plus the otelpipe.* headers naming why and where from."""
        extra = [
            ("otelpipe.dlq.reason", self.reason.encode()),
            ("otelpipe.dlq.detail", self.detail[:2000].encode("utf-8", "replace")),
            ("otelpipe.dlq.source_topic", self.message.topic.encode()),
            ("otelpipe.dlq.source_partition", str(self.message.partition).encode()),
            ("otelpipe.dlq.source_offset", str(self.message.offset).encode()),
        ]
        original = [(k, v) for k, v in self.message.headers if not k.startswith("otelpipe.dlq.")]
        return original + extra


@dataclass
class DecodeResult:
    """What decoding a run of messages produced: table batches and refused messages."""

    batches: dict[str, ColumnBatch] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    decoded_messages: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)  # alert records (also in an otelpipe_alerts batch)

    def row_count(self) -> int:
        return sum(len(b) for b in self.batches.values())


def concat(batches: list[ColumnBatch]) -> ColumnBatch:
    """Rows of several batches of one table, in order (columns of the first batch); batches of
    one kind are joined by that kind (native blocks stay native)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    kind = type(first) if all(type(b) is type(first) for b in batches) else ColumnBatch
    return kind.join(batches)
