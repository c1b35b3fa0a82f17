"""Replays over the real broker into chDB: exactly one copy of each record, whatever was there."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from sinks.clickhouse import ClickHouseSink
from sinks.migrations import migrate
from streams.config import load_settings, with_changes
from streams.tools.kafka_admin import ensure_topics
from streams.otlp.encode import encode_request
from streams.replay import ReplaySummary, replay
from streams.tools.workload import Workload
from tests.otlp_builders import traces_request

DAY_NS = 86_400 * 10**9


@pytest.fixture
def topics(kafka_bootstrap):
    tag = uuid.uuid4().hex[:8]
    env = {"OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "OTELPIPE_KAFKA_PARTITIONS": "3",
           "OTELPIPE_KAFKA_SPANS_TOPIC": f"r{tag}_spans", "OTELPIPE_KAFKA_LOGS_TOPIC": f"r{tag}_logs",
           "OTELPIPE_KAFKA_METRICS_TOPIC": f"r{tag}_metrics"}
    settings = load_settings(env=env)
    names = settings.source_topics() + [settings.dlq_topic(t) for t in settings.source_topics()]
    asyncio.run(ensure_topics(kafka_bootstrap, names, 3))
    return settings


async def _produce(settings, items: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i, (topic, value) in enumerate(items):
            await producer.send_and_wait(topic, value, key=str(i % 7).encode())
    finally:
        await producer.stop()


def _workload(settings, steps: int, seed: int):
    workload = Workload(seed=seed, start_ns=time.time_ns() - 1800 * 10**9)
    topic = {"traces": settings.kafka.spans_topic, "logs": settings.kafka.logs_topic,
             "metrics": settings.kafka.metrics_topic}
    items = [(topic[s], encode_request(r, "otlp_proto")) for s, _, r in workload.requests(steps, 3)]
    asyncio.run(_produce(settings, items))
    return workload.summary


def _replay(settings, sink, signals=("traces", "logs", "metrics"), **kwargs) -> ReplaySummary:
    """The same range each time, written as a user would: '1h' ago to 'now'."""
    now_ms = int(time.time() * 1000)
    return asyncio.run(replay(settings, sink, list(signals), now_ms - 3_600_000, now_ms + 60_000,
                              out=io.StringIO(), range_text=("1h", "now"), **kwargs))


def _count(client, db, table, distinct=None):
    expr = f"uniqExact({distinct})" if distinct else "count()"
    return client.query(f"SELECT {expr} FROM {db}.{table}").result_rows[0][0]


def test_replaying_twice_and_over_existing_data_leaves_one_copy(topics, chdb_client, ch_settings):
    summary = _workload(topics, 30, seed=3)
    sink = ClickHouseSink(chdb_client, ch_settings, "replay-test")
    settings = with_changes(topics, clickhouse=ch_settings)

    # A first, partial pass: only partition 0 (as if a backfill had been cut short).
    partial = _replay(settings, sink, partitions=[0])
    spans_after_partial = _count(chdb_client, ch_settings.database, "otel_traces")
    assert 0 < spans_after_partial < summary.spans and partial.finished

    full = _replay(settings, sink)  # overlaps what partition 0 wrote
    assert full.skipped == partial.written and full.written + partial.written == \
        summary.spans + summary.logs + sum(summary.metric_points.values())
    assert _count(chdb_client, ch_settings.database, "otel_traces") == summary.spans
    assert _count(chdb_client, ch_settings.database, "otel_traces", "TraceId, SpanId") == summary.spans
    assert _count(chdb_client, ch_settings.database, "otel_logs") == summary.logs
    for kind, points in summary.metric_points.items():
        assert _count(chdb_client, ch_settings.database, f"otel_metrics_{kind}") == points

    # The same command again: it finished, so it resumes at its end and reads nothing.
    again = _replay(settings, sink)
    assert again.read == 0 and again.finished
    # Another range covering the same messages: everything read, nothing written twice.
    now_ms = int(time.time() * 1000)
    other = asyncio.run(replay(settings, sink, ["traces"], now_ms - 7_200_000, now_ms + 120_000, out=io.StringIO(),
                               range_text=("2h", "now")))
    assert other.read > 0 and other.written == 0 and other.skipped == summary.spans
    assert _count(chdb_client, ch_settings.database, "otel_traces") == summary.spans
    rollup = chdb_client.query(f"SELECT sum(Spans) FROM {ch_settings.database}.otel_traces_rollup_1m").result_rows
    assert rollup[0][0] == summary.spans


def test_a_stopped_replay_resumes_where_it_stopped(topics, chdb_client, ch_settings):
    summary = _workload(topics, 40, seed=4)
    sink = ClickHouseSink(chdb_client, ch_settings, "replay-test")
    settings = with_changes(topics, clickhouse=ch_settings)
    batches = {"n": 0}

    def stop_after_three_batches() -> bool:
        batches["n"] += 1
        return batches["n"] > 3

    first = _replay(settings, sink, signals=["traces"], batch_messages=5, should_stop=stop_after_three_batches)
    assert not first.finished and 0 < first.read < summary.messages["traces"]
    second = _replay(settings, sink, signals=["traces"], batch_messages=5)
    assert second.finished
    assert first.read + second.read <= summary.messages["traces"] + 5  # at most one batch read again
    assert _count(chdb_client, ch_settings.database, "otel_traces") == summary.spans


def test_a_replay_spanning_many_days_is_cut_into_legal_insert_blocks(topics, chdb_client, ch_settings):
    request = traces_request(150)
    now = time.time_ns()
    for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        span.start_time_unix_nano = now - i * DAY_NS  # 150 days, more than one insert block may touch
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
        span.span_id = (i + 1).to_bytes(8, "big")
    asyncio.run(_produce(topics, [(topics.kafka.spans_topic, request.SerializeToString())]))
    sink = ClickHouseSink(chdb_client, ch_settings, "replay-test")
    settings = with_changes(topics, clickhouse=ch_settings)
    result = _replay(settings, sink, signals=["traces"])
    assert result.written == 150
    assert _count(chdb_client, ch_settings.database, "otel_traces") == 150
    parts = chdb_client.query(f"SELECT uniqExact(partition) FROM system.parts WHERE database = "
                              f"'{ch_settings.database}' AND table = 'otel_traces' AND active").result_rows[0][0]
    assert parts == 150


def test_replay_into_another_database(topics, chdb_client, ch_settings):
    summary = _workload(topics, 10, seed=8)
    target = with_changes(ch_settings, database=ch_settings.database + "_backfill")
    migrate(chdb_client, target)
    try:
        sink = ClickHouseSink(chdb_client, target, "replay-test")
        result = _replay(with_changes(topics, clickhouse=target), sink, signals=["traces"])
        assert result.written == summary.spans
        assert _count(chdb_client, target.database, "otel_traces") == summary.spans
        assert _count(chdb_client, ch_settings.database, "otel_traces") == 0
    finally:
        chdb_client.command(f"DROP DATABASE IF EXISTS {target.database} SYNC")


def test_a_replay_samples_with_the_rates_the_workers_apply_now(topics, chdb_client, ch_settings):
    from streams.cli.control import send_signed

    summary = _workload(topics, 20, seed=6)
    control = f"r{uuid.uuid4().hex[:8]}.sampling"
    settings = with_changes(topics, clickhouse=ch_settings,
                            sampling=with_changes(topics.sampling, control_topic=control),
                            control=with_changes(topics.control, key="replay-test-control-key-0123"))

    async def override() -> None:  # what `otelpipe sampling set '*' ...` publishes, and one nobody signed
        producer = AIOKafkaProducer(bootstrap_servers=topics.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(control, b"1", key=b"*")
        finally:
            await producer.stop()

    asyncio.run(ensure_topics(topics.kafka.bootstrap_servers, [control], 1))
    asyncio.run(send_signed(settings, control, [(b"*", b"0.01")]))
    asyncio.run(override())  # unsigned: the replay, like the workers, keeps 0.01
    sink = ClickHouseSink(chdb_client, ch_settings, "replay-test")
    done = _replay(settings, sink, signals=["traces"])
    assert done.finished and 0 <= done.written < summary.spans / 5, (done.written, summary.spans)


def test_two_replays_at_once_leave_one_copy(topics, chdb_client, ch_settings):
    summary = _workload(topics, 20, seed=8)
    settings = with_changes(topics, clickhouse=ch_settings)
    now_ms = int(time.time() * 1000)

    async def both() -> list[ReplaySummary]:
        runs = [replay(settings, ClickHouseSink(chdb_client, ch_settings, "replay-test"), ["traces"],
                       now_ms - hours * 3_600_000, now_ms + 60_000, out=io.StringIO(), batch_messages=3,
                       range_text=(f"{hours}h", "now")) for hours in (1, 2)]
        return list(await asyncio.gather(*runs))

    first, second = asyncio.run(both())
    assert first.finished and second.finished
    assert first.written + second.written == summary.spans
    assert _count(chdb_client, ch_settings.database, "otel_traces") == summary.spans
    assert _count(chdb_client, ch_settings.database, "otel_traces", "TraceId, SpanId") == summary.spans
    stages = chdb_client.query(f"SELECT count() FROM system.tables WHERE database = '{ch_settings.database}' "
                               "AND name LIKE '_replay_stage_%'").result_rows[0][0]
    assert stages == 0, "each replay dropped its own staging tables"
