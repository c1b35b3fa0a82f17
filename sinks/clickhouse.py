"""The ClickHouse writer: columnar, idempotent inserts through clickhouse-connect.

``ClickHouseSink.write(batch)`` inserts one ``ColumnBatch`` with an ``insert_deduplication_token``
derived from (table, topic, partition, first offset, last offset): writing the same messages again
after a crash is dropped by ClickHouse (every table sets ``non_replicated_deduplication_window``).
The offset-range ledger (``otelpipe_sink_ranges``) remembers which ranges were attempted, so that
re-delivered messages can be cut back into the same ranges (see ``sinks.write_plan``).

All calls block; the worker runs them on one dedicated thread, never on the event loop. With the
embedded store (``chdb://PATH``) one process holds the path; other processes query through the
worker's read-only ``/query`` endpoint.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DataError, OperationalError, ProgrammingError

from sinks.write_plan import LedgerConflict, RecordedRange
from streams.otlp.batch import ColumnBatch, SourceRange
from streams.otlp.native import NativeBatch
from sinks.settings import ClickHouseSettings

log = logging.getLogger(__name__)

LEDGER_TABLE = "otelpipe_sink_ledger"  # schemas/clickhouse/0019_sink_ledger.sql
DAY_NS = 86_400 * 10**9
# ClickHouse refuses an insert block touching more than max_partitions_per_insert_block (100 by
# default) partitions; every otel table is partitioned by day of this column.
PARTITION_TIME_COLUMN = {
    "otel_traces": "Timestamp",
    "otel_logs": "Timestamp",
    "otel_metrics_gauge": "TimeUnix",
    "otel_metrics_sum": "TimeUnix",
    "otel_metrics_histogram": "TimeUnix",
    "otel_metrics_exponential_histogram": "TimeUnix",
    "otel_metrics_summary": "TimeUnix",
    "otel_trace_summary": "Start",
}
MAX_PARTITIONS_PER_INSERT = 90
# Columns the batches carry as nanoseconds since the epoch. A table may hold some of them with less
# precision (a database the Collector's exporter made keeps metric times as DateTime, seconds):
# the sink scales them to what the table holds.
NANOSECOND_COLUMNS = {"Timestamp", "ObservedTimestamp", "StartTimeUnix", "TimeUnix", "Events.Timestamp",
                      "Exemplars.TimeUnix", "Start"}
_DATETIME_TYPE = re.compile(r"^(?:Array\()?(?:LowCardinality\()?DateTime(?:64\((\d)(?:,[^)]*)?\))?(?:\([^)]*\))?")


def nanosecond_divisor(column_type: str) -> int:
    """How much a nanosecond value is divided by to fit a column of this type (1: it fits)."""
    m = _DATETIME_TYPE.match(column_type)
    if not m:
        return 1
    precision = int(m.group(1)) if m.group(1) is not None else 0
    return 10 ** (9 - precision) if precision < 9 else 1


def scaled(values: list[Any], divisor: int) -> list[Any]:
    if divisor == 1:
        return values
    return [[v // divisor for v in x] if isinstance(x, (list, tuple)) else x // divisor for x in values]


def insert_settings(settings: ClickHouseSettings, token: str) -> dict[str, Any]:
    """The settings of every insert: its deduplication token; the same token for the blocks it makes
    in materialized views (without it a retry after a failed view insert loses the view's rows, or
    counts them twice); with Distributed tables, a synchronous insert, so that success means every
    shard has its rows and a retry meets the same shards' deduplication."""
    out: dict[str, Any] = {"insert_deduplication_token": token, "insert_deduplicate": 1,
                           "deduplicate_blocks_in_dependent_materialized_views": 1}
    if settings.sharded:
        out["distributed_foreground_insert"] = 1
    return out


def blocks_within_partition_limit(batch: ColumnBatch, limit: int = MAX_PARTITIONS_PER_INSERT) -> list[ColumnBatch]:
    """Cut a batch whose rows span more than ``limit`` days into batches of at most ``limit`` days.

    Deterministic: the same batch is always cut the same way (days in ascending order, rows in
    their original order within a piece), so each piece can carry a stable token.
    """
    column = PARTITION_TIME_COLUMN.get(batch.table)
    if column is None or column not in batch.column_names:
        return [batch]
    if isinstance(batch, NativeBatch) and column == "Timestamp":
        span = batch.time_range()  # days from the first to the last: at least the distinct days
        if span is None or span[1] // DAY_NS - span[0] // DAY_NS < limit:
            return [batch]
    days = [ts // DAY_NS for ts in batch.columns[column]]
    distinct = sorted(set(days))
    if len(distinct) <= limit:
        return [batch]
    piece_of = {day: i // limit for i, day in enumerate(distinct)}
    rows_of: list[list[int]] = [[] for _ in range((len(distinct) + limit - 1) // limit)]
    for row, day in enumerate(days):
        rows_of[piece_of[day]].append(row)
    return [
        ColumnBatch(batch.table, {name: [values[i] for i in rows] for name, values in batch.columns.items()},
                    batch.source)
        for rows in rows_of
    ]

# ClickHouse error codes worth retrying: the server is busy, slow or briefly unable to write.
RETRYABLE_CODES = {
    3,  # UNEXPECTED_END_OF_FILE
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY (replica in readonly mode)
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    285,  # TOO_FEW_LIVE_REPLICAS
    319,  # UNKNOWN_STATUS_OF_INSERT
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
}


def chdb_path(dsn: str) -> Path:
    """``chdb:///abs/path`` or ``chdb://relative/path`` → an absolute directory."""
    rest = dsn[len("chdb://"):]
    return Path(os.path.expanduser(rest)).resolve()


def connect(settings: ClickHouseSettings) -> Any:
    """A clickhouse-connect client for the configured DSN (chDB embedded, or a server) whose
    session database is ``settings.database``, so unqualified table names resolve there.

    clickhouse-connect refuses a session database that does not exist yet (``get_client(database=
    ...)`` fails with UNKNOWN_DATABASE), and migrations create it: the embedded store creates it here
    (what the first migration does anyway, no cluster there); on a server the database is taken once
    it exists (``use_database``, again after migrating), and a database the DSN's path names stays.
    """
    if settings.dsn.startswith("chdb://"):
        path = chdb_path(settings.dsn)
        path.mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        client.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
        client.database = settings.database
        return client
    client = clickhouse_connect.get_client(**server_client_options(settings))
    use_database(client, settings.database)
    return client


def server_client_options(settings: ClickHouseSettings) -> dict[str, Any]:
    """clickhouse-connect's options for a server DSN: timeouts, the password, and TLS (a private
    CA, a client certificate for mutual TLS, verification)."""
    options: dict[str, Any] = {"dsn": settings.dsn, "send_receive_timeout": int(settings.insert_timeout_s),
                               "connect_timeout": 10}
    password = settings.password.get_secret_value()
    if password:
        options["password"] = password
    if settings.ca_file:
        options["ca_cert"] = str(Path(settings.ca_file).expanduser())
    if settings.client_cert_file:
        options["client_cert"] = str(Path(settings.client_cert_file).expanduser())
        options["client_cert_key"] = str(Path(settings.client_key_file).expanduser())
    if not settings.verify:
        options["verify"] = False
    return options


def use_database(client: Any, database: str) -> bool:
    """Make ``database`` the client's session database if it has none (the DSN named none) and
    the database exists; True when the client has a session database afterwards."""
    if client.database:
        return True
    exists = client.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                          parameters={"db": database}).result_rows[0][0]
    if exists:
        client.database = database
    return bool(exists)


# Errors of the table or the connection's rights, not of the rows: writing waits until someone fixes
# them (the writer shows as blocked), rather than dead-lettering every message.
SCHEMA_CODES = {
    8,  # THERE_IS_NO_COLUMN
    10,  # NOT_FOUND_COLUMN_IN_BLOCK
    16,  # NO_SUCH_COLUMN_IN_TABLE
    20,  # NUMBER_OF_COLUMNS_DOESNT_MATCH
    47,  # UNKNOWN_IDENTIFIER
    60,  # UNKNOWN_TABLE
    81,  # UNKNOWN_DATABASE
    192,  # UNKNOWN_USER
    193,  # WRONG_PASSWORD
    497,  # ACCESS_DENIED
    516,  # AUTHENTICATION_FAILED
}
# Errors that say these rows cannot be stored: retrying cannot help, the rows' messages are refused.
DATA_CODES = {
    6,  # CANNOT_PARSE_TEXT
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    43,  # ILLEGAL_TYPE_OF_ARGUMENT
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    128,  # TOO_LARGE_ARRAY_SIZE
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    469,  # VIOLATED_CONSTRAINT
}

RETRY, REFUSED, UNKNOWN = "retry", "refused", "unknown"


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    marker = "Code: "
    if marker in text:
        digits = text.split(marker, 1)[1].split(".", 1)[0].strip()
        if digits.isdigit():
            return int(digits)
    return None


def error_kind(exc: BaseException) -> str:
    """What a failed call says about its data, by error class and ClickHouse code:

    - ``retry``: try again later, forever: the server is away, busy or throttling, or the table or
      the credentials need fixing by someone (nothing about these rows is wrong);
    - ``refused``: these rows cannot be stored (type overflow, unparsable value, too large): their
      messages become dead letters;
    - ``unknown``: anything else; retried a bounded number of times, then taken as ``refused``.
    """
    if isinstance(exc, LedgerConflict):  # another writer's cut stands: plan again, at once
        return RETRY
    if isinstance(exc, (DataError, ProgrammingError, struct.error, OverflowError, UnicodeError)):
        return REFUSED
    if isinstance(exc, (OperationalError, ConnectionError, TimeoutError, socket.timeout, OSError)):
        return RETRY
    if isinstance(exc, (ValueError, TypeError)):  # clickhouse-connect serialising a value it cannot
        return REFUSED
    code = error_code(exc)
    if code in RETRYABLE_CODES or code in SCHEMA_CODES:
        return RETRY
    if code in DATA_CODES:
        return REFUSED
    return UNKNOWN


def is_retryable(exc: BaseException) -> bool:
    """True for failures that say "try later" (server down, busy, throttling), not "bad data"."""
    return error_kind(exc) == RETRY


def describe_error(exc: BaseException) -> str:
    """Class, code and ClickHouse's name of the error, never its text (which may quote the rows)."""
    code = error_code(exc)
    if code is None:
        return type(exc).__name__
    text = str(exc)
    name = ""
    if text.rstrip().endswith(")") and "(" in text:
        candidate = text.rstrip()[:-1].rsplit("(", 1)[1]
        if candidate.isupper() and candidate.replace("_", "").isalnum():
            name = f" {candidate}"
    return f"{type(exc).__name__} code {code}{name}"


@dataclass(frozen=True)
class Refusal:
    """Rows of one message (its index in the batch's run) that ClickHouse refused, and why."""

    origin: int
    table: str
    error: str


class ClickHouseSink:
    def __init__(self, client: Any, settings: ClickHouseSettings, consumer_group: str):
        self.client = client
        self.settings = settings
        self.database = settings.database
        self.consumer_group = consumer_group
        self._unknown_failures: OrderedDict[str, int] = OrderedDict()  # token → failures of unknown kind
        self._time_divisors: dict[str, dict[str, int]] = {}

    @classmethod
    def open(cls, settings: ClickHouseSettings, consumer_group: str) -> "ClickHouseSink":
        return cls(connect(settings), settings, consumer_group)

    def write(self, batch: ColumnBatch, token: str | None = None) -> int:
        """Insert a batch; the same token twice inserts once. Returns the rows sent. Raises on any
        failure (see ``write_isolating`` to have refused rows found and set aside)."""
        if not len(batch):
            return 0
        token = self._token(batch, token)
        pieces = blocks_within_partition_limit(batch)
        for i, piece in enumerate(pieces):
            self._insert(piece, token if len(pieces) == 1 else f"{token}#{i}")
        return len(batch)

    def write_isolating(self, batch: ColumnBatch, token: str | None = None) -> list[Refusal]:
        """Insert a batch, setting aside the messages whose rows ClickHouse refuses.

        Raises on an error worth retrying (``error_kind`` ``retry``, or ``unknown`` fewer than
        ``unknown_error_retries`` times for this token), leaving the caller to retry it all: the
        tokens make that idempotent. On a ``refused`` error the rows are cut by message
        (``ORIGIN``) in halves, each half inserted under ``<token>/<first>-<last>`` (message indices),
        down to single messages, whose refusal is returned. The cuts depend only on the rows, so a
        retry after a crash makes the same inserts with the same tokens: the rows that were stored
        are stored once, and only the refused messages are left out.
        """
        if not len(batch):
            return []
        token = self._token(batch, token)
        pieces = blocks_within_partition_limit(batch)
        refused: list[Refusal] = []
        for i, piece in enumerate(pieces):
            piece_token = token if len(pieces) == 1 else f"{token}#{i}"
            try:
                self._insert(piece, piece_token)
                self._unknown_failures.pop(piece_token, None)
                continue
            except Exception as exc:
                if not self._gives_up(exc, piece_token):
                    raise
                origins = sorted(set(piece.origins() or ()))
                log.warning("%s: ClickHouse refused a batch of %d messages (%s); finding the refused ones",
                            batch.table, len(origins), describe_error(exc))
                if len(origins) < 2:
                    refused.extend(Refusal(o, batch.table, describe_error(exc)) for o in origins)
                    continue
            refused.extend(self._bisect(piece, piece_token, origins))
        return refused

    def _bisect(self, batch: ColumnBatch, token: str, origins: list[int]) -> list[Refusal]:
        refused: list[Refusal] = []
        stack = [origins[len(origins) // 2:], origins[:len(origins) // 2]]
        while stack:
            part = stack.pop()
            rows = batch.of_origins(part)
            try:
                self._insert(rows, f"{token}/{part[0]}-{part[-1]}")
            except Exception as exc:
                if error_kind(exc) == RETRY:
                    raise
                if len(part) == 1:
                    refused.append(Refusal(part[0], batch.table, describe_error(exc)))
                else:
                    stack += [part[len(part) // 2:], part[:len(part) // 2]]
        return refused

    def _gives_up(self, exc: BaseException, token: str) -> bool:
        """True when the failure is the rows' fault: refused, or unknown too often for this token."""
        kind = error_kind(exc)
        if kind == RETRY:
            return False
        if kind == UNKNOWN:
            failures = self._unknown_failures.get(token, 0) + 1
            self._unknown_failures[token] = failures
            self._unknown_failures.move_to_end(token)
            while len(self._unknown_failures) > 1000:
                self._unknown_failures.popitem(last=False)
            if failures < self.settings.unknown_error_retries:
                return False
        self._unknown_failures.pop(token, None)
        return True

    @staticmethod
    def _token(batch: ColumnBatch, token: str | None) -> str:
        if token is not None:
            return token
        if batch.source is None:
            raise ValueError(f"batch for {batch.table} has no source range to derive its token from")
        return batch.source.token(batch.table)

    def _divisors(self, table: str) -> dict[str, int]:
        """Column → divisor for this table's nanosecond columns held with less precision (cached)."""
        if not table.startswith("otel_"):  # otelpipe's own tables take the values as they are
            return {}
        if table not in self._time_divisors:
            rows = self.client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": self.database, "t": table}).result_rows
            self._time_divisors[table] = {name: d for name, typ in rows if name in NANOSECOND_COLUMNS
                                          and (d := nanosecond_divisor(typ)) != 1}
        return self._time_divisors[table]

    def _columns(self, batch: ColumnBatch) -> list[list[Any]]:
        divisors = self._divisors(batch.table)
        if not divisors:
            return batch.insert_columns()
        return [scaled(values, divisors.get(name, 1)) for name, values in zip(batch.column_names, batch.insert_columns())]

    def _insert(self, batch: ColumnBatch, token: str) -> None:
        self._send(f"{self.database}.{batch.table}", batch, insert_settings(self.settings, token))

    def _send(self, table: str, batch: ColumnBatch, settings: dict[str, Any] | None = None) -> None:
        """One INSERT of a batch: rows held natively go as the Native bytes the core encoded
        (``raw_insert``, the same statement and settings), unless the table keeps some of their
        times with less precision (then as Python columns, scaled)."""
        if isinstance(batch, NativeBatch) and not self._divisors(batch.table):
            self.client.raw_insert(table, batch.column_names, insert_block=batch.native_blocks(), settings=settings,
                                   fmt="Native")
            return
        self.client.insert(table, self._columns(batch), column_names=batch.column_names, column_oriented=True,
                           settings=settings)

    def write_missing(self, batch: ColumnBatch, token: str, stage_name: str = "") -> tuple[int, int]:
        """Insert only the rows whose RecordId the table lacks in the batch's time range.

        For replays and backfills, whose offsets differ from the first delivery: the batch goes to
        a staging table (Memory engine, same columns, so ClickHouse computes RecordId the same way),
        then ``INSERT ... SELECT`` takes the rows not already stored. Returns (inserted, skipped).
        ``stage_name`` makes the staging table this caller's own (``_replay_stage_<table>_<name>``),
        so replays running at once never truncate each other's; ``drop_stages`` removes them.
        """
        if not len(batch):
            return 0, 0
        column = PARTITION_TIME_COLUMN[batch.table]
        db, table = self.database, batch.table
        stage = f"{db}._replay_stage_{table}" + (f"_{stage_name}" if stage_name else "")
        inserted = skipped = 0
        for i, piece in enumerate(blocks_within_partition_limit(batch)):
            self.client.command(f"CREATE TABLE IF NOT EXISTS {stage} AS {db}.{table} ENGINE = Memory")
            self.client.command(f"TRUNCATE TABLE {stage}")
            self._send(stage, piece)
            if isinstance(piece, NativeBatch) and column == "Timestamp":
                lo, hi = piece.time_range()
            else:
                times = piece.columns[column]
                lo, hi = min(times), max(times)
            present = (f"SELECT RecordId FROM {db}.{table} WHERE {column} BETWEEN "
                       f"fromUnixTimestamp64Nano({{lo:Int64}}) AND fromUnixTimestamp64Nano({{hi:Int64}})")
            params = {"lo": lo, "hi": hi}
            dupes = self.client.query(f"SELECT count() FROM {stage} WHERE RecordId IN ({present})",
                                      parameters=params).result_rows[0][0]
            cols = ", ".join(f"`{name}`" for name in piece.column_names)
            self.client.command(
                f"INSERT INTO {db}.{table} ({cols}) SELECT {cols} FROM {stage} WHERE RecordId NOT IN ({present})",
                parameters=params,
                settings=insert_settings(self.settings, f"{token}#{i}"),
            )
            skipped += int(dupes)
            inserted += len(piece) - int(dupes)
        return inserted, skipped

    def drop_stages(self, stage_name: str) -> None:
        """Drop the staging tables ``write_missing`` made under ``stage_name``."""
        for table in PARTITION_TIME_COLUMN:
            self.client.command(f"DROP TABLE IF EXISTS {self.database}._replay_stage_{table}_{stage_name}")

    def recorded_ranges(self, starts: dict[tuple[str, int], int],
                        ends: dict[tuple[str, int], int] | None = None) -> dict[tuple[str, int], list[RecordedRange]]:
        """Ranges recorded (by any consumer group: the ledger names the data) that end at or after
        each partition's first offset and, with ``ends``, start at or before its last. The ledger is
        sorted by (Topic, Partition, LastOffset): the query reads only those ranges."""
        if not starts:
            return {}
        conditions, params = [], {}
        for i, ((topic, partition), offset) in enumerate(starts.items()):
            condition = f"(Topic = {{t{i}:String}} AND Partition = {{p{i}:UInt32}} AND LastOffset >= {{o{i}:UInt64}}"
            params.update({f"t{i}": topic, f"p{i}": partition, f"o{i}": max(offset, 0)})
            if ends is not None and (topic, partition) in ends:
                condition += f" AND FirstOffset <= {{e{i}:UInt64}}"
                params[f"e{i}"] = max(ends[(topic, partition)], 0)
            conditions.append(condition + ")")
        result = self.client.query(
            "SELECT Topic, Partition, FirstOffset, LastOffset, max(FirstHash), max(LastHash), "
            "toUnixTimestamp64Milli(min(RecordedAt)), argMin(InsertId, RecordedAt), argMin(InsertRanges, RecordedAt) "
            f"FROM {self.database}.{LEDGER_TABLE} "
            "WHERE " + " OR ".join(conditions) + " "
            "GROUP BY Topic, Partition, FirstOffset, LastOffset ORDER BY FirstOffset",
            parameters=params,
        )
        found: dict[tuple[str, int], list[RecordedRange]] = {}
        for topic, partition, first, last, first_hash, last_hash, at, insert_id, insert_ranges in result.result_rows:
            found.setdefault((topic, int(partition)), []).append(
                RecordedRange(int(first), int(last), int(first_hash), int(last_hash), int(at), str(insert_id),
                              int(insert_ranges)))
        return found

    def record_ranges(self, ranges: Sequence[SourceRange], hashes: Sequence[tuple[int, int]] | None = None,
                      insert_id: str = "") -> None:
        """Remember ranges (with fingerprints of their first and last message) before their rows are
        inserted, all under one insert when ``insert_id`` is given; a duplicate record is harmless."""
        if not ranges:
            return
        hashes = hashes or [(0, 0)] * len(ranges)
        count = len(ranges) if insert_id else 0
        self.client.insert(
            f"{self.database}.{LEDGER_TABLE}",
            [[r.topic, r.partition, r.first_offset, r.last_offset, h[0], h[1], self.consumer_group, insert_id, count]
             for r, h in zip(ranges, hashes)],
            column_names=["Topic", "Partition", "FirstOffset", "LastOffset", "FirstHash", "LastHash", "ConsumerGroup",
                          "InsertId", "InsertRanges"],
        )

    def now_ms(self) -> int:
        """ClickHouse's clock (the one ledger times are written with)."""
        return int(self.client.query("SELECT toUnixTimestamp64Milli(now64(3))").result_rows[0][0])

    def query(self, sql: str, parameters: dict[str, Any] | None = None, readonly: bool = True,
              limits: dict[str, Any] | None = None) -> Any:
        """``limits`` (max_execution_time, max_result_rows, ...) are set with ``readonly``, which
        then keeps the SQL itself from raising them."""
        settings = {**(limits or {}), **({"readonly": 1} if readonly else {})}
        return self.client.query(sql, parameters=parameters or {}, settings=settings)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing is best effort
            log.debug("closing the ClickHouse client failed", exc_info=True)
