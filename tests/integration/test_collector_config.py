"""docs/collector.yaml loads on the current OpenTelemetry Collector (core v0.165.0, contrib
v0.165.1), and a Collector running it writes each signal to its otelpipe topic in a form otelpipe
decodes into the same rows as the request it was sent.

The Collector is built from source with ocb (streams/tools/collector_build.py) into a cache outside
the repository: the first run on a machine takes a few minutes, later runs reuse the binary. Where
Go is missing (and nothing is cached) these tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from streams.config import load_settings
from streams.otlp.batch import ORIGIN, RawMessage
from streams.otlp.decode import decode_messages
from streams.tools.collector_build import OTELPIPE_COLLECTOR, build_collector, cached_binary, find_go
from streams.tools.kafka_admin import delete_topics, ensure_topics
from tests.conftest import ROOT, free_port
from tests.otlp_builders import TRACE_ID, logs_request, metrics_request, traces_request

CONFIG = ROOT / "docs" / "collector.yaml"
BUILD_TIMEOUT_S = 1500
# pytest-timeout counts the fixture's build (once per clean machine) in the first test's time.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)


@pytest.fixture(scope="module")
def otelcol() -> Path:
    if find_go() is None and cached_binary(OTELPIPE_COLLECTOR) is None:
        pytest.skip("Go is not on PATH, so the OpenTelemetry Collector cannot be built to check "
                    "docs/collector.yaml (install Go >= 1.25; CI has it)")
    # Straight to the terminal: the first build takes minutes and should not look like a hang.
    return build_collector(OTELPIPE_COLLECTOR, log=sys.__stderr__, timeout_s=BUILD_TIMEOUT_S)


def validate(otelcol: Path, *configs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(otelcol), "validate", *(f"--config={c}" for c in configs)],
                          capture_output=True, text=True, timeout=60)


def test_docs_collector_yaml_validates(otelcol):
    checked = validate(otelcol, CONFIG)
    assert checked.returncode == 0, f"{CONFIG} does not load:\n{checked.stdout}{checked.stderr}"


def test_validate_refuses_the_exporter_keys_of_older_collectors(otelcol, tmp_path):
    """The check has teeth: the top-level ``encoding`` older exporters took is refused."""
    old = tmp_path / "old.yaml"
    old.write_text(CONFIG.read_text().replace("    traces:\n", "    encoding: otlp_proto\n    traces:\n", 1))
    checked = validate(otelcol, old)
    assert checked.returncode != 0
    assert "invalid keys: encoding" in checked.stdout + checked.stderr


async def _one_record_each(bootstrap: str, topics: list[str], timeout_s: float) -> dict[str, list]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: dict[str, list] = {topic: [] for topic in topics}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not all(found.values()):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found[tp.topic].extend(records)
        await asyncio.sleep(1.0)  # anything more (there should be nothing) arrives too
        for tp, records in (await consumer.getmany(timeout_ms=500)).items():
            found[tp.topic].extend(records)
    finally:
        await consumer.stop()
    return found


def _post(url: str, body: bytes, proc: subprocess.Popen, log: Path, timeout_s: float = 30) -> None:
    """POST an OTLP/HTTP protobuf request, retrying while the receiver starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, response.status
                return
        except (urllib.error.URLError, ConnectionError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"POST {url} failed ({exc}); Collector log:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)


def _rows(signal: str, message: RawMessage, encoding: str) -> dict[str, list[dict]]:
    result = decode_messages(signal, [message], encoding)
    assert result.dead_letters == [] and result.decoded_messages == 1, result.dead_letters
    return {table: [{k: v for k, v in row.items() if k != ORIGIN} for row in batch.rows()]
            for table, batch in result.batches.items()}


def test_a_collector_running_docs_collector_yaml_writes_what_otelpipe_decodes(otelcol, kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(env={
        "OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OTELPIPE_KAFKA_SPANS_TOPIC": f"t{tag}_spans",
        "OTELPIPE_KAFKA_LOGS_TOPIC": f"t{tag}_logs",
        "OTELPIPE_KAFKA_METRICS_TOPIC": f"t{tag}_metrics",
    })
    kafka = settings.kafka
    topics = {"traces": kafka.spans_topic, "logs": kafka.logs_topic, "metrics": kafka.metrics_topic}
    asyncio.run(ensure_topics(kafka, list(topics.values()), 3, configs=settings.topic_configs()))

    # Only where it listens and which broker and topics change; everything else is the shipped file.
    http_port, grpc_port = free_port(), free_port()
    local = tmp_path / "local.yaml"
    local.write_text(
        "receivers:\n"
        "  otlp:\n"
        "    protocols:\n"
        f"      grpc: {{ endpoint: 127.0.0.1:{grpc_port} }}\n"
        f"      http: {{ endpoint: 127.0.0.1:{http_port} }}\n"
        "exporters:\n"
        "  kafka:\n"
        f"    brokers: [\"{kafka_bootstrap}\"]\n"
        + "".join(f"    {signal}: {{ topic: {topic} }}\n" for signal, topic in topics.items())
        + "service:\n"
        "  telemetry:\n"
        "    metrics: { level: none }\n"  # no metrics endpoint on :8888 to collide over
    )
    checked = validate(otelcol, CONFIG, local)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    requests = {"traces": traces_request(3), "logs": logs_request(), "metrics": metrics_request()}

    log = tmp_path / "otelcol.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(otelcol), f"--config={CONFIG}", f"--config={local}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        for signal, request in requests.items():
            _post(f"http://127.0.0.1:{http_port}/v1/{signal}", request.SerializeToString(), proc, log)
        found = asyncio.run(_one_record_each(kafka_bootstrap, list(topics.values()), timeout_s=60))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        asyncio.run(delete_topics(kafka, list(topics.values())))

    for signal, topic in topics.items():
        records = found[topic]
        assert len(records) == 1, f"{topic}: {len(records)} records; Collector log:\n{log.read_text()[-4000:]}"
        record = records[0]
        if signal == "traces":
            assert record.key == TRACE_ID.hex().encode()  # partition_traces_by_id
        message = RawMessage(record.topic, record.partition, record.offset, record.value, record.key,
                             tuple(record.headers), record.timestamp)
        sent = RawMessage(topic, 0, 0, requests[signal].SerializeToString())
        encoding = kafka.encoding_for(topic)
        rows = _rows(signal, message, encoding)
        assert rows and all(rows.values()), f"{signal}: no rows"
        assert rows == _rows(signal, sent, encoding), signal
        if signal == "traces":
            assert len(rows["otel_traces"]) == 3
