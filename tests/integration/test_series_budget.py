"""Series budgets in running workers: exact counts, alerts on table and topic, bucketized series,
state that survives kill -9, and exact counts with two workers sharing the metrics."""

from __future__ import annotations

import asyncio
import json
import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from streams.stages.alerts import decode_avro
from streams.tools.producer import produce_workload
from tests.conftest import WorkerProcess
from tests.integration.test_faults import _send
from tests.integration.test_used_by import _consume, cli
from tests.otlp_builders import kv

HOUR_NS = 3600 * 1_000_000_000
METRIC = "http.server.request.count"
ALERTS = "SELECT Name, Value, Threshold, Details FROM {db}.otelpipe_alerts WHERE Kind = 'cardinality'"


def window_start_ns() -> int:
    """Ten minutes into an hour three hours ago: a short workload stays inside one budget window."""
    return (time.time_ns() - 3 * HOUR_NS) // HOUR_NS * HOUR_NS + 600 * 1_000_000_000


def test_workload_user_ids_cross_the_budget_alert_and_get_bucketized(worker_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[budgets]\ndefault_limit = 1000\nbuckets = 10\n'
                      f'[[budgets.metrics]]\nname = "{METRIC}"\nlimit = 100\naction = "bucketize"\n')
    worker = worker_factory(OTELPIPE_WORKER_LABEL_POLICY=str(policy)).start()
    summary = asyncio.run(produce_workload(worker.settings, messages=200, traces_per_message=1, seed=5,
                                           start_ns=window_start_ns()))
    points = summary.metric_points["sum"] // 4 * 3  # three user-id points of every four sum points
    worker.wait_for(f"SELECT count() FROM {{db}}.otel_metrics_sum WHERE MetricName = '{METRIC}'", points)

    alerts = worker.query(ALERTS)
    assert len(alerts) == 1, worker.query("SELECT Timestamp, Service, Details FROM {db}.otelpipe_alerts")
    [(name, value, threshold, details)] = alerts
    assert (name, value, threshold) == (METRIC, 100.0, 100.0)
    assert details["label"] == "user.id" and details["action"] == "bucketize" and details["series"] == "100"
    # exactly the budget's series kept their user id; every other point has a bucket instead
    original = worker.scalar(f"SELECT uniqExact(ServiceName, Attributes) FROM {{db}}.otel_metrics_sum "
                             f"WHERE MetricName = '{METRIC}' AND Attributes['user.id'] NOT LIKE 'bucket_%'")
    assert original == 100
    buckets = worker.scalar(f"SELECT uniqExact(Attributes['user.id']) FROM {{db}}.otel_metrics_sum "
                            f"WHERE MetricName = '{METRIC}' AND Attributes['user.id'] LIKE 'bucket_%'")
    assert 1 < buckets <= 10
    # other metrics are under their budget: every point is there (their routed partitions are written
    # by batches of their own, which may land after the budgeted metric's)
    worker.wait_for("SELECT count() FROM {db}.otel_metrics_gauge", summary.metric_points["gauge"])
    # the same record on the alerts topic, Avro-encoded
    records = [decode_avro(r.value) for r in asyncio.run(_consume(worker.settings.kafka.bootstrap_servers,
                                                                  worker.settings.slo.alerts_topic, 1))]
    assert [(r["Kind"], r["Name"], r["Details"]["label"]) for r in records] == [("cardinality", METRIC, "user.id")]
    # one change per point stored with a bucket (a kept series may have several points)
    bucketed = worker.scalar(f"SELECT count() FROM {{db}}.otel_metrics_sum "
                             f"WHERE MetricName = '{METRIC}' AND Attributes['user.id'] LIKE 'bucket_%'")
    assert worker.metric('otelpipe_stage_changes_total{reason="bucketized",stage="budget"}') == bucketed
    # `otelpipe cardinality` shows the budget and what happened at it
    top = json.loads(cli(worker, "cardinality", "--since", "6h", "--format", "json").stdout)
    row = next(r for r in top if r["metric"] == METRIC)
    assert row["budget"] == 100 and row["budget status"] == "over: bucketize user.id"
    other = next(r for r in top if r["metric"] == "process.memory.usage")
    assert other["budget"] == 1000 and other["budget status"].endswith("% used")


def gauge_request(metric: str, user: str, t_ns: int) -> bytes:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", string_value="cart"))
    sm = rm.scope_metrics.add()
    g = sm.metrics.add(name=metric, unit="{item}")
    p = g.gauge.data_points.add(time_unix_nano=t_ns, as_int=1)
    p.attributes.append(kv("user.id", string_value=user))
    return req.SerializeToString()


def distinct_series(workers: list[WorkerProcess], metric: str) -> set:
    seen = set()
    for w in workers:
        rows = w.query(f"SELECT DISTINCT toString(Attributes) FROM {{db}}.otel_metrics_gauge WHERE MetricName = '{metric}'")
        seen.update(r[0] for r in rows or [])
    return seen


def test_budget_state_survives_kill_9_and_stays_exact_with_two_workers(worker_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[budgets]\ndefault_limit = 40\naction = "drop"\n')
    first = worker_factory(OTELPIPE_WORKER_LABEL_POLICY=str(policy)).start()
    topic, bootstrap = first.settings.kafka.metrics_topic, first.settings.kafka.bootstrap_servers
    t0 = window_start_ns()
    # 30 series of cart.items, plus other metrics so that several routed partitions are busy
    asyncio.run(_send(bootstrap, topic, [gauge_request("cart.items", f"u{i}", t0 + i) for i in range(30)] +
                      [gauge_request(f"other.m{j}", f"u{i}", t0 + i) for j in range(6) for i in range(5)]))
    first.wait_for("SELECT count() FROM {db}.otel_metrics_gauge WHERE MetricName = 'cart.items'", 30)
    first.wait_for("SELECT count() FROM {db}.otel_metrics_gauge", 60)
    first.kill9()

    # the same worker again, and a second one in the same group with its own ClickHouse and port
    first.start()
    second = first.sibling(tmp_path / "second")
    try:
        second.start()
        # 30 new series (10 fit the budget), and the 30 known ones again (they all pass)
        asyncio.run(_send(bootstrap, topic, [gauge_request("cart.items", f"u{i}", t0 + 100 + i) for i in range(30, 60)] +
                          [gauge_request("cart.items", f"u{i}", t0 + 200 + i) for i in range(30)]))
        def known_again() -> int:
            sql = ("SELECT count() FROM {db}.otel_metrics_gauge WHERE MetricName = 'cart.items' "
                   f"AND toUnixTimestamp64Nano(TimeUnix) >= {t0 + 200}")
            return sum(w.scalar(sql) for w in (first, second))

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if len(distinct_series([first, second], "cart.items")) >= 40 and known_again() >= 30:
                break
            time.sleep(0.5)
        time.sleep(3)  # time enough for anything over the budget to show up
        assert len(distinct_series([first, second], "cart.items")) == 40
        alerts = [row for w in (first, second) for row in (w.query(ALERTS) or [])]
        assert [(a[0], a[1], a[2]) for a in alerts] == [("cart.items", 40.0, 40.0)]
        # every known series passed (after a rebalance both workers may have written one, each in its database)
        counters = [line for w in (first, second) for line in w.metrics().splitlines()
                    if line.startswith(("otelpipe_stage_changes_total", "otelpipe_messages_", "otelpipe_held", "otelpipe_consumer_lag{"))]
        assert known_again() >= 30, "\n".join(counters)
    finally:
        second.stop()


def test_a_replay_of_a_range_the_budgets_bucketized_live_writes_no_second_copy(worker_factory, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[budgets]\ndefault_limit = 1000\nbuckets = 10\n'
                      f'[[budgets.metrics]]\nname = "{METRIC}"\nlimit = 20\naction = "bucketize"\n')
    worker = worker_factory(OTELPIPE_WORKER_LABEL_POLICY=str(policy)).start()
    now = time.time_ns()
    start = max(now - 60 * 10**9, now // HOUR_NS * HOUR_NS)  # the last minute, inside this hour's window
    values = [gauge_request(METRIC, f"u{i}", start + i * 10**9) for i in range(60)]
    asyncio.run(_send(worker.settings.kafka.bootstrap_servers, worker.settings.kafka.metrics_topic, values))
    query = f"SELECT count() FROM {{db}}.otel_metrics_gauge WHERE MetricName = '{METRIC}'"
    worker.wait_for(query, 60)
    bucketed = worker.scalar(f"SELECT count() FROM {{db}}.otel_metrics_gauge WHERE MetricName = '{METRIC}' "
                             "AND Attributes['user.id'] LIKE 'bucket_%'")
    assert bucketed == 40
    worker.stop()  # one process per chDB path: the replay opens it next
    done = cli(worker, "replay", "--signal", "metrics", "--from", "1h")
    assert done.returncode == 0, done.stderr
    worker.start()
    assert worker.scalar(query) == 60, "the bucketized points were recognised, not written raw again"
    assert worker.scalar(f"SELECT count() FROM {{db}}.otel_metrics_gauge WHERE MetricName = '{METRIC}' "
                         "AND Attributes['user.id'] LIKE 'bucket_%'") == 40
