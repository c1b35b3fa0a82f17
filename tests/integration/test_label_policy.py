"""A label policy applied by a running worker: what is stored is redacted, templated and bounded."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from streams.tools.producer import produce_workload
from tests.conftest import ROOT
from tests.integration.test_faults import _send
from tests.otlp_builders import traces_request

POLICY = """
[redaction]
value_action = "mask"
[[cardinality.rules]]
type = "hash"
key = "user.id"
buckets = 50
[[cardinality.rules]]
type = "drop"
key = "session.id"
[[cardinality.rules]]
type = "truncate_hash"
key = "app.request.payload"
max_length = 100
[metrics]
allowed_names = ["http.*", "process.*", "system.*", "rpc.*", "db.*"]
"""


def test_worker_applies_the_policy(worker_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    worker = worker_factory(OTELPIPE_WORKER_LABEL_POLICY=str(policy)).start()
    summary = asyncio.run(produce_workload(worker.settings, messages=20, traces_per_message=5, seed=41))
    secret = traces_request(1)
    span = secret.resource_spans[0].scope_spans[0].spans[0]
    span.name = "GET /reset/8812?token=abc"
    span.attributes.add(key="http.request.header.authorization").value.string_value = "Bearer sk_live_123456789"
    span.attributes.add(key="customer.note").value.string_value = "mail me at kim@example.org"
    asyncio.run(_send(worker.settings.kafka.bootstrap_servers, worker.settings.kafka.spans_topic,
                      [secret.SerializeToString()]))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", summary.spans + 1)
    # metric points take one more hop (routed by name): wait for the allowed ones too
    worker.wait_for("SELECT count() FROM {db}.otel_metrics_sum WHERE MetricName = 'http.server.request.count'",
                    summary.metric_points["sum"] // 4 * 3)

    assert worker.scalar("SELECT countIf(mapContains(SpanAttributes, 'session.id')) FROM {db}.otel_traces") == 0
    users = worker.scalar("SELECT uniqExact(SpanAttributes['user.id']) FROM {db}.otel_traces "
                          "WHERE mapContains(SpanAttributes, 'user.id')")
    assert 1 < users <= 50
    assert worker.scalar("SELECT countIf(SpanAttributes['user.id'] NOT LIKE 'bucket_%') FROM {db}.otel_traces "
                         "WHERE mapContains(SpanAttributes, 'user.id')") == 0
    assert worker.scalar("SELECT max(length(SpanAttributes['app.request.payload'])) FROM {db}.otel_traces") <= 100
    # The user ids of the metric points are bucketed too, and unregistered metric names never arrive.
    assert worker.scalar("SELECT countIf(MetricName = 'queue.depth.change') FROM {db}.otel_metrics_sum") == 0
    stored = worker.query("SELECT SpanName, SpanAttributes FROM {db}.otel_traces WHERE SpanName LIKE 'GET /reset%'")
    [(name, attrs)] = stored
    assert name == "GET /reset/{num}?token=****"
    assert "http.request.header.authorization" not in attrs and attrs["customer.note"] == "mail me at ****"
    from tests.integration.test_used_by import cli
    import json

    top = json.loads(cli(worker, "cardinality", "--since", "3h", "--format", "json").stdout)
    requests = next(r for r in top if r["metric"] == "http.server.request.count")
    assert requests["series"] <= 50 and "user.id=" in requests["labels driving it (distinct values)"]
    metrics = worker.metrics()
    assert 'otelpipe_stage_changes_total{reason="hash",stage="cardinality"}' in metrics
    assert 'otelpipe_stage_changes_total{reason="unregistered_name",stage="metrics"}' in metrics


def test_an_invalid_policy_stops_the_worker_with_every_problem(tmp_path):
    policy = tmp_path / "bad.toml"
    policy.write_text('[[cardinality.rules]]\ntype = "hash"\nkey = "user.id"\nbuckets = 0\n'
                      '[[cardinality.rules]]\ntype = "nope"\nkey = "x"\n')
    env = {"OTELPIPE_WORKER_LABEL_POLICY": str(policy), "PATH": "/usr/bin:/bin"}
    for args in (["run"], ["policy", "check", str(policy)]):
        proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "cardinality.rules[0].buckets: must be > 0" in proc.stderr
        assert "cardinality.rules[1].type: must be one of" in proc.stderr


def _user_ids(worker, service_filter: str) -> set[str]:
    rows = worker.query("SELECT DISTINCT SpanAttributes['user.id'] FROM {db}.otel_traces "
                        f"WHERE mapContains(SpanAttributes, 'user.id') AND {service_filter}")
    return {r[0] for r in rows}


def test_policy_changes_reach_the_running_worker(worker_factory, tmp_path):
    import time

    policy = tmp_path / "live.toml"
    policy.write_text("[redaction]\nvalue_action = \"mask\"\n")
    worker = worker_factory(OTELPIPE_WORKER_LABEL_POLICY=str(policy)).start()

    def produce_and_wait(seed: int, expected_total: int) -> None:
        asyncio.run(produce_workload(worker.settings, messages=4, traces_per_message=2, seed=seed))
        worker.wait_for("SELECT count() FROM {db}.otel_traces", expected_total)

    def wait_metric(name: str, value: float) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (worker.metric(name) or 0) < value:
            time.sleep(0.5)
        assert (worker.metric(name) or 0) >= value, worker.metrics()

    produce_and_wait(1, 96)
    assert all(u.startswith("user-") for u in _user_ids(worker, "1"))

    # 1. The file changes: hashing user ids starts without a restart.
    policy.write_text(POLICY)
    wait_metric('otelpipe_policy_reloads_total{outcome="applied",source="file"}', 1)
    produce_and_wait(2, 192)
    new_ids = {r[0] for r in worker.query(
        "SELECT DISTINCT SpanAttributes['user.id'] FROM {db}.otel_traces WHERE mapContains(SpanAttributes, 'user.id') "
        "ORDER BY Timestamp DESC LIMIT 40")}
    assert any(u.startswith("bucket_") for u in new_ids)

    # 2. An invalid policy is refused; the current one stays.
    policy.write_text('[[cardinality.rules]]\ntype = "hash"\nkey = "user.id"\nbuckets = -3\n')
    wait_metric('otelpipe_policy_reloads_total{outcome="rejected",source="file"}', 1)

    # 3. A policy pushed to the compacted topic reaches it too: drop user ids entirely.
    pushed = tmp_path / "pushed.toml"
    pushed.write_text('[[cardinality.rules]]\ntype = "drop"\nkey = "user.id"\n')
    from tests.integration.test_used_by import cli

    result = cli(worker, "policy", "push", str(pushed))
    assert result.returncode == 0, result.stderr
    wait_metric('otelpipe_policy_reloads_total{outcome="applied",source="topic"}', 1)
    before = worker.scalar("SELECT countIf(mapContains(SpanAttributes, 'user.id')) FROM {db}.otel_traces")
    produce_and_wait(3, 288)
    after = worker.scalar("SELECT countIf(mapContains(SpanAttributes, 'user.id')) FROM {db}.otel_traces")
    assert after == before


def test_service_catalog_from_file_and_live_from_its_topic(worker_factory, tmp_path):
    import time

    from tests.integration.test_used_by import cli

    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[[services]]\nname = "payment"\nteam = "payments"\ntier = "1"\nowner = "pat"\n')
    worker = worker_factory(OTELPIPE_WORKER_CATALOG_FILE=str(catalog)).start()
    first = asyncio.run(produce_workload(worker.settings, messages=3, traces_per_message=2, seed=51))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", first.spans)
    teams = dict(worker.query("SELECT ServiceName, any(ServiceTeam) FROM {db}.otel_traces GROUP BY ServiceName"))
    assert teams["payment"] == "payments" and teams["cart"] == ""
    assert worker.scalar("SELECT countIf(ServiceOwner = 'pat') FROM {db}.otel_logs WHERE ServiceName = 'payment'") > 0

    update = tmp_path / "update.toml"
    update.write_text('[[services]]\nname = "cart"\nteam = "shop"\n')
    assert cli(worker, "catalog", "push", str(update)).returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not worker.metric('otelpipe_catalog_updates_total{outcome="applied"}'):
        time.sleep(0.5)
    second = asyncio.run(produce_workload(worker.settings, messages=3, traces_per_message=2, seed=52))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", first.spans + second.spans)
    assert worker.scalar("SELECT countIf(ServiceTeam = 'shop') FROM {db}.otel_traces WHERE ServiceName = 'cart'") \
        == second.spans_by_service["cart"]
