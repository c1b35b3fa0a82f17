"""Rows held natively (NativeBatch) through the sink into chDB: the rows the Python batch makes.

The same messages through the native and the Python stages, each written by ``ClickHouseSink`` into
a database of its own: every stored column equal (RecordId included, so ClickHouse computed the
same ids). An insert of several blocks (a batch across partitions) stores them all; the same token
twice stores once; ``write_missing`` (replays) skips what is stored; a refused insert is cut by
message through the Python columns; a table that keeps times with less precision gets them scaled.
"""

from __future__ import annotations

import uuid

import pytest

from sinks.clickhouse import ClickHouseSink
from sinks.migrations import migrate
from streams.config import ClickHouseSettings
from streams.otlp.batch import ColumnBatch, RawMessage, SourceRange, concat
from streams.otlp.native import NativeBatch
from streams.stages.catalog import CatalogEntry, CatalogStage
from streams.stages.label_policy import LabelPolicy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.sampling import HeadRates, HeadSampler
from streams.tools.workload import Workload

ROWS = "SELECT * EXCEPT (RecordId), toString(RecordId) FROM {db}.otel_traces ORDER BY SpanId, Timestamp"


def payloads(seed: int, messages: int = 4) -> list[bytes]:
    return [r.SerializeToString() for signal, _, r in Workload(seed=seed, distinct_values=True).requests(messages)
            if signal == "traces"]


def run(native_spans: bool, data: list[bytes], offset: int = 0):
    stages = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, LabelStage(LabelPolicy()),
                    CatalogStage({"checkout": CatalogEntry("checkout", "payments", "1", "ana")}),
                    head=HeadSampler(HeadRates(0.5)), native_spans=native_spans)
    messages = [RawMessage("spans", 0, offset + i, p) for i, p in enumerate(data)]
    return stages.run("traces", messages).batches["otel_traces"]


@pytest.fixture
def databases(chdb_client):
    made = []

    def make() -> ClickHouseSink:
        settings = ClickHouseSettings(database=f"t_{uuid.uuid4().hex[:12]}")
        migrate(chdb_client, settings)
        made.append(settings.database)
        return ClickHouseSink(chdb_client, settings, "test")

    yield make
    for db in made:
        chdb_client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


def stored(sink: ClickHouseSink) -> list[tuple]:
    return sink.client.query(ROWS.format(db=sink.database)).result_rows


def test_native_rows_are_the_python_rows(databases):
    data = payloads(1)
    native_batch, python_batch = run(True, data), run(False, data)
    assert isinstance(native_batch, NativeBatch) and not isinstance(python_batch, NativeBatch)
    a, b = databases(), databases()
    source = SourceRange("spans", 0, 0, len(data) - 1)
    assert a.write(native_batch.with_source(source)) == b.write(python_batch.with_source(source)) == len(python_batch)
    rows = stored(a)
    assert rows == stored(b) and len(rows) == len(python_batch)


def test_several_blocks_in_one_insert_and_the_same_token_twice(databases):
    first, second = payloads(2), payloads(3)
    batch = concat([run(True, first), run(True, second, offset=len(first)).shifted(len(first))])
    assert isinstance(batch, NativeBatch) and len(batch.parts) == 2
    sink = databases()
    sink.write(batch, "otel_traces:several")
    sink.write(batch, "otel_traces:several")  # a retry: ClickHouse drops the repeated blocks
    expected = databases()
    expected.write(concat([run(False, first), run(False, second, offset=len(first)).shifted(len(first))]), "x")
    assert stored(sink) == stored(expected)
    assert batch.origins() == expected_origins(first, second)


def expected_origins(first: list[bytes], second: list[bytes]) -> list[int]:
    return run(False, first).columns["_origin"] + [o + len(first) for o in run(False, second).columns["_origin"]]


def test_write_missing_skips_what_is_stored(databases):
    data = payloads(4)
    sink = databases()
    sink.write(run(True, data[:2]), "otel_traces:first")
    inserted, skipped = sink.write_missing(run(True, data), "otel_traces:replay", stage_name="t")
    sink.drop_stages("t")
    total = len(run(False, data))
    assert skipped == len(run(False, data[:2])) and inserted == total - skipped
    assert len(stored(sink)) == total


def test_a_refused_insert_is_cut_through_the_python_columns(databases, monkeypatch):
    """The first insert of the whole batch fails as refused: halves go in as Python columns."""
    data = payloads(5)
    sink = databases()
    sink.settings = sink.settings.model_copy(update={"unknown_error_retries": 1})
    calls = {"raw": 0}
    raw_insert = sink.client.raw_insert

    def refuse_once(*args, **kwargs):
        calls["raw"] += 1
        if calls["raw"] == 1:
            raise ValueError("refused")
        return raw_insert(*args, **kwargs)

    monkeypatch.setattr(sink.client, "raw_insert", refuse_once)
    assert sink.write_isolating(run(True, data), "otel_traces:refused") == []
    monkeypatch.undo()
    expected = databases()
    expected.write(run(False, data), "x")
    assert stored(sink) == stored(expected)


def test_native_and_python_cuts_of_one_table_merge_into_one_insert():
    """A batch whose cuts took both paths (a JSON message among protobuf ones): one otel_traces."""
    from streams.agents.signal_writer import merge_parts

    first, second = payloads(6, messages=2), payloads(7, messages=2)

    def result(native_spans: bool, data: list[bytes]):
        stages = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, None, native_spans=native_spans)
        messages = [RawMessage("spans", 0, i, p) for i, p in enumerate(data)]
        return messages, stages.run("traces", messages)

    mixed_run, mixed = merge_parts([result(True, first), result(False, second)])
    python_run, python = merge_parts([result(False, first), result(False, second)])
    assert list(mixed) == list(python) == ["otel_traces"]
    assert mixed["otel_traces"].columns == python["otel_traces"].columns
    native_run, native_only = merge_parts([result(True, first), result(True, second)])
    assert isinstance(native_only["otel_traces"], NativeBatch)
    assert native_only["otel_traces"].columns == python["otel_traces"].columns


def test_a_native_batchs_columns_are_read_only():
    """Its rows go to ClickHouse as the blocks' Native bytes: a column set on its Python view would
    be lost, so setting one fails (a stage that changes rows makes a new ColumnBatch)."""
    stages = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, None)
    batch = stages.run("traces", [RawMessage("spans", 0, i, p) for i, p in enumerate(payloads(3, messages=1))])
    native_batch = batch.batches["otel_traces"]
    assert isinstance(native_batch, NativeBatch)
    with pytest.raises(TypeError):
        native_batch.columns["SpanName"] = ["x"] * len(native_batch)
    changed = ColumnBatch("otel_traces", {**native_batch.columns, "SpanName": ["x"] * len(native_batch)})
    assert set(changed.columns["SpanName"]) == {"x"} and len(changed) == len(native_batch)
