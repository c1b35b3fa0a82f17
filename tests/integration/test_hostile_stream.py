"""A stream mixing good messages with hostile ones on every source topic, through a real worker.

Hostile classes: protobuf group bombs and deep nesting, overlong varints, huge field numbers and
enums, AnyValue nesting past protobuf's limit, duplicated fields, invalid UTF-8, gzip bytes without
a header, empty messages, JSON nested 1000 deep, JSON with NaN and huge integers, timestamps before
1970 and after 2262, severity numbers out of range, a far-future point time, a producer's sampling
threshold claiming a huge weight, a 1 MB value built to make regexes quadratic, a 2 MiB undecodable
message, a 50 MiB message, and seeded random mutations of valid requests.

The worker must never exit; every good record is stored exactly once; every message that is not
stored is in a dead-letter topic with a reason. Which messages are refused is taken from the
worker's own stages run in this process on each message alone (for metrics, on each routed part),
so the test checks delivery (nothing lost, nothing twice, nothing stuck) for whatever the rules
decide, and, independently, that the hand-made hostile messages are among the refused ones.

With OTELPIPE_FAULT_REPORT=FILE set, the figures go to the fault table (bench/fault_report.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from streams.agents.routing import decode_envelope, split_metrics, virtual_message
from streams.otlp.batch import RawMessage
from streams.otlp.encode import encode_request
from streams.otlp.values import BadMessage
from streams.stages.pipeline import Stages
from tests.otlp_builders import field, kv, logs_request, metrics_request, mutate_bytes, traces_request, varint

JSON = [("content-type", b"application/json")]
PROTO = [("content-type", b"application/x-protobuf")]
BIG = 50 * 2**20
METRIC_TABLES = ["otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
                 "otel_metrics_exponential_histogram", "otel_metrics_summary"]
TABLES = {"traces": ["otel_traces"], "logs": ["otel_logs"], "metrics": METRIC_TABLES}


def good_traces(i: int) -> bytes:
    req = traces_request(2)
    for j, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
        span.trace_id = (10_000 + i).to_bytes(16, "big")
        span.span_id = (i * 4 + j + 1).to_bytes(8, "big")
        span.parent_span_id = b""
    return req.SerializeToString()


def good_logs(i: int) -> bytes:
    return logs_request([AnyValue(string_value=f"good log {i}.{j}") for j in range(2)]).SerializeToString()


def good_metrics(i: int) -> bytes:
    req = metrics_request()
    for metric in req.resource_metrics[0].scope_metrics[0].metrics:
        metric.name = f"{metric.name}.{i % 7}"
    req.resource_metrics[0].resource.attributes.append(kv("host.name", string_value=f"h{i}"))
    return req.SerializeToString()


def nested(depth: int) -> bytes:
    """An AnyValue nested ``depth`` arrays deep (protobuf's own builders refuse to make one)."""
    value = field(1, b"leaf")
    for _ in range(depth):
        value = field(5, field(1, value))
    return value


def hostile_traces() -> list[tuple[bytes, list, bool]]:
    """(value, headers, must be refused)."""
    good = good_traces(0)
    span = field(1, b"\x01" * 16) + field(2, b"\x02" * 8) + field(5, b"op")
    spans_wire = lambda s: field(1, field(2, field(2, s)))  # noqa: E731
    weighty = traces_request(1)
    weighty.resource_spans[0].scope_spans[0].spans[0].trace_state = "ot=th:ffffffffffffff"
    weighty.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x77" * 8
    future = traces_request(1)
    future.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano = 2**64 - 1
    nan_json = encode_request(traces_request(1), "otlp_json").replace(b'"doubleValue":', b'"doubleValue":NaN,"x":', 1)
    return [
        (b"\x0b" * 150_000, [], True),  # start-group tags, nested
        (spans_wire(span + b"\x6b" * 50_000), [], True),
        (spans_wire(span + b"\x30" + b"\x80" * 11 + b"\x00"), [], True),  # an 12-byte varint
        (spans_wire(span + varint(2**32 << 3) + b"\x00"), [], True),  # field number 2^32
        (spans_wire(span + field(9, field(1, b"deep") + field(2, nested(120)))), [], True),  # protobuf's limit: 100
        (spans_wire(span + field(5, b"\xff\xfe")), [], True),  # invalid UTF-8 in a string
        (gzip.compress(good), [], True),
        (good[:-3], [], True),
        (b'{"resourceSpans":' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, True),
        (nan_json, JSON, True),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"01","startTimeUnixNano":"1' + b"0" * 40
         + b'"}]}]}]}', JSON, True),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",'
         b'"spanId":"eee19b7ec3c1b174","startTimeUnixNano":"-5"}]}]}]}', JSON, True),  # before 1970
        (future.SerializeToString(), [], True),  # after 2262
        (os.urandom(2 * 2**20), [], True),
        (b"\x07" * BIG, [], True),  # over worker.max_message_bytes
        (weighty.SerializeToString(), [], False),  # stored, its weight capped
        (b"", [], False),  # an empty request: nothing to store, nothing wrong
        (spans_wire(span + field(5, b"one") + field(5, b"two")), [], False),  # last one wins
    ]


def hostile_logs() -> list[tuple[bytes, list, bool]]:
    severity = logs_request()
    severity.resource_logs[0].scope_logs[0].log_records[0].severity_number = 300
    quadratic = logs_request([AnyValue(string_value="a" * 1_000_000 + "@")])
    record = varint(1 << 3 | 1) + (1_700_000_000 * 10**9).to_bytes(8, "little") + field(5, nested(150))
    deep_body = field(1, field(2, field(2, record)))
    return [
        (severity.SerializeToString(), [], False),  # stored as Unspecified (0): the enum is open
        (b'{"resourceLogs":' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, True),
        (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":1e400}]}]}]}', JSON, True),
        (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":99999999999999999999}]}]}]}', JSON, True),
        (deep_body, [], True),
        (b"\x0b" * 100_000, [], True),
        (gzip.compress(good_logs(1)), [], True),
        (quadratic.SerializeToString(), [], False),  # stored; the detectors stay linear
        (b"", [], False),
    ]


def hostile_metrics() -> list[tuple[bytes, list, bool]]:
    future = metrics_request()
    for metric in future.resource_metrics[0].scope_metrics[0].metrics:
        if metric.HasField("gauge"):
            metric.gauge.data_points[0].time_unix_nano = 2**63 - 1  # the last instant DateTime64(9) holds
    wide = metrics_request()
    template = wide.resource_metrics[0].scope_metrics[0].metrics[0]
    for i in range(6000):  # over 1 MB, across every routed partition
        metric = wide.resource_metrics[0].scope_metrics[0].metrics.add()
        metric.CopyFrom(template)
        metric.name = f"wide.{i}"
    return [
        (future.SerializeToString(), [], False),  # stored; windows take the message's time instead
        (wide.SerializeToString(), [], False),
        (b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"n","gauge":{"dataPoints":'
         b'[{"asDouble":NaN}]}}]}]}]}', JSON, True),
        (b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"n","gauge":{"dataPoints":'
         b'[{"asInt":"123456789012345678901234567890"}]}}]}]}]}', JSON, True),
        (b'{"resourceMetrics":' + b"{\"a\":" * 1000 + b"1" + b"}" * 1000 + b"}", JSON, True),
        (b"\x0b" * 100_000, [], True),
        (gzip.compress(good_metrics(1)), [], True),
        (b"", [], False),
    ]


def mutations(valid: list[bytes], n: int, rng: random.Random) -> list[bytes]:
    """``n`` valid requests each damaged one to four times (``mutate_bytes``)."""
    out = []
    for _ in range(n):
        data = rng.choice(valid)
        for _ in range(rng.randint(1, 4)):
            data = mutate_bytes(rng, data, valid)
        out.append(data)
    return out


def expected(stages: Stages, signal: str, msg: RawMessage, partitions: int) -> tuple[Counter, bool]:
    """(rows per table, refused) as the worker's stages decide for this message alone."""
    rows: Counter = Counter()
    if signal != "metrics":
        result = stages.run(signal, [msg])
        for table, batch in result.batches.items():
            rows[table] += len(batch)
        return rows, bool(result.dead_letters)
    if len(msg.value) > stages.max_message_bytes:
        return rows, True
    try:
        parts = split_metrics(msg, "otlp_proto", partitions)
    except (BadMessage, ValueError, TypeError, OverflowError):
        return rows, True
    refused = False
    for route, payload in parts.items():
        part = virtual_message({"source_topic": msg.topic, "source_partition": msg.partition,
                                "source_offset": msg.offset, "payload": payload,
                                "source_timestamp_ms": msg.timestamp_ms}, RawMessage(f"{msg.topic}.routed", route, 0, b""))
        result = stages.run("metrics", [part])
        refused = refused or bool(result.dead_letters)
        for table, batch in result.batches.items():
            rows[table] += len(batch)
    return rows, refused


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, list]]) -> list[RawMessage]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=64 * 2**20, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, headers=headers) for value, headers in messages]
        sent = []
        for (value, headers), fut in zip(messages, futures):
            meta = await fut
            sent.append(RawMessage(topic, meta.partition, meta.offset, value, None, tuple(headers), meta.timestamp))
        return sent
    finally:
        await producer.stop()


async def allow_big_messages(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": str(64 * 2**20)})])
    finally:
        await admin.close()


async def dead_letter_sources(bootstrap: str, topics: list[str], expected_count: int, timeout_s: float
                              ) -> tuple[set[tuple[str, int, int]], Counter]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=64 * 2**20,
                                fetch_max_bytes=128 * 2**20)
    await consumer.start()
    sources: set[tuple[str, int, int]] = set()
    reasons: Counter = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while len(sources) < expected_count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    h = {k: v.decode() for k, v in r.headers}
                    assert h.get("otelpipe.dlq.reason"), h
                    if r.topic.endswith(".routed.dlq"):
                        env = decode_envelope(r.value)
                        source = (env["source_topic"], env["source_partition"], env["source_offset"])
                    else:
                        source = (h["otelpipe.dlq.source_topic"], int(h["otelpipe.dlq.source_partition"]),
                                  int(h["otelpipe.dlq.source_offset"]))
                    if source not in sources:
                        reasons[h["otelpipe.dlq.reason"]] += 1
                    sources.add(source)
    finally:
        await consumer.stop()
    return sources, reasons


def test_a_hostile_stream_on_every_topic_never_stops_the_worker(worker_factory):
    worker = worker_factory()
    s = worker.settings
    k = s.kafka
    bootstrap = k.bootstrap_servers
    asyncio.run(allow_big_messages(bootstrap, k.spans_topic))
    rng = random.Random(20261203)
    plans = {
        "traces": (k.spans_topic, good_traces, hostile_traces()),
        "logs": (k.logs_topic, good_logs, hostile_logs()),
        "metrics": (k.metrics_topic, good_metrics, hostile_metrics()),
    }
    stages = Stages.from_settings(s)
    sent: dict[str, list[RawMessage]] = {}
    must_refuse: set[tuple[str, int, int]] = set()
    produced = 0
    for signal, (topic, good, hostile) in plans.items():
        goods = [good(i) for i in range(120)]
        stream = [(v, PROTO if rng.random() < 0.5 else []) for v in goods]
        stream += [(v, []) for v in mutations(goods[:10], 150, rng)]
        rng.shuffle(stream)
        for value, headers, refuse in hostile:
            stream.insert(rng.randrange(len(stream) + 1), (value, headers))
        sent[signal] = asyncio.run(produce(bootstrap, topic, stream))
        produced += len(stream)
        by_value = {}
        for msg in sent[signal]:
            by_value.setdefault(msg.value, []).append(msg)
        for value, _, refuse in hostile:
            if refuse:
                must_refuse.update((m.topic, m.partition, m.offset) for m in by_value[value])

    started = time.monotonic()
    worker.start()
    want_rows: Counter = Counter()
    want_dead: set[tuple[str, int, int]] = set()
    empty = 0
    for signal, messages in sent.items():
        for msg in messages:
            rows, refused = expected(stages, signal, msg, k.partitions)
            want_rows.update(rows)
            if refused:
                want_dead.add((msg.topic, msg.partition, msg.offset))
            elif not rows:
                empty += 1
    assert must_refuse <= want_dead, "the stages refuse every hand-made hostile message"

    for table in ["otel_traces", "otel_logs", *METRIC_TABLES]:
        worker.wait_for(f"SELECT count() FROM {{db}}.{table}", want_rows[table], timeout_s=300)
    dlqs = [s.dlq_topic(t) for t in s.source_topics() + s.routed_topics()]
    dead, reasons = asyncio.run(dead_letter_sources(bootstrap, dlqs, len(want_dead), timeout_s=120))
    seconds = time.monotonic() - started
    assert dead == want_dead
    assert worker.proc.poll() is None, worker.log_tail()
    # every good trace not used as a mutation seed: its two spans, once each
    ids = ", ".join(f"'{(10_000 + i).to_bytes(16, 'big').hex()}'" for i in range(10, 120))
    assert worker.query(f"SELECT count(), uniqExact(TraceId, SpanId) FROM {{db}}.otel_traces WHERE TraceId IN ({ids})"
                        ) == [[220, 220]]
    time.sleep(3)  # and nothing arrives late, a second time
    stored = {t: worker.scalar(f"SELECT count() FROM {{db}}.{t}") for t in ["otel_traces", "otel_logs", *METRIC_TABLES]}
    assert stored == {t: want_rows[t] for t in stored}
    weight = worker.scalar("SELECT max(SampleWeight) FROM {db}.otel_traces WHERE SpanId = '7777777777777777'")
    assert 1 <= weight <= 1 / s.sampling.min_rate
    assert worker.scalar("SELECT max(SeverityNumber) FROM {db}.otel_logs") <= 24

    path = os.environ.get("OTELPIPE_FAULT_REPORT")
    if path:
        by_reason = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        with open(path, "a") as f:
            f.write(json.dumps({
                "fault": f"hostile stream on 3 topics: {produced} messages, {len(dead)} dead-lettered ({by_reason}), "
                         f"{empty} empty", "unit": "rows", "produced": sum(want_rows[t] for t in stored),
                "stored": sum(stored.values()), "lost": 0, "duplicated": 0, "seconds": round(seconds, 1)}) + "\n")


def test_routed_parts_a_smaller_topic_refuses_are_cut_in_pieces_and_stored_once(worker_factory):
    worker = worker_factory()
    s = worker.settings
    routed = s.routed_topic(s.kafka.metrics_topic)

    async def shrink() -> None:  # a routed topic created elsewhere, with a smaller limit
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, routed,
                                                      configs={"max.message.bytes": str(100_000)})])
        finally:
            await admin.close()

    asyncio.run(shrink())
    wide = metrics_request()
    template = wide.resource_metrics[0].scope_metrics[0].metrics[0]
    for i in range(3000):  # ~600 KB: every routed part over 100 KB
        metric = wide.resource_metrics[0].scope_metrics[0].metrics.add()
        metric.CopyFrom(template)
        metric.name = f"wide.{i}"
    sent = asyncio.run(produce(s.kafka.bootstrap_servers, s.kafka.metrics_topic, [(wide.SerializeToString(), [])]))
    rows, _ = expected(Stages.from_settings(s), "metrics", sent[0], s.kafka.partitions)
    worker.start()
    for table in METRIC_TABLES:
        worker.wait_for(f"SELECT count() FROM {{db}}.{table}", rows[table], timeout_s=120)
    assert worker.metric('otelpipe_routed_pieces_total{signal="metrics"}') > 0
    time.sleep(2)
    for table in METRIC_TABLES:
        assert worker.scalar(f"SELECT count() FROM {{db}}.{table}") == rows[table]
    assert worker.scalar("SELECT uniqExact(MetricName) FROM {db}.otel_metrics_gauge WHERE MetricName LIKE 'wide.%'") \
        == 3000  # every piece's metrics, once
