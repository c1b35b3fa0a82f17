"""Faults with backpressure instead of loss: ClickHouse unreachable, the broker restarting, poison
at volume. Each test produces a known workload and asserts exact row counts and distinct ids.

With OTELPIPE_FAULT_REPORT=FILE set, each test appends its figures (fault, produced, stored, lost,
duplicated) as a JSON line; `bench/fault_report.py` runs these tests and prints the table.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from streams.tools.local_kafka import LocalBroker
from streams.config import load_settings
from streams.otlp.encode import encode_request
from streams.tools.producer import produce_workload
from tests.conftest import fault_report as report
from tests.conftest import free_port
from tests.integration.test_pipeline import _read_all
from tests.otlp_builders import traces_request

SPANS = "SELECT count() FROM {db}.otel_traces"
DISTINCT_SPANS = "SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces"


def test_clickhouse_unreachable_then_back_loses_nothing(worker_factory):
    worker = worker_factory(OTELPIPE_CLICKHOUSE_DSN=f"http://default:secret@127.0.0.1:{free_port()}/otel")
    worker.start(ready="metrics")
    summary = asyncio.run(produce_workload(worker.settings, messages=40, traces_per_message=3, seed=21))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        retries = worker.metric('otelpipe_write_retries_total{signal="traces"}') or 0
        if retries >= 3 and worker.metric('otelpipe_writer_blocked{signal="traces"}') == 1:
            break
        time.sleep(0.5)
    assert retries >= 3, "the worker should keep retrying while ClickHouse is away"
    assert worker.proc.poll() is None, "and keep running"
    # More data while blocked: the worker takes none of it, so its memory does not follow the backlog.
    import psutil

    rss_before = psutil.Process(worker.proc.pid).memory_info().rss
    more = asyncio.run(produce_workload(worker.settings, messages=200, traces_per_message=3, seed=22))
    time.sleep(3)
    rss_after = psutil.Process(worker.proc.pid).memory_info().rss
    assert rss_after - rss_before < 64 * 2**20, (rss_before, rss_after)
    worker.stop()
    # ClickHouse is back (here: the embedded store): the same consumer group resumes from offsets
    # that never moved, and everything lands once.
    chdb = worker.env["OTELPIPE_WORKER_DATA_DIR"].rsplit("/", 1)[0] + "/chdb"
    started = time.monotonic()
    worker.reconfigure(OTELPIPE_CLICKHOUSE_DSN=f"chdb://{chdb}").start()
    total = summary.spans + more.spans
    worker.wait_for(SPANS, total)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", summary.logs + more.logs)
    assert worker.scalar(DISTINCT_SPANS) == total
    report("ClickHouse unreachable, worker retrying, then back", total, worker, time.monotonic() - started)


def test_broker_restart_mid_stream(worker_factory):
    worker = worker_factory().start()
    first = asyncio.run(produce_workload(worker.settings, messages=60, traces_per_message=3, seed=31))
    worker.wait_for(SPANS, first.spans)
    broker = LocalBroker.from_settings(load_settings(env={}))
    started = time.monotonic()
    broker.down()
    time.sleep(3)
    broker.up([], timeout_s=120)
    second = asyncio.run(produce_workload(worker.settings, messages=60, traces_per_message=3, seed=32))
    total = first.spans + second.spans
    worker.wait_for(SPANS, total, timeout_s=180)
    assert worker.scalar(DISTINCT_SPANS) == total
    assert worker.proc.poll() is None
    report("Kafka broker stopped and restarted under a running worker", total, worker, time.monotonic() - started)


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_thousands_of_bad_messages_among_good_ones(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_BATCH_MAX_MESSAGES="200")
    good = encode_request(traces_request(1), "otlp_proto")
    bad_kinds = [b"\xff" * 40, good[:-5], b'{"resourceSpans": 1}', b"\x08\x96\x01"]
    values, good_count, bad_count = [], 0, 0
    for i in range(3000):
        if i % 2:
            values.append(bad_kinds[i % len(bad_kinds)])
            bad_count += 1
        else:
            request = traces_request(1)
            request.resource_spans[0].scope_spans[0].spans[0].span_id = (i + 1).to_bytes(8, "big")
            values.append(request.SerializeToString())
            good_count += 1
    spans_topic = worker.settings.kafka.spans_topic
    asyncio.run(_send(worker.settings.kafka.bootstrap_servers, spans_topic, values))
    started = time.monotonic()
    worker.start()
    worker.wait_for(SPANS, good_count, timeout_s=180)
    drained = time.monotonic() - started
    assert worker.scalar(DISTINCT_SPANS) == good_count
    dead = asyncio.run(_read_all(worker.settings.kafka.bootstrap_servers, worker.settings.dlq_topic(spans_topic),
                                 bad_count, timeout_s=120))
    assert len(dead) == bad_count
    assert all(dict(r.headers).get("otelpipe.dlq.reason") for r in dead)
    report(f"{bad_count} malformed messages among {good_count} good ones", good_count, worker, drained)


def test_too_many_parts_is_retryable_and_the_retry_writes_once(chdb_client, ch_settings):
    """ClickHouse throttling, for real: merges stopped and a tiny parts limit make inserts fail
    with TOO_MANY_PARTS; the writer's error is classified retryable, and once ClickHouse catches
    up the same messages are written exactly once."""
    import pytest

    from sinks.clickhouse import ClickHouseSink, error_code, is_retryable
    from streams.otlp.batch import RawMessage
    from streams.agents.signal_writer import SignalWriter

    db = ch_settings.database
    chdb_client.command(f"SYSTEM STOP MERGES {db}.otel_traces")
    chdb_client.command(f"ALTER TABLE {db}.otel_traces MODIFY SETTING parts_to_throw_insert = 2, "
                        "parts_to_delay_insert = 1, max_delay_to_insert = 1")
    writer = SignalWriter("traces", ClickHouseSink(chdb_client, ch_settings, "g"), lambda t: "otlp_proto", 1 << 20)

    def messages(first: int, count: int) -> list[RawMessage]:
        out = []
        for offset in range(first, first + count):
            request = traces_request(1)
            request.resource_spans[0].scope_spans[0].spans[0].span_id = (offset + 1).to_bytes(8, "big")
            out.append(RawMessage("spans", 0, offset, request.SerializeToString()))
        return out

    writer.write(messages(0, 1))
    writer.write(messages(1, 1))
    with pytest.raises(Exception) as failure:
        writer.write(messages(2, 3))  # a third part: refused
    assert error_code(failure.value) == 252 and is_retryable(failure.value)
    chdb_client.command(f"ALTER TABLE {db}.otel_traces MODIFY SETTING parts_to_throw_insert = 3000, "
                        "parts_to_delay_insert = 1000")
    chdb_client.command(f"SYSTEM START MERGES {db}.otel_traces")
    outcome = writer.write(messages(2, 3))  # the worker's retry: the same messages
    assert len(outcome.done) == 3
    rows = chdb_client.query(f"SELECT count(), uniqExact(SpanId) FROM {db}.otel_traces").result_rows[0]
    assert rows == (5, 5)
