"""A label policy applied by a running worker: what is stored is redacted, templated and bounded."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from streams.producer import produce_workload
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
