"""Spans per CPU-second: the native span decoder against the Python one, from protobuf bytes to
what an insert sends.

On the throughput benchmark's messages (bench/throughput.py ``build_messages``: ~1008 spans per
OTLP protobuf message, ~10 attributes a span), in this process, no broker and no ClickHouse:

1. Python: ``decode_messages("traces", ...)`` (the protobuf library) and the batch's insert columns
   (``ColumnBatch.insert_columns()``, what the sink hands to ``client.insert``);
2. native: ``streams.otlp.native.decode_traces`` and ``NativeBlock.to_native()`` (the Native block
   ``client.raw_insert`` sends as it is);
3. for scale, 1 plus clickhouse-connect's own serialization of those columns into the Native
   format (the work ``client.insert`` does before sending; the server's side is not counted).

With ``--insert``, also into embedded ClickHouse (chDB on a fresh path in a temporary folder,
merges stopped): 1 then ``client.insert(..., column_oriented=True)``, against 2 then
``client.raw_insert(..., fmt="Native")``, each into a table of its own created from
schemas/clickhouse/tables/10_otel_traces.sql (chDB's threads count in this process's CPU time).

Each figure is the median of ``--repeat`` runs of CPU time (user+sys of this process).
Run: .venv/bin/python bench/native_decode.py [--messages 40] [--repeat 5] [--insert]
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import build_messages  # noqa: E402

from streams.otlp import native  # noqa: E402
from streams.otlp.batch import RawMessage  # noqa: E402
from streams.otlp.columns import TRACE_COLUMNS, TRACES_TABLE  # noqa: E402
from streams.otlp.decode import decode_messages  # noqa: E402


def cpu_seconds(work: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``work()`` (a collection first, so no run pays for another's garbage)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def table_types(table: str = TRACES_TABLE) -> dict[str, str]:
    """A table's column types as its DDL declares them (Nested columns as arrays), for the
    decoder's columns and those the stages add."""
    from sinks.migrations import targets
    from streams.config import ClickHouseSettings
    from streams.otlp.columns import TABLE_COLUMNS

    wanted = set(TABLE_COLUMNS[table]) | {"SampleWeight", "ServiceTeam", "ServiceTier", "ServiceOwner"}
    sql = next(t.sql for t in targets(ClickHouseSettings(database="otel"), True) if t.name == table)
    types: dict[str, str] = {}
    nested = None
    for line in sql.splitlines():
        words = line.strip().rstrip(",").split()
        if words and len(words[0]) > 2 and words[0][0] == words[0][-1] == "`":
            words[0] = words[0][1:-1]
        if len(words) >= 2 and words[1] == "Nested":
            nested = words[0]
        elif words and words[0].startswith(")"):
            nested = None
        elif len(words) >= 2:
            name = f"{nested}.{words[0]}" if nested else words[0]
            if name in wanted:
                typ = re.split(r" (?:CODEC|DEFAULT|MATERIALIZED|ALIAS|COMMENT)\b", " ".join(words[1:]))[0]
                types.setdefault(name, f"Array({typ})" if nested else typ)
    return types


def clickhouse_connect_serializer(table: str = TRACES_TABLE) -> Callable[[list, list[str]], bytes]:
    """clickhouse-connect's Native serialization of column-oriented data with the table's types."""
    from clickhouse_connect.datatypes.registry import get_from_name
    from clickhouse_connect.driver.insert import InsertContext
    from clickhouse_connect.driver.transform import NativeTransform

    types = {name: get_from_name(typ) for name, typ in table_types(table).items()}

    def serialize(columns: list, names: list[str]) -> bytes:
        context = InsertContext(table, names, [types[n] for n in names], columns, column_oriented=True)
        return b"".join(NativeTransform.build_insert(context))

    return serialize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40, help="messages of ~1008 spans (default 40)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the median counts (default 5)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--insert", action="store_true", help="also insert into chDB both ways")
    args = parser.parse_args(argv)
    if not native.available():
        print("streams.otlp._native is not built (pip install -e . with cargo available)", file=sys.stderr)
        return 2
    payloads, spans = build_messages(args.messages, args.seed)
    messages = [RawMessage("bench", 0, i, p) for i, p in enumerate(payloads)]
    names = list(TRACE_COLUMNS)
    serialize = clickhouse_connect_serializer()

    def python_columns():
        batch = decode_messages("traces", messages).batches[TRACES_TABLE]
        return batch.insert_columns(), batch.column_names

    def python_native():
        columns, column_names = python_columns()
        return serialize(columns, column_names)

    def native_block():
        return native.decode_traces(payloads).to_native(names)

    # the same rows both ways before timing anything
    block = native.decode_traces(payloads)
    assert not block.errors and block.rows == spans, (block.errors[:1], block.rows, spans)
    python_native()
    native_block()

    python_s = cpu_seconds(python_columns, args.repeat)
    native_s = cpu_seconds(native_block, args.repeat)
    decode_s = cpu_seconds(lambda: native.decode_traces(payloads), args.repeat)
    full_s = cpu_seconds(python_native, args.repeat)
    size = sum(len(p) for p in payloads)
    print(f"{args.messages} messages, {spans} spans, {size / 1e6:.1f} MB of protobuf; medians of {args.repeat} runs")
    rows = [
        ("Python decoder + insert columns", python_s),
        ("native decode_traces + to_native", native_s),
        ("  of which decode_traces", decode_s),
        ("Python decoder + clickhouse-connect Native serialization", full_s),
    ]
    for label, seconds in rows:
        print(f"{label:<58} {spans / seconds:>12,.0f} spans/CPU-s  {seconds * 1000:8.1f} ms")
    print(f"{'ratio native / Python (insert columns)':<58} {python_s / native_s:>12.2f}x")
    print(f"{'ratio native / Python (Native bytes both ways)':<58} {full_s / native_s:>12.2f}x")
    if args.insert:
        python_in, native_in = insert_seconds(payloads, messages, names, args.repeat)
        print(f"{'Python decoder + client.insert into chDB':<58} {spans / python_in:>12,.0f} spans/CPU-s  "
              f"{python_in * 1000:8.1f} ms")
        print(f"{'native decode + to_native + raw_insert into chDB':<58} {spans / native_in:>12,.0f} spans/CPU-s  "
              f"{native_in * 1000:8.1f} ms")
        print(f"{'ratio native / Python (inserted)':<58} {python_in / native_in:>12.2f}x")
    return 0


def insert_seconds(payloads: list[bytes], messages: list[RawMessage], names: list[str], repeat: int
                   ) -> tuple[float, float]:
    """CPU seconds to decode and insert the messages into chDB: the Python way, the native way."""
    import tempfile

    import clickhouse_connect

    from sinks.migrations import targets
    from streams.config import ClickHouseSettings

    with tempfile.TemporaryDirectory(prefix="otelpipe-bench-") as path:
        client = clickhouse_connect.get_client(interface="chdb", path=path)
        for db in ("bench_python", "bench_native"):
            client.command(f"CREATE DATABASE {db}")
            client.command(next(t.sql for t in targets(ClickHouseSettings(database=db), True)
                                if t.name == TRACES_TABLE))
            client.command(f"SYSTEM STOP MERGES {db}.{TRACES_TABLE}")

        def python_insert():
            batch = decode_messages("traces", messages).batches[TRACES_TABLE]
            client.insert(f"bench_python.{TRACES_TABLE}", batch.insert_columns(), column_names=batch.column_names,
                          column_oriented=True)

        def native_insert():
            block = native.decode_traces(payloads)
            client.raw_insert(f"bench_native.{TRACES_TABLE}", names, insert_block=block.to_native(names), fmt="Native")

        python_insert(), native_insert()  # warm up both paths
        result = cpu_seconds(python_insert, repeat), cpu_seconds(native_insert, repeat)
        counts = [client.query(f"SELECT count() FROM {db}.{TRACES_TABLE}").result_rows[0][0]
                  for db in ("bench_python", "bench_native")]
        assert counts[0] == counts[1], counts
        client.close()
        return result


if __name__ == "__main__":
    sys.exit(main())
