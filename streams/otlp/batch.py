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
from typing import Any


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
        return list(self.columns)

    def with_source(self, source: SourceRange) -> "ColumnBatch":
        return ColumnBatch(self.table, self.columns, source)

    def rows(self) -> list[dict[str, Any]]:
        """Row view, for tests and debugging; stages work on columns."""
        names = list(self.columns)
        return [dict(zip(names, values)) for values in zip(*self.columns.values())]


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
