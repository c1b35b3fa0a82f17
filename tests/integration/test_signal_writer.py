"""Exactly-once rows across crashes and re-batching: SignalWriter over the real chDB engine."""

import pytest

from sinks.clickhouse import ClickHouseSink
from streams.otlp.batch import RawMessage
from streams.otlp.encode import encode_request
from streams.agents.signal_writer import SignalWriter
from tests.otlp_builders import traces_request


def messages(first: int, last: int, partition: int = 0) -> list[RawMessage]:
    return [RawMessage("spans", partition, o, encode_request(traces_request(2), "otlp_proto"))
            for o in range(first, last + 1)]


def distinct_messages(first: int, last: int, partition: int = 0) -> list[RawMessage]:
    """Messages whose spans are each their own (trace id from the partition and offset), as traffic is."""
    out = []
    for o in range(first, last + 1):
        request = traces_request(2)
        for span in request.resource_spans[0].scope_spans[0].spans:
            span.trace_id = bytes([partition]) + o.to_bytes(15, "big")
        out.append(RawMessage("spans", partition, o, encode_request(request, "otlp_proto")))
    return out


def writer(chdb_client, ch_settings, group="g", grace_ms=None) -> SignalWriter:
    sink = ClickHouseSink(chdb_client, ch_settings, group)
    w = SignalWriter("traces", sink, lambda topic: "otlp_proto", 1 << 20)
    if grace_ms is not None:
        w.grace_ms = grace_ms
    return w


def count(chdb_client, ch_settings) -> int:
    return chdb_client.query(f"SELECT count() FROM {ch_settings.database}.otel_traces").result_rows[0][0]


def test_batch_written_once_and_acked(chdb_client, ch_settings):
    w = writer(chdb_client, ch_settings)
    outcome = w.write(messages(0, 9))
    assert [m.offset for m in outcome.done] == list(range(10))
    assert outcome.rows == {"otel_traces": 20}
    assert count(chdb_client, ch_settings) == 20


def test_redelivery_in_a_larger_batch_after_a_crash(chdb_client, ch_settings):
    writer(chdb_client, ch_settings).write(messages(0, 9))  # inserted, then the worker died before committing
    fresh = writer(chdb_client, ch_settings)  # the restarted worker re-reads from offset 0, in one bigger batch
    outcome = fresh.write(messages(0, 14))
    assert len(outcome.done) == 15
    assert count(chdb_client, ch_settings) == 30  # 15 messages x 2 spans, nothing twice


def test_redelivery_in_smaller_batches_is_held_then_completed(chdb_client, ch_settings):
    writer(chdb_client, ch_settings).write(messages(0, 9))
    fresh = writer(chdb_client, ch_settings)
    first = fresh.write(messages(0, 4))  # only part of the recorded range [0, 9]
    assert first.done == [] and first.held == 5
    second = fresh.write(messages(5, 12))
    assert [m.offset for m in second.done] == list(range(13))
    assert count(chdb_client, ch_settings) == 26


def test_crash_between_ledger_and_insert_still_inserts(chdb_client, ch_settings):
    from streams.otlp.batch import SourceRange

    sink = ClickHouseSink(chdb_client, ch_settings, "g")
    sink.record_ranges([SourceRange("spans", 0, 0, 9)])  # recorded, then the worker died before inserting
    outcome = writer(chdb_client, ch_settings).write(messages(0, 9))
    assert len(outcome.done) == 10 and count(chdb_client, ch_settings) == 20


def test_retry_after_a_failed_insert_does_not_duplicate(chdb_client, ch_settings):
    w = writer(chdb_client, ch_settings)
    real_write = w.sink.write_isolating
    calls = {"n": 0}

    def flaky(batch, token=None):
        calls["n"] += 1
        refused = real_write(batch, token)
        if calls["n"] == 1:
            raise ConnectionError("connection reset after the insert landed")
        return refused

    w.sink.write_isolating = flaky
    with pytest.raises(ConnectionError):
        w.write(messages(0, 4))
    outcome = w.write(messages(0, 4))  # the agent retries the same messages
    assert len(outcome.done) == 5
    assert count(chdb_client, ch_settings) == 10


def test_partitions_are_independent_and_tokens_name_the_data_not_the_group(chdb_client, ch_settings):
    w = writer(chdb_client, ch_settings)
    w.write(messages(0, 4, partition=0) + messages(0, 4, partition=1))
    assert count(chdb_client, ch_settings) == 20
    # Another consumer group re-reading the same messages cuts them at the same recorded ranges and
    # makes the same insert: the same messages are stored once, whoever reads them.
    other_group = writer(chdb_client, ch_settings, group="replay")
    outcome = other_group.write(messages(0, 4, partition=1) + messages(0, 4, partition=0))
    assert len(outcome.done) == 10
    assert count(chdb_client, ch_settings) == 20
    # Only one of the partitions: held while the first writer could still be inserting, then only the
    # rows the table lacks (none) are inserted.
    alone = writer(chdb_client, ch_settings, group="alone")
    held = alone.write(messages(0, 4, partition=0))
    assert held.done == [] and held.held == 5
    alone.grace_ms = 0
    outcome = alone.write([])
    assert len(outcome.done) == 5 and count(chdb_client, ch_settings) == 20


def inserts(chdb_client, ch_settings) -> list[tuple[str, int]]:
    """(table, rows) of every insert block that reached the tables, from the parts' names."""
    return chdb_client.query(
        "SELECT table, sum(rows) FROM system.parts WHERE database = {db:String} AND table = 'otel_traces' "
        "GROUP BY table, min_block_number ORDER BY min_block_number", parameters={"db": ch_settings.database}
    ).result_rows


def test_one_insert_per_table_for_a_batch_across_partitions(chdb_client, ch_settings):
    w = writer(chdb_client, ch_settings)
    w.write(messages(0, 2, partition=0) + messages(0, 2, partition=1) + messages(0, 2, partition=2))
    assert inserts(chdb_client, ch_settings) == [("otel_traces", 18)]
    ledger = chdb_client.query(f"SELECT Partition, InsertRanges, uniqExact(InsertId) OVER () FROM "
                               f"{ch_settings.database}.otelpipe_sink_ledger ORDER BY Partition").result_rows
    assert ledger == [(0, 3, 1), (1, 3, 1), (2, 3, 1)]


@pytest.mark.parametrize("landed", [True, False])
def test_an_insert_split_by_a_rebalance_is_written_once(chdb_client, ch_settings, landed):
    """A batch of two partitions was recorded (and its insert landed, or not) when the worker died;
    the partitions then went to two workers, each writing only the rows the table lacks."""
    first = writer(chdb_client, ch_settings)
    if not landed:
        first.sink.write_isolating = lambda batch, token=None: (_ for _ in ()).throw(ConnectionError("died"))
    try:
        first.write(distinct_messages(0, 3, partition=0) + distinct_messages(0, 3, partition=1))
    except ConnectionError:
        pass
    assert count(chdb_client, ch_settings) == (16 if landed else 0)
    a, b = writer(chdb_client, ch_settings, grace_ms=0), writer(chdb_client, ch_settings, grace_ms=0)
    out_a = a.write(distinct_messages(0, 5, partition=0))
    out_b = b.write(distinct_messages(0, 3, partition=1))
    assert len(out_a.done) == 6 and len(out_b.done) == 4
    assert count(chdb_client, ch_settings) == 20
    assert chdb_client.query(f"SELECT count() - uniqExact(RecordId) FROM {ch_settings.database}.otel_traces"
                             ).result_rows == [(0,)]


def test_dead_letters_are_returned_and_acked(chdb_client, ch_settings):
    msgs = messages(0, 2)
    msgs[1] = RawMessage("spans", 0, 1, b"\x00garbage")
    outcome = writer(chdb_client, ch_settings).write(msgs)
    assert [d.message.offset for d in outcome.dead_letters] == [1]
    assert len(outcome.done) == 3 and count(chdb_client, ch_settings) == 4


def test_naming_violations_are_stored_once_and_rejected_points_are_not(chdb_client, ch_settings):
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from streams.stages.labels import LabelStage
    from streams.stages.pipeline import Stages
    from streams.stages.label_policy import parse_policy

    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "shop"
    sm = rm.scope_metrics.add()
    for name in ("orders.created_total", "Orders-Failed"):
        metric = sm.metrics.add(name=name)
        metric.gauge.data_points.add(time_unix_nano=1_700_000_000_000_000_000, as_double=1.0)
    stages = Stages(lambda topic: "otlp_proto", 1 << 20,
                    LabelStage(parse_policy({"naming": {"action": "reject"}})))
    sink = ClickHouseSink(chdb_client, ch_settings, "g")
    writer = SignalWriter("metrics", sink, lambda t: "otlp_proto", 1 << 20, stages)
    payload = request.SerializeToString()
    for first in (0, 1):  # the same message twice (another offset): the violation is stored once
        writer.write([RawMessage("metrics", 0, first, payload)])
    db = ch_settings.database
    assert chdb_client.query(f"SELECT MetricName FROM {db}.otel_metrics_gauge").result_rows == \
        [("orders.created_total",), ("orders.created_total",)]
    rows = chdb_client.query(f"SELECT Service, MetricName, Rule, Action FROM {db}.otelpipe_violations FINAL "
                             "ORDER BY Rule").result_rows
    assert rows == [("shop", "Orders-Failed", "characters", "reject"), ("shop", "Orders-Failed", "lowercase", "reject")]


def test_ranges_of_a_recreated_topic_do_not_hold_new_messages(chdb_client, ch_settings):
    writer(chdb_client, ch_settings).write(messages(0, 9))  # the old topic's messages, recorded
    # The topic is deleted and created again: offsets restart at 0 with other messages.
    fresh = [RawMessage("spans", 0, o, encode_request(traces_request(3), "otlp_proto")) for o in range(5)]
    outcome = writer(chdb_client, ch_settings).write(fresh)
    assert len(outcome.done) == 5 and outcome.held == 0
    assert count(chdb_client, ch_settings) == 20 + 15
    # Exactly the old range's offsets, other messages: another token, so ClickHouse keeps them.
    again = [RawMessage("spans", 1, o, encode_request(traces_request(1), "otlp_proto")) for o in range(10)]
    writer(chdb_client, ch_settings).write(messages(0, 9, partition=1))
    writer(chdb_client, ch_settings).write(again)
    assert count(chdb_client, ch_settings) == 35 + 20 + 10


def test_a_second_consumer_group_cutting_batches_otherwise_writes_nothing_twice(chdb_client, ch_settings):
    writer(chdb_client, ch_settings, group="blue").write(messages(0, 9))
    green = writer(chdb_client, ch_settings, group="green")  # another app id over the same topic
    first = green.write(messages(0, 4))
    assert first.done == [] and first.held == 5  # blue's range [0, 9] holds them
    second = green.write(messages(5, 12))
    assert len(second.done) == 13
    assert count(chdb_client, ch_settings) == 26


def test_a_producer_clock_an_hour_fast_does_not_make_recorded_ranges_stale(chdb_client, ch_settings):
    import time

    hour_ahead = int(time.time() * 1000) + 3_600_000

    def stamped(first: int, last: int) -> list[RawMessage]:
        return [RawMessage(m.topic, m.partition, m.offset, m.value, timestamp_ms=hour_ahead + m.offset)
                for m in messages(first, last)]

    writer(chdb_client, ch_settings).write(stamped(0, 9))  # inserted; the worker died before committing
    fresh = writer(chdb_client, ch_settings)
    assert fresh.write(stamped(0, 3)).held == 4  # re-delivered in other cuts: held, not re-written
    assert len(fresh.write(stamped(4, 14)).done) == 15
    assert count(chdb_client, ch_settings) == 30


def test_a_recorded_range_past_the_partition_end_is_stale(chdb_client, ch_settings):
    from streams.otlp.batch import SourceRange

    sink = ClickHouseSink(chdb_client, ch_settings, "g")
    sink.record_ranges([SourceRange("spans", 0, 0, 50)], [(0, 0)])  # a wiped broker's old range
    w = SignalWriter("traces", sink, lambda topic: "otlp_proto", 1 << 20, end_offset=lambda t, p: 10)
    outcome = w.write(messages(0, 9))
    assert len(outcome.done) == 10 and outcome.held == 0
    assert count(chdb_client, ch_settings) == 20


def test_held_messages_of_a_revoked_partition_are_released_unacked(chdb_client, ch_settings):
    writer(chdb_client, ch_settings).write(messages(0, 9))  # recorded [0, 9]; the worker died
    held: set = {("spans", 0)}
    fresh = SignalWriter("traces", ClickHouseSink(chdb_client, ch_settings, "g"), lambda t: "otlp_proto", 1 << 20,
                         owns=lambda topic, partition: (topic, partition) in held)
    assert fresh.write(messages(0, 4)).held == 5
    held.clear()  # a rebalance took partition 0 away
    outcome = fresh.write([])
    assert outcome.held == 0 and outcome.done == [] and fresh.held_count() == 0
    late = fresh.write(messages(5, 9))  # fetched before the revoke, handed over after it
    assert late.done == [] and late.held == 0
    assert count(chdb_client, ch_settings) == 20  # nothing written for the partition it lost


def test_two_writers_cutting_the_same_messages_at_the_same_moment_write_them_once(chdb_client, ch_settings):
    """A revoke landing mid-write, or two consumer groups at once: writer A has read the ledger
    but not yet recorded its cut when writer B reads, records and inserts another cut."""
    import pytest

    from sinks.write_plan import LedgerConflict

    b = writer(chdb_client, ch_settings, group="other")
    a = writer(chdb_client, ch_settings)
    record = a.sink.record_ranges

    def b_gets_there_first(ranges, hashes=None, **kwargs):
        b.write(messages(0, 4))  # B's cut: [0, 4]
        a.sink.record_ranges = record
        record(ranges, hashes, **kwargs)  # then A's: [0, 9]

    a.sink.record_ranges = b_gets_there_first
    with pytest.raises(LedgerConflict):
        a.write(messages(0, 9))
    assert count(chdb_client, ch_settings) == 10  # only B's cut was inserted
    outcome = a.write(messages(0, 9))  # the retry plans against B's cut, which stands
    assert len(outcome.done) == 10
    assert count(chdb_client, ch_settings) == 20
    assert len(b.write(messages(5, 9)).done) == 5  # and B, going on, cuts as A did
    assert count(chdb_client, ch_settings) == 20
