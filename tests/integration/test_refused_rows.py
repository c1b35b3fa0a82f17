"""Rows ClickHouse refuses: the insert is cut in halves down to the refused messages, which become
dead letters; every other row is stored exactly once, also when the same batch is written again."""

from __future__ import annotations

from typing import Sequence

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sinks.clickhouse import ClickHouseSink
from streams.agents.signal_writer import SignalWriter, write_refusing
from streams.otlp.batch import ORIGIN, ColumnBatch, DecodeResult, RawMessage, SourceRange
from streams.otlp.encode import encode_request
from streams.stages.pipeline import Stages
from tests.otlp_builders import logs_request


class CorruptingStages(Stages):
    """The worker's stages, then a fault that makes some messages' rows unstorable (a value out of
    its column's range), as a stage bug or a value the decoder let through would."""

    def __init__(self, bad_offsets: set[int]):
        super().__init__(lambda topic: "otlp_proto", 1 << 20, None)
        self.bad_offsets = bad_offsets

    def run(self, signal: str, messages: Sequence[RawMessage]) -> DecodeResult:
        result = super().run(signal, messages)
        batch = result.batches.get("otel_logs")
        if batch is not None:
            severity = list(batch.columns["SeverityNumber"])
            for i, origin in enumerate(batch.columns[ORIGIN]):
                if messages[origin].offset in self.bad_offsets:
                    severity[i] = 300  # SeverityNumber is UInt8
            # a stage's output is a new batch (a natively held one is read-only)
            result.batches["otel_logs"] = ColumnBatch("otel_logs", {**batch.columns, "SeverityNumber": severity},
                                                      batch.source)
        return result


def log_messages(first: int, last: int) -> list[RawMessage]:
    return [RawMessage("logs", 0, o, encode_request(logs_request([AnyValue(string_value=f"m{o}.{i}") for i in range(3)]), "otlp_proto")) for o in range(first, last + 1)]


def stored_logs(client, settings) -> int:
    return client.query(f"SELECT count() FROM {settings.database}.otel_logs").result_rows[0][0]


@pytest.mark.parametrize("bad", [{4}, {0, 9}, {1, 2, 3, 4, 5, 6, 7, 8}, set(range(10))])
def test_refused_messages_are_dead_letters_and_the_rest_stored_once(chdb_client, ch_settings, bad):
    def attempt() -> object:
        writer = SignalWriter("logs", ClickHouseSink(chdb_client, ch_settings, "g"), lambda t: "otlp_proto", 1 << 20,
                              CorruptingStages(bad))
        return writer.write(log_messages(0, 9))

    outcome = attempt()
    assert sorted(d.message.offset for d in outcome.dead_letters) == sorted(bad)
    assert {d.reason for d in outcome.dead_letters} <= {"refused_by_clickhouse"}
    assert all("otel_logs: DataError" in d.detail for d in outcome.dead_letters)
    assert [m.offset for m in outcome.done] == list(range(10))  # refused ones are acked after their letter
    assert outcome.rows.get("otel_logs", 0) == 3 * (10 - len(bad))
    assert stored_logs(chdb_client, ch_settings) == 3 * (10 - len(bad))

    again = attempt()  # the worker died before acking: the same messages, the same cuts, the same tokens
    assert sorted(d.message.offset for d in again.dead_letters) == sorted(bad)
    assert stored_logs(chdb_client, ch_settings) == 3 * (10 - len(bad))
    stored_severities = chdb_client.query(
        f"SELECT DISTINCT SeverityNumber FROM {ch_settings.database}.otel_logs").result_rows
    assert all(row[0] <= 24 for row in stored_severities)


def test_a_message_refused_in_one_table_is_left_out_of_the_tables_after_it(chdb_client, ch_settings):
    sink = ClickHouseSink(chdb_client, ch_settings, "g")
    good = {"Timestamp": [1_700_000_000 * 10**9] * 3, "SeverityNumber": [9, 300, 9], "Body": ["a", "b", "c"],
            ORIGIN: [0, 1, 2]}
    after = {"Timestamp": [1_700_000_000 * 10**9] * 3, "SeverityNumber": [9, 9, 9], "Body": ["x", "y", "z"],
             ORIGIN: [0, 1, 2]}
    chdb_client.command(f"CREATE TABLE IF NOT EXISTS {ch_settings.database}.second_logs AS "
                        f"{ch_settings.database}.otel_logs")
    written = write_refusing(sink, {"otel_logs": ColumnBatch("otel_logs", good),
                                    "second_logs": ColumnBatch("second_logs", after)},
                             SourceRange("logs", 0, 0, 2))
    assert list(written.refused) == [1]
    assert written.rows == {"otel_logs": 2, "second_logs": 2}
    bodies = chdb_client.query(f"SELECT Body FROM {ch_settings.database}.second_logs ORDER BY Body").result_rows
    assert [b for (b,) in bodies] == ["x", "z"]
    letters = written.letters([RawMessage("logs", 0, o, b"") for o in range(3)])
    assert [(d.message.offset, d.reason) for d in letters] == [(1, "refused_by_clickhouse")]
