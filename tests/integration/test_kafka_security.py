"""otelpipe over the local broker's SASL_SSL listener (SCRAM-SHA-512, a CA of the test's own) and its
mutual-TLS listener: the demo workload round-trips (produce, worker, dead letters, replay), and a
wrong password, an untrusted certificate or a missing client certificate fail fast, naming the
setting."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer

from streams.config import load_settings
from streams.tools.kafka_clients import KafkaAccessError, check_connection, connect_args
from streams.tools.local_kafka import LocalBroker
from tests.conftest import ROOT
from tests.integration.test_used_by import cli


@pytest.fixture
def broker(kafka_bootstrap) -> LocalBroker:
    return LocalBroker.from_settings(load_settings(env={}))


async def _send_secure(settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**connect_args(settings.kafka), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


def test_the_demo_workload_round_trips_over_sasl_ssl(worker_factory, broker, tmp_path):
    worker = worker_factory(**broker.secure_settings()).start()
    assert worker.settings.kafka.security_protocol == "SASL_SSL"
    produced = cli(worker, "produce", "--messages", "12", "--seed", "7", "--json")
    assert produced.returncode == 0, produced.stderr
    spans = json.loads(produced.stdout)["spans"]
    worker.wait_for("SELECT count() FROM {db}.otel_traces", spans, timeout_s=90)

    asyncio.run(_send_secure(worker.settings, worker.settings.kafka.spans_topic, [b"\xff\x00 not otlp"]))
    deadline = time.monotonic() + 60
    letters: list = []
    while not letters and time.monotonic() < deadline:
        shown = cli(worker, "dlq", "show", "--signal", "traces", "--format", "json")
        assert shown.returncode == 0, shown.stderr
        letters = json.loads(shown.stdout)
        time.sleep(1)
    assert [letter["reason"] for letter in letters] == ["undecodable"]

    worker.stop()  # one process per chDB path: the replay opens it next
    replayed = cli(worker, "replay", "--signal", "traces", "--from", "1h")
    assert replayed.returncode == 0, replayed.stderr
    worker.start()
    assert worker.scalar("SELECT count() FROM {db}.otel_traces") == spans  # nothing written twice
    assert worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces") == spans


def test_mutual_tls_reaches_the_broker_and_a_missing_certificate_is_named(broker):
    good = load_settings(env=broker.secure_settings("mtls"))
    asyncio.run(check_connection(good.kafka))
    without = {k: v for k, v in broker.secure_settings("mtls").items() if "CERT" not in k and "_KEY_" not in k}
    with pytest.raises(KafkaAccessError, match="kafka.ssl_cert_file"):
        asyncio.run(check_connection(load_settings(env=without).kafka))


def _make_other_ca(tmp_path) -> str:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "o.key"),
                    "-out", str(tmp_path / "other-ca.pem"), "-days", "1", "-subj", "/CN=not the broker's CA"],
                   check=True, capture_output=True)
    return str(tmp_path / "other-ca.pem")


@pytest.mark.parametrize("fault", ["wrong_password", "untrusted_certificate"])
def test_refused_settings_fail_fast_with_the_setting_named(broker, tmp_path, fault):
    env = {**broker.secure_settings(), "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "w"),
           "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}"}
    if fault == "wrong_password":
        env.pop("OTELPIPE_KAFKA_SASL_PASSWORD_FILE")
        env["OTELPIPE_KAFKA_SASL_PASSWORD"] = "not-the-password"
        named = "kafka.sasl_username, kafka.sasl_password"
    else:
        env["OTELPIPE_KAFKA_SSL_CA_FILE"] = _make_other_ca(tmp_path)
        named = "kafka.ssl_ca_file"
    for args in (["produce", "--messages", "1"], ["dlq", "show"], ["run"]):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr[-2000:])
        assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "not-the-password" not in proc.stderr + proc.stdout
        assert time.monotonic() - started < 30, args
