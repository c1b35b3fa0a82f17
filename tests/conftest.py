"""Shared fixtures: the real local Kafka broker, one chDB path per test process, worker processes.

chDB allows one data path per process, so this process opens a single path and gives each test
its own database in it. A worker under test runs as a subprocess with its own path; tests read
its rows through the worker's read-only /query endpoint, as ``otelpipe query`` does.
A missing broker is started, and if it cannot start the tests fail: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streams.config import ClickHouseSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from streams.tools.local_kafka import LocalBroker

    settings = load_settings(env={})
    broker = LocalBroker.from_settings(settings)
    broker.up([], timeout_s=180, secure=True)  # with its SASL_SSL and mutual-TLS listeners
    return broker.bootstrap


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import clickhouse_connect

    path = tmp_path_factory.mktemp("chdb")
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    yield client
    client.close()


@pytest.fixture
def ch_settings(chdb_client: Any) -> ClickHouseSettings:
    """A fresh, migrated database for one test."""
    from sinks.migrations import migrate

    settings = ClickHouseSettings(database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(chdb_client, settings)
    yield settings
    chdb_client.command(f"DROP DATABASE IF EXISTS {settings.database} SYNC")


class WorkerProcess:
    """`otelpipe run` in a subprocess with its own topics, consumer group, chDB path and port."""

    def __init__(self, tmp_path: Path, bootstrap: str, **overrides: str):
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.log_path = tmp_path / "worker.log"
        self.env = {
            **os.environ,
            "OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "OTELPIPE_KAFKA_SPANS_TOPIC": f"t{tag}_spans",
            "OTELPIPE_KAFKA_LOGS_TOPIC": f"t{tag}_logs",
            "OTELPIPE_KAFKA_METRICS_TOPIC": f"t{tag}_metrics",
            "OTELPIPE_SLO_ALERTS_TOPIC": f"t{tag}.alerts",
            "OTELPIPE_WORKER_POLICY_TOPIC": f"t{tag}.policy",
            "OTELPIPE_WORKER_CATALOG_TOPIC": f"t{tag}.catalog",
            "OTELPIPE_SAMPLING_CONTROL_TOPIC": f"t{tag}.sampling",
            "OTELPIPE_KAFKA_PARTITIONS": "3",
            "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
            "OTELPIPE_WORKER_APP_ID": f"otelpipe-test-{tag}",
            "OTELPIPE_WORKER_WEB_PORT": str(free_port()),
            "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "worker"),
            "OTELPIPE_WORKER_BATCH_WITHIN_S": "0.3",
            "OTELPIPE_WORKER_BATCH_MAX_MESSAGES": "20",
            "OTELPIPE_WORKER_RETRY_INITIAL_S": "0.2",
            "OTELPIPE_WORKER_RETRY_MAX_S": "2",
            "OTELPIPE_WORKER_SESSION_TIMEOUT_S": "6",
        }
        self.env.update(overrides)
        self.settings = load_settings(env=self.env)
        self.proc: subprocess.Popen | None = None
        self.registry: list["WorkerProcess"] | None = None  # the factory's: stopped after the test

    def reconfigure(self, **overrides: str) -> "WorkerProcess":
        """Change settings for the next start (same topics and consumer group)."""
        self.env.update(overrides)
        self.settings = load_settings(env=self.env)
        return self

    def sibling(self, tmp_path: Path) -> "WorkerProcess":
        """A second worker of the same consumer group and topics, with its own chDB path, port and
        data directory under ``tmp_path`` (not started)."""
        tmp_path.mkdir(parents=True, exist_ok=True)
        other = WorkerProcess(tmp_path, self.settings.kafka.bootstrap_servers)
        other.env = {**self.env, "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
                     "OTELPIPE_WORKER_WEB_PORT": str(free_port()),
                     "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "worker")}
        if self.registry is not None:  # stopped with the others, however the test ends
            other.registry = self.registry
            self.registry.append(other)
        return other.reconfigure()

    def metrics(self) -> str:
        import urllib.request

        url = f"http://{self.settings.worker.web_host}:{self.settings.worker.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, name_and_labels: str) -> float | None:
        for line in self.metrics().splitlines():
            if line.startswith(name_and_labels + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def start(self, timeout_s: float = 120, ready: str = "query") -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "run", "--loglevel", "info"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if ready == "metrics" and self.metrics():
                    return self
                if ready == "query" and self.query("SELECT 1") is not None:
                    return self
            except Exception:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready within {timeout_s}s:\n{self.log_tail()}")

    def query(self, sql: str, parameters: dict | None = None) -> list[list[Any]] | None:
        from streams.cli.common import query_worker

        answer = query_worker(self.settings, sql.replace("{db}", self.settings.clickhouse.database), parameters,
                              timeout_s=30)
        return None if answer is None else answer[1]

    def scalar(self, sql: str) -> Any:
        rows = self.query(sql)
        assert rows is not None, "worker not answering"
        return rows[0][0]

    def wait_for(self, sql: str, expected: Any, timeout_s: float = 120) -> Any:
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.scalar(sql)
            except Exception:
                value = None
            if value == expected:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{sql!r}: waited for {expected!r}, last saw {value!r}\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def topics(self) -> list[str]:
        return self.settings.source_topics()

    def create_topics(self) -> None:
        from streams.tools.kafka_admin import ensure_topics

        from streams.cli.common import all_topics as _all_topics

        topics = _all_topics(self.settings)
        asyncio.run(ensure_topics(self.settings.kafka, topics, self.settings.kafka.partitions,
                                  configs=self.settings.topic_configs()))


@pytest.fixture
def worker_factory(tmp_path: Path, kafka_bootstrap: str):
    started: list[WorkerProcess] = []

    def make(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, kafka_bootstrap, **overrides)
        worker.create_topics()
        worker.registry = started
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


def fault_report(fault: str, produced: int, worker: WorkerProcess, seconds: float, unit: str = "spans") -> None:
    """With OTELPIPE_FAULT_REPORT=FILE, append a fault test's figures as a JSON line."""
    import json

    path = os.environ.get("OTELPIPE_FAULT_REPORT")
    if not path:
        return
    stored = worker.scalar("SELECT count() FROM {db}.otel_traces")
    distinct = worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces")
    with open(path, "a") as f:
        f.write(json.dumps({"fault": fault, "unit": unit, "produced": produced, "stored": stored,
                            "lost": produced - distinct, "duplicated": stored - distinct,
                            "seconds": round(seconds, 1)}) + "\n")
