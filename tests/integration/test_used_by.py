"""What users do: send from the Python SDK, ask with the CLI (services, trace, slo), get alerts."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import warnings

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from streams.stages.alerts import decode_avro
from tests.conftest import ROOT


def cli(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=worker.env,
                          capture_output=True, text=True, timeout=120)


async def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records, deadline = [], time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for items in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


def test_python_sdk_exporters_round_trip(worker_factory):
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    from streams.tools.kafka_exporters import (
        KafkaLogExporter,
        KafkaMetricExporter,
        KafkaOtlpProducer,
        KafkaSpanExporter,
    )

    worker = worker_factory().start()
    k = worker.settings.kafka
    producer = KafkaOtlpProducer(k.bootstrap_servers)
    resource = Resource.create({"service.name": "sdk-shop", "service.version": "9.9"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(KafkaSpanExporter(topic=k.spans_topic, producer=producer)))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(KafkaLogExporter(topic=k.logs_topic, producer=producer)))
    reader = PeriodicExportingMetricReader(KafkaMetricExporter(topic=k.metrics_topic, producer=producer),
                                           export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    py_logger = logging.getLogger("sdk-shop")
    py_logger.setLevel(logging.INFO)
    with warnings.catch_warnings():
        # deprecated in the SDK since 1.45 for opentelemetry-instrumentation-logging's, but what
        # the applications sending to otelpipe use today: the round trip covers it
        warnings.filterwarnings("ignore", "`LoggingHandler` in `opentelemetry-sdk` is deprecated", DeprecationWarning)
        py_logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
    py_logger.propagate = False
    tracer = tracer_provider.get_tracer("shop")
    orders = meter_provider.get_meter("shop").create_counter("shop.orders", unit="{order}")
    latency = meter_provider.get_meter("shop").create_histogram("shop.checkout.duration", unit="ms")
    trace_ids = []
    for i in range(3):
        with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as root:
            trace_ids.append(format(root.get_span_context().trace_id, "032x"))
            with tracer.start_as_current_span("charge card") as child:
                child.set_attribute("order.id", i)
                py_logger.warning("card charged for order %d", i)
        orders.add(2, {"shop.region": "eu"})
        latency.record(10.0 * (i + 1))
    meter_provider.force_flush()

    worker.wait_for("SELECT count() FROM {db}.otel_traces WHERE ServiceName = 'sdk-shop'", 6)
    worker.wait_for("SELECT count() FROM {db}.otel_logs WHERE ServiceName = 'sdk-shop'", 3)
    worker.wait_for("SELECT sum(Value) FROM {db}.otel_metrics_sum WHERE MetricName = 'shop.orders'", 6.0)
    worker.wait_for("SELECT sum(Count) FROM {db}.otel_metrics_histogram WHERE MetricName = 'shop.checkout.duration'", 3)
    children = worker.query(
        "SELECT c.TraceId, p.SpanName FROM {db}.otel_traces AS c INNER JOIN {db}.otel_traces AS p "
        "ON c.ParentSpanId = p.SpanId WHERE c.SpanName = 'charge card' ORDER BY c.TraceId")
    assert sorted(t for t, _ in children) == sorted(trace_ids) and {p for _, p in children} == {"POST /checkout"}
    log_traces = worker.query("SELECT DISTINCT TraceId FROM {db}.otel_logs WHERE ServiceName = 'sdk-shop'")
    assert sorted(t for (t,) in log_traces) == sorted(trace_ids)  # logs carry their span's context
    assert worker.scalar("SELECT any(SeverityText) FROM {db}.otel_logs WHERE ServiceName = 'sdk-shop'") == "WARN"

    # One message per trace, keyed by the trace id: a trace stays in one partition.
    records = asyncio.run(_consume(k.bootstrap_servers, k.spans_topic, 6))  # each span ends in its own export
    assert len(records) == 6 and {r.key.hex() for r in records} == set(trace_ids)
    for r in records:
        request = ExportTraceServiceRequest.FromString(r.value)
        assert {s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans} == \
            {r.key.hex()}
    for exporter_owner in (tracer_provider, logger_provider, meter_provider):
        exporter_owner.shutdown()
    producer.close()


def _span(trace_id: bytes, span_id: bytes, parent: bytes, name: str, start: int, ms: int, error: bool):
    s = trace_pb2.Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                       kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=start,
                       end_time_unix_nano=start + ms * 1_000_000)
    if error:
        s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        s.status.message = "upstream failed"
    return s


def _known_workload() -> tuple[list[bytes], list[bytes], bytes]:
    """'steady': 100 requests, 20 ms, no errors. 'flaky': 100 requests, 300 ms, 30 errors. Last 2 minutes."""
    now = time.time_ns() - 120 * 10**9
    traces, logs = [], []
    for service, ms, errors in (("steady", 20, 0), ("flaky", 300, 30)):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        ss = rs.scope_spans.add()
        for i in range(100):
            tid = bytes([1 if service == "steady" else 2]) + i.to_bytes(15, "big")
            ss.spans.append(_span(tid, (i + 1).to_bytes(8, "big"), b"", "GET /work", now + i * 10**8, ms, i < errors))
        traces.append(request.SerializeToString())
    # One trace in detail: a root with two children and two logs.
    detail = b"\x09" * 16
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "api"
    ss = rs.scope_spans.add()
    ss.spans.extend([
        _span(detail, b"\x01" * 8, b"", "GET /detail", now, 100, False),
        _span(detail, b"\x02" * 8, b"\x01" * 8, "SELECT users", now + 10_000_000, 30, False),
        _span(detail, b"\x03" * 8, b"\x01" * 8, "POST /billing", now + 50_000_000, 40, True),
    ])
    traces.append(request.SerializeToString())
    log_request = ExportLogsServiceRequest()
    rl = log_request.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "api"
    sl = rl.scope_logs.add()
    for span_id, text, sev, offset in ((b"\x02" * 8, "query took 30ms", "INFO", 20), (b"\x03" * 8, "billing refused",
                                                                                      "ERROR", 60)):
        rec = sl.log_records.add(time_unix_nano=now + offset * 1_000_000, trace_id=detail, span_id=span_id,
                                 severity_text=sev, severity_number=17 if sev == "ERROR" else 9)
        rec.body.string_value = text
    logs.append(log_request.SerializeToString())
    return traces, logs, detail


async def _send(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p in payloads:
            await producer.send_and_wait(topic, p)
    finally:
        await producer.stop()


def test_services_trace_and_slo_give_known_answers_and_the_worker_alerts(worker_factory):
    worker = worker_factory(OTELPIPE_SLO_EVALUATE_EVERY_S="1").start()
    k = worker.settings.kafka
    traces, logs, detail = _known_workload()
    asyncio.run(_send(k.bootstrap_servers, k.spans_topic, traces))
    asyncio.run(_send(k.bootstrap_servers, k.logs_topic, logs))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", 203)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", 2)

    services = cli(worker, "services", "--since", "1h", "--format", "json")
    assert services.returncode == 0, services.stderr
    by_service = {r["service"]: r for r in json.loads(services.stdout)}
    assert by_service["steady"]["requests"] == 100 and by_service["steady"]["error_ratio"] == 0.0
    assert by_service["flaky"]["requests"] == 100 and by_service["flaky"]["error_ratio"] == 0.3
    assert abs(by_service["steady"]["p50_ms"] - 20) < 1 and abs(by_service["flaky"]["p99_ms"] - 300) < 5
    assert by_service["api"]["requests"] == 3

    table = cli(worker, "services", "--since", "1h", "--by-operation")
    assert "GET /detail" in table.stdout and "POST /billing" in table.stdout

    trace = cli(worker, "trace", detail.hex(), "--color", "never")
    assert trace.returncode == 0, trace.stderr
    lines = trace.stdout.splitlines()
    assert "3 spans, 1 services" in lines[0] and "1 error span" in lines[0] and "2 logs" in lines[0]
    assert "api: GET /detail" in lines[1]
    assert any("SELECT users" in line for line in lines) and any("query took 30ms" in line for line in lines)
    assert any("POST /billing" in line and "ERROR: upstream failed" in line for line in lines)
    missing = cli(worker, "trace", "00" * 16)
    assert missing.returncode == 1 and "no spans" in missing.stderr

    slo = cli(worker, "slo", "--format", "json")
    assert slo.returncode == 1, slo.stdout + slo.stderr  # flaky is burning its budget
    rows = json.loads(slo.stdout)
    flaky = next(r for r in rows if r["service"] == "flaky" and r["sli"] == "availability")
    steady = next(r for r in rows if r["service"] == "steady" and r["sli"] == "availability")
    assert "fast burn" in flaky["status"] and flaky["burn_1h"] == 300.0  # 30% errors / 0.1% budget
    assert steady["status"] == "ok" and steady["burn_5m"] == 0.0
    assert "flaky" in slo.stderr

    # The worker evaluates the same burn rates on its own and records the alert, once.
    worker.wait_for("SELECT count() FROM {db}.otelpipe_alerts WHERE Service = 'flaky' "
                    "AND Name = 'availability:fast_burn' AND State = 'firing'", 1, timeout_s=60)
    time.sleep(2.5)  # more evaluations: still one record while it keeps firing
    assert worker.scalar("SELECT count() FROM {db}.otelpipe_alerts WHERE Service = 'flaky' "
                         "AND Name = 'availability:fast_burn'") == 1
    assert worker.scalar("SELECT count() FROM {db}.otelpipe_alerts WHERE Service = 'steady'") == 0
    records = asyncio.run(_consume(k.bootstrap_servers, worker.settings.slo.alerts_topic, 2))
    decoded = [decode_avro(r.value) for r in records]
    fast = next(d for d in decoded if d["Service"] == "flaky" and d["Name"] == "availability:fast_burn")
    assert fast["State"] == "firing" and fast["Severity"] == "page" and fast["Value"] == 300.0
    alerts = cli(worker, "alerts")
    assert "availability:fast_burn" in alerts.stdout and "firing" in alerts.stdout


def test_produce_file_sends_collector_json_lines_and_protobuf(worker_factory, tmp_path):
    from streams.otlp.encode import encode_request
    from tests.otlp_builders import logs_request, metrics_request, traces_request

    worker = worker_factory().start()
    jsonl = tmp_path / "collector-export.jsonl"
    jsonl.write_bytes(b"\n".join([
        encode_request(traces_request(2), "otlp_json"),
        encode_request(logs_request(), "otlp_json"),
        b"this line is broken",
        encode_request(metrics_request(), "otlp_json"),
    ]) + b"\n")
    proto = tmp_path / "more-spans.pb"
    payloads = [traces_request(3).SerializeToString(), traces_request(1).SerializeToString()]
    proto.write_bytes(b"".join(len(p).to_bytes(4, "big") + p for p in payloads))

    sent = cli(worker, "produce", "--file", str(jsonl))
    assert sent.returncode == 1 and ":3: not JSON" in sent.stderr  # the bad line is named ...
    assert "traces" in sent.stdout and "metrics" in sent.stdout  # ... and the good ones still went
    assert cli(worker, "produce", "--file", str(proto)).returncode == 0
    worker.wait_for("SELECT count() FROM {db}.otel_traces", 6)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", 1)
    worker.wait_for("SELECT count() FROM {db}.otel_metrics_summary", 1)
    bare = tmp_path / "dump.bin"
    bare.write_bytes(payloads[0])
    refused = cli(worker, "produce", "--file", str(bare))
    assert refused.returncode == 2 and "--signal" in refused.stderr

    import urllib.request

    url = f"http://{worker.settings.worker.web_host}:{worker.settings.worker.web_port}/metrics"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        metrics = urllib.request.urlopen(url, timeout=10).read().decode()
        if "otelpipe_consumer_lag_messages{" in metrics:
            break
        time.sleep(1)
    assert f'otelpipe_consumer_lag_messages{{partition="0",topic="{worker.settings.kafka.spans_topic}"}}' in metrics
    assert 'otelpipe_rows_written_total{table="otel_traces"} 6.0' in metrics
    assert "otelpipe_insert_duration_seconds_bucket" in metrics and "otelpipe_batch_messages_bucket" in metrics
