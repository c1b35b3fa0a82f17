"""End to end over the real Kafka broker and a real worker process on chDB."""

from __future__ import annotations

import asyncio
import os
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.otlp.encode import encode_request
from streams.tools.producer import produce_workload
from tests.conftest import fault_report
from tests.otlp_builders import traces_request

SPAN_COUNT = "SELECT count() FROM {db}.otel_traces"


def produce(worker, **kwargs):
    return asyncio.run(produce_workload(worker.settings, **kwargs))


def test_known_workload_lands_exactly_in_both_encodings(worker_factory):
    worker = worker_factory().start()
    proto = produce(worker, messages=30, traces_per_message=4, seed=1, encoding="otlp_proto")
    json = produce(worker, messages=20, traces_per_message=4, seed=2, encoding="otlp_json")
    spans = proto.spans + json.spans
    logs = proto.logs + json.logs
    worker.wait_for(SPAN_COUNT, spans)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", logs)
    for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary"):
        expected = proto.metric_points[kind] + json.metric_points[kind]
        worker.wait_for(f"SELECT count() FROM {{db}}.otel_metrics_{kind}", expected)

    by_service = dict(worker.query("SELECT ServiceName, count() FROM {db}.otel_traces GROUP BY ServiceName"))
    expected_by_service = {s: proto.spans_by_service.get(s, 0) + json.spans_by_service.get(s, 0)
                           for s in set(proto.spans_by_service) | set(json.spans_by_service)}
    assert by_service == expected_by_service
    assert worker.scalar("SELECT countIf(StatusCode = 'Error') FROM {db}.otel_traces") == \
        proto.error_spans + json.error_spans
    assert worker.scalar("SELECT uniqExact(TraceId) FROM {db}.otel_traces") == proto.traces + json.traces
    assert worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces") == spans
    # Enrichment computed on insert: the error flag and promoted resource attributes.
    assert worker.scalar("SELECT countIf(IsError = 1) FROM {db}.otel_traces") == proto.error_spans + json.error_spans
    assert worker.scalar("SELECT countIf(ServiceVersion = '0.8.5') FROM {db}.otel_traces WHERE ServiceName = 'payment'") \
        == expected_by_service["payment"]
    assert worker.scalar("SELECT uniqExact(DeploymentEnvironment) FROM {db}.otel_traces") == 1
    # Every failing trace has one exception event on the payment handler.
    assert worker.scalar("SELECT countIf(has(Events.Name, 'exception')) FROM {db}.otel_traces") == \
        proto.error_traces + json.error_traces
    severities = dict(worker.query("SELECT SeverityText, count() FROM {db}.otel_logs GROUP BY SeverityText"))
    for sev in severities:
        assert severities[sev] == proto.logs_by_severity.get(sev, 0) + json.logs_by_severity.get(sev, 0)
    assert worker.scalar("SELECT countIf(TraceId != '') FROM {db}.otel_logs") == \
        proto.logs_with_trace + json.logs_with_trace
    # Logs point at spans that exist.
    assert worker.scalar(
        "SELECT count() FROM {db}.otel_logs WHERE TraceId != '' AND (TraceId, SpanId) NOT IN "
        "(SELECT TraceId, SpanId FROM {db}.otel_traces)") == 0
    # The trace-id lookup view filled in.
    # the exporter's lookup table: a row per trace and insert block (each trace is in one message here)
    assert worker.scalar("SELECT count() FROM {db}.otel_traces_trace_id_ts") == proto.traces + json.traces
    # Error kvlist bodies are stored as JSON.
    body = worker.scalar("SELECT any(Body) FROM {db}.otel_logs WHERE SeverityText = 'ERROR'")
    assert body.startswith("{") and '"error":"issuer unavailable"' in body
    # Parameters are passed, never pasted into SQL.
    rows = worker.query("SELECT count() FROM {db}.otel_traces WHERE ServiceName = {svc:String}", {"svc": "payment"})
    assert rows[0][0] == expected_by_service["payment"]
    # The worker's /query endpoint cannot change data.
    from streams.cli.common import QueryFailed

    try:
        worker.query("INSERT INTO {db}.otel_logs (Body) VALUES ('sneaky')")
        raise AssertionError("an INSERT went through the read-only endpoint")
    except QueryFailed as exc:
        assert "readonly" in str(exc).lower()
    assert worker.scalar("SELECT count() FROM {db}.otel_logs") == logs


async def _send_raw(bootstrap: str, topic: str, items: list[tuple[bytes, list]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024, acks="all")
    await producer.start()
    try:
        for value, headers in items:
            await producer.send_and_wait(topic, value, headers=headers)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for items in batch.values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


def test_poison_messages_go_to_the_dead_letter_topic_and_good_rows_all_land(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_MAX_MESSAGE_BYTES=str(512 * 1024))
    good = encode_request(traces_request(3), "otlp_proto")
    good_json = encode_request(traces_request(2), "otlp_json")
    json_header = [("content-type", b"application/json")]
    bad = [
        (os.urandom(300), [], "undecodable"),
        (good[: len(good) - 7], [], "undecodable"),
        (b'{"hello": "world"}', json_header, "wrong_shape"),
        (good_json, [], "wrong_encoding"),
        (b"x" * (600 * 1024), [], "too_large"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', json_header, "invalid_id"),
    ]
    items, expected_spans = [], 0
    for i in range(60):
        if i % 10 == 5:
            value, headers, _ = bad[(i // 10) % len(bad)]
            items.append((value, headers))
        elif i % 3 == 0:
            items.append((good_json, json_header))
            expected_spans += 2
        else:
            items.append((good, []))
            expected_spans += 3
    spans_topic = worker.settings.kafka.spans_topic
    asyncio.run(_send_raw(worker.settings.kafka.bootstrap_servers, spans_topic, items))
    worker.start()
    worker.wait_for(SPAN_COUNT, expected_spans)

    dlq = asyncio.run(_read_all(worker.settings.kafka.bootstrap_servers, worker.settings.dlq_topic(spans_topic), 6))
    assert len(dlq) == 6
    reasons = sorted(dict(r.headers)["otelpipe.dlq.reason"].decode() for r in dlq)
    assert reasons == sorted(reason for _, _, reason in bad)
    for record in dlq:
        headers = dict(record.headers)
        assert headers["otelpipe.dlq.source_topic"].decode() == spans_topic
        assert int(headers["otelpipe.dlq.source_offset"]) >= 0
        assert headers["otelpipe.dlq.detail"]
        original = [v for v, _, _ in bad if v == record.value]
        assert original, "the dead letter carries the original bytes"
    # The worker kept going: another good message after the poison still lands.
    asyncio.run(_send_raw(worker.settings.kafka.bootstrap_servers, spans_topic, [(good, [])]))
    worker.wait_for(SPAN_COUNT, expected_spans + 3)
    metrics = worker_metrics(worker)
    assert 'otelpipe_dead_letters_total{reason="too_large",signal="traces"} 1.0' in metrics


def worker_metrics(worker) -> str:
    import urllib.request

    url = f"http://{worker.settings.worker.web_host}:{worker.settings.worker.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_kill_9_mid_stream_and_restart_gives_exact_rows(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_BATCH_MAX_MESSAGES="7")
    summary = produce(worker, messages=200, traces_per_message=4, seed=11)
    total_spans, total_logs = summary.spans, summary.logs
    kills = 0
    started = time.monotonic()
    worker.start()
    for fraction in (0.15, 0.4, 0.65):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = worker.scalar(SPAN_COUNT)
            if seen >= fraction * total_spans:
                break
            time.sleep(0.1)
        assert seen < total_spans, "the worker finished before it could be killed: make the workload bigger"
        worker.kill9()
        kills += 1
        worker.start()
    assert kills == 3
    worker.wait_for(SPAN_COUNT, total_spans, timeout_s=180)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", total_logs, timeout_s=120)
    assert worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces") == total_spans
    # An insert of routed metrics recorded over several lanes, some of whose ranges were committed
    # before a kill, is held for its grace (twice the insert timeout after it was recorded) before
    # its re-delivered ranges are written: wait past that.
    grace_s = 2 * worker.settings.clickhouse.insert_timeout_s
    for kind, points in summary.metric_points.items():
        worker.wait_for(f"SELECT count() FROM {{db}}.otel_metrics_{kind}", points, timeout_s=grace_s + 90)
    time.sleep(2)  # nothing more arrives later either
    assert worker.scalar(SPAN_COUNT) == total_spans
    # Re-inserted (deduplicated) blocks were not counted twice by the materialized views either.
    assert worker.scalar("SELECT sum(Spans) FROM {db}.otel_traces_rollup_1m") == total_spans
    # a row per trace and insert block: a retried block that fed the view twice would add one
    assert worker.scalar("SELECT count() FROM {db}.otel_traces_trace_id_ts") == summary.traces
    fault_report("kill -9 of the worker 3 times mid-stream", total_spans, worker, time.monotonic() - started)


def test_messages_over_a_megabyte_reach_the_dead_letter_topic(worker_factory):
    """Kafka's default limits are 1 MB; otelpipe's producers and topics carry the largest message
    worker.max_message_bytes lets through, and a letter larger than that is stored cut, with its size."""
    mib = 1024 * 1024
    worker = worker_factory()  # max_message_bytes: 16 MiB
    good = encode_request(traces_request(3), "otlp_proto")
    big_bad = b"\xff\xff\xff" + os.urandom(2 * mib)  # not protobuf: a dead letter of 2 MiB
    spans_topic, dlq_topic = worker.settings.kafka.spans_topic, worker.settings.dlq_topic(worker.settings.kafka.spans_topic)
    bootstrap = worker.settings.kafka.bootstrap_servers
    asyncio.run(_send_raw(bootstrap, spans_topic, [(big_bad, []), (good, [])]))
    worker.start()
    worker.wait_for(SPAN_COUNT, 3)
    [letter] = asyncio.run(_read_all(bootstrap, dlq_topic, 1))
    assert letter.value == big_bad and dict(letter.headers)["otelpipe.dlq.reason"] == b"undecodable"

    worker.stop()
    worker.reconfigure(OTELPIPE_WORKER_MAX_MESSAGE_BYTES=str(mib)).start()
    asyncio.run(_send_raw(bootstrap, spans_topic, [(big_bad, []), (good, [])]))
    worker.wait_for(SPAN_COUNT, 6)
    letters = asyncio.run(_read_all(bootstrap, dlq_topic, 2))  # in partition order, not in time order
    [letter] = [r for r in letters if "otelpipe.dlq.truncated_from" in dict(r.headers)]
    cut = dict(letter.headers)
    assert cut["otelpipe.dlq.reason"] == b"too_large" and letter.value == big_bad[:worker.settings.letter_max_bytes()]
    assert int(cut["otelpipe.dlq.truncated_from"]) == len(big_bad)
