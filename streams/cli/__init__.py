"""The ``otelpipe`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import orjson

from streams.config import ConfigError, Settings, describe, load_settings, with_changes
from streams.cli.render import FORMATS, format_table

DEMO_QUESTIONS = [
    ("Spans per service",
     "SELECT ServiceName, count() AS spans, countIf(StatusCode = 'Error') AS errors "
     "FROM {db}.otel_traces GROUP BY ServiceName ORDER BY spans DESC"),
    ("p99 latency per service (server spans, ms)",
     "SELECT ServiceName, round(quantile(0.5)(Duration) / 1e6, 2) AS p50_ms, "
     "round(quantile(0.99)(Duration) / 1e6, 2) AS p99_ms FROM {db}.otel_traces "
     "WHERE SpanKind = 'Server' GROUP BY ServiceName ORDER BY p99_ms DESC"),
    ("Error traces (latest 5)",
     "SELECT TraceId, anyIf(ServiceName, ParentSpanId = '') AS root_service, "
     "anyIf(SpanName, ParentSpanId = '') AS root_span, countIf(StatusCode = 'Error') AS error_spans, "
     "count() AS spans, max(Timestamp) AS last_seen FROM {db}.otel_traces "
     "WHERE TraceId IN (SELECT TraceId FROM {db}.otel_traces WHERE StatusCode = 'Error') "
     "GROUP BY TraceId ORDER BY last_seen DESC LIMIT 5"),
    ("Logs by severity",
     "SELECT SeverityText, count() AS logs, countIf(TraceId != '') AS with_trace "
     "FROM {db}.otel_logs GROUP BY SeverityText ORDER BY logs DESC"),
    ("Metric points by type",
     "SELECT 'gauge' AS type, count() AS points FROM {db}.otel_metrics_gauge UNION ALL "
     "SELECT 'sum', count() FROM {db}.otel_metrics_sum UNION ALL "
     "SELECT 'histogram', count() FROM {db}.otel_metrics_histogram UNION ALL "
     "SELECT 'exponential_histogram', count() FROM {db}.otel_metrics_exponential_histogram UNION ALL "
     "SELECT 'summary', count() FROM {db}.otel_metrics_summary"),
]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None) or None)


def _broker(settings: Settings) -> Any:
    from streams.tools.local_kafka import LocalBroker

    return LocalBroker.from_settings(settings)


def _all_topics(settings: Settings) -> list[str]:
    """Every topic otelpipe reads or writes: sources, routed topics, their dead-letter topics, alerts."""
    topics = settings.source_topics() + settings.routed_topics()
    return topics + [settings.dlq_topic(t) for t in topics] + [settings.slo.alerts_topic]


# ------------------------------------------------------------------ query


class QueryFailed(RuntimeError):
    pass


def worker_url(settings: Settings) -> str:
    return f"http://{settings.worker.web_host}:{settings.worker.web_port}"


def query_worker(settings: Settings, sql: str, parameters: dict[str, Any] | None = None,
                 timeout_s: float = 60.0) -> tuple[list[str], list[list[Any]]] | None:
    """Ask a running worker's read-only /query; None when no worker answers."""
    body = orjson.dumps({"sql": sql, "parameters": parameters or {}})
    request = urllib.request.Request(worker_url(settings) + "/query", data=body,
                                     headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("error", str(exc))
        except Exception:
            message = str(exc)
        raise QueryFailed(message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return payload["columns"], payload["rows"]


def run_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None
              ) -> tuple[list[str], list[list[Any]]]:
    """Read-only SQL: through the running worker when there is one, else directly."""
    if settings.clickhouse.dsn.startswith("chdb://"):
        answer = query_worker(settings, sql, parameters)
        if answer is not None:
            return answer
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink.open(settings.clickhouse, settings.worker.app_id)
    try:
        result = sink.query(sql, parameters, readonly=True)
    except Exception as exc:
        raise QueryFailed(str(exc)) from None
    finally:
        sink.close()
    return list(result.column_names), [list(r) for r in result.result_rows]


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param takes NAME=VALUE, got {item!r}")
        params[name] = value
    return params


def cmd_query(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        columns, rows = run_query(settings, args.sql, _parse_params(args.param))
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 1
    print(FORMATS[args.format](columns, rows))
    return 0


# ------------------------------------------------------------------ traces, services, SLOs


def _dicts(columns: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row)) for row in rows]


def cmd_trace(args: argparse.Namespace) -> int:
    from streams.cli.waterfall import render_trace

    settings = _settings(args)
    db = settings.clickhouse.database
    trace_id = args.trace_id.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        print(f"a trace id is 32 hex digits, got {args.trace_id!r}", file=sys.stderr)
        return 2
    try:
        spans = _dicts(*run_query(settings, (
            "SELECT TraceId, SpanId, ParentSpanId, ServiceName, SpanName, SpanKind, StatusCode, StatusMessage, "
            "toUnixTimestamp64Nano(Timestamp) AS Timestamp, Duration "
            f"FROM {db}.otel_traces WHERE TraceId = {{id:String}} ORDER BY Timestamp"), {"id": trace_id}))
        logs = _dicts(*run_query(settings, (
            "SELECT SpanId, ServiceName, SeverityText, SeverityNumber, Body, "
            "toUnixTimestamp64Nano(Timestamp) AS Timestamp "
            f"FROM {db}.otel_logs WHERE TraceId = {{id:String}} ORDER BY Timestamp"), {"id": trace_id}))
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    if not spans:
        print(f"no spans of trace {trace_id}" + (f" ({len(logs)} logs)" if logs else ""), file=sys.stderr)
        return 1
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print("\n".join(render_trace(spans, logs, width=args.width, color=color)))
    return 0


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 15m, 1h or 7d, got {text!r}")
    return int(text[:-1]) * units[text[-1]]


def services_query(database: str, by_operation: bool) -> str:
    group = "ServiceName, SpanName" if by_operation else "ServiceName"
    return (
        f"SELECT {group}, round(sum(EstimatedSpans)) AS spans, round(sum(EstimatedErrors)) AS errors, "
        "quantilesTDigestMerge(0.5, 0.95, 0.99)(DurationQuantiles) AS q "
        f"FROM {database}.otel_traces_rollup_1m "
        "WHERE SpanKind IN ('Server', 'Consumer') "
        "AND Minute > toDateTime({now:UInt32}) - toIntervalSecond({since:UInt32}) "
        "AND Minute <= toDateTime({now:UInt32}) "
        f"GROUP BY {group} ORDER BY {group}"
    )


def cmd_services(args: argparse.Namespace) -> int:
    settings = _settings(args)
    now = int(time.time())
    try:
        columns, rows = run_query(settings, services_query(settings.clickhouse.database, args.by_operation),
                                  {"now": now, "since": args.since})
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    out = []
    for rec in _dicts(columns, rows):
        q = rec["q"] or [0, 0, 0]
        row = [rec["ServiceName"]] + ([rec["SpanName"]] if args.by_operation else [])
        row += [int(rec["spans"]), round(rec["spans"] / args.since, 3),
                round(rec["errors"] / rec["spans"], 4) if rec["spans"] else 0.0,
                round(q[0] / 1e6, 2), round(q[1] / 1e6, 2), round(q[2] / 1e6, 2)]
        out.append(row)
    head = ["service"] + (["operation"] if args.by_operation else [])
    head += ["requests", "per_s", "error_ratio", "p50_ms", "p95_ms", "p99_ms"]
    print(FORMATS[args.format](head, out))
    return 0


def cmd_slo(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from streams.stages.catalog import load_catalog
    from streams.stages.slo import counts_query, evaluate_rows, query_parameters, with_catalog_objectives

    settings = _settings(args)
    settings = with_changes(
        settings, slo=with_catalog_objectives(settings.slo, load_catalog(settings.worker.catalog_file or None)))
    now = datetime.now(timezone.utc)
    try:
        columns, rows = run_query(settings, counts_query(settings.clickhouse.database),
                                  query_parameters(now, settings.slo))
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    verdicts = evaluate_rows(columns, rows, settings.slo)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.3f}%"

    table = []
    for v in verdicts:
        status = ", ".join(f"{a.sli} {a.rule.replace('_', ' ')}" for a in v.alerts) or "ok"
        for sli, sli_value, target, budget in (
            ("availability", v.availability, v.objective.availability, v.availability_budget_left),
            (f"latency≤{v.objective.latency_ms}ms", v.latency, v.objective.latency_target, v.latency_budget_left),
        ):
            key = "availability" if sli == "availability" else "latency"
            table.append([v.service, sli, pct(target), pct(sli_value), pct(budget)] +
                         [round(v.burn[(key, w)], 2) for w in ("5m", "30m", "1h", "6h")] +
                         [status if key == "availability" else ""])
    head = ["service", "sli", "objective", f"sli_{settings.slo.window_days}d", "budget_left",
            "burn_5m", "burn_30m", "burn_1h", "burn_6h", "status"]
    print(FORMATS[args.format](head, table))
    burning = [v.service for v in verdicts if v.burning]
    if burning:
        print(f"burning: {', '.join(burning)}", file=sys.stderr)
        return 1
    return 0


METRIC_TABLES = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def cardinality_queries(database: str) -> tuple[str, str]:
    """(series per metric, distinct values per label of the given metrics), over {since:UInt32} seconds."""
    union = " UNION ALL ".join(
        f"SELECT MetricName, ServiceName, Attributes, TimeUnix FROM {database}.otel_metrics_{t}" for t in METRIC_TABLES)
    recent = "TimeUnix > now() - toIntervalSecond({since:UInt32})"
    series = (f"SELECT MetricName, uniqExact(Attributes) AS series, count() AS points, uniqExact(ServiceName) AS services "
              f"FROM ({union}) WHERE {recent} GROUP BY MetricName ORDER BY series DESC, MetricName LIMIT {{top:UInt32}}")
    labels = (f"SELECT MetricName, key, uniqExact(Attributes[key]) AS distinct_values "
              f"FROM ({union}) ARRAY JOIN mapKeys(Attributes) AS key "
              f"WHERE {recent} AND MetricName IN {{names:Array(String)}} "
              "GROUP BY MetricName, key ORDER BY MetricName, distinct_values DESC")
    return series, labels


def budget_alerts_query(database: str) -> str:
    """The latest series-budget crossing per metric over {since:UInt32} seconds."""
    return (f"SELECT Name, argMax(Details, Timestamp) FROM {database}.otelpipe_alerts "
            "WHERE Kind = 'cardinality' AND Timestamp > now() - toIntervalSecond({since:UInt32}) GROUP BY Name")


def cmd_cardinality(args: argparse.Namespace) -> int:
    settings = _settings(args)
    series_sql, labels_sql = cardinality_queries(settings.clickhouse.database)
    from streams.stages.label_policy import PolicyError, load_policy

    choice = settings.worker.label_policy
    try:
        budgets = None if choice == "off" else load_policy(None if choice == "default" else choice).budgets
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        columns, rows = run_query(settings, series_sql, {"since": args.since, "top": args.top})
        names = [row[0] for row in rows]
        _, label_rows = run_query(settings, labels_sql, {"since": args.since, "names": names}) if names else ([], [])
        _, crossed = run_query(settings, budget_alerts_query(settings.clickhouse.database), {"since": args.since})
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    drivers: dict[str, list[str]] = {}
    for metric, key, distinct in label_rows:
        drivers.setdefault(metric, []).append(f"{key}={distinct}")
    over = {name: details for name, details in crossed}
    table = []
    for name, series, points, services in rows:
        if budgets is None or not budgets.enabled:
            budget, status = "off", ""
        else:
            budget = budgets.for_metric(name).limit
            details = over.get(name)
            status = (f"over: {details.get('action', '?')} {details.get('label', '')}".strip() if details
                      else f"{series / budget:.0%} used")
        table.append([name, series, budget, status, points, services, ", ".join(drivers.get(name, [])[:3])])
    print(FORMATS[args.format](["metric", "series", "budget", "budget status", "points", "services",
                                "labels driving it (distinct values)"], table))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        columns, rows = run_query(settings, (
            "SELECT Timestamp, Kind, Service, Name, State, Severity, round(Value, 3) AS Value, Threshold "
            f"FROM {settings.clickhouse.database}.otelpipe_alerts ORDER BY Timestamp DESC LIMIT {{n:UInt32}}"),
            {"n": args.limit})
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    print(FORMATS[args.format](columns, rows))
    return 0


# ------------------------------------------------------------------ replay and dead letters

REPLAY_SIGNALS = {"spans": ["traces"], "logs": ["logs"], "metrics": ["metrics"], "all": ["traces", "logs", "metrics"]}


def _open_sink_or_explain(settings: Settings) -> Any:
    from sinks.clickhouse import ClickHouseSink

    try:
        return ClickHouseSink.open(settings.clickhouse, settings.worker.app_id)
    except Exception as exc:
        if "lock" in str(exc).lower() and settings.clickhouse.dsn.startswith("chdb://"):
            raise SystemExit(
                f"the embedded store {settings.clickhouse.dsn} is held by another process (a running worker?): "
                "stop it first, or point clickhouse.dsn at a ClickHouse server") from None
        raise


def cmd_replay(args: argparse.Namespace) -> int:
    import dataclasses

    from sinks.migrations import migrate
    from streams.replay import ReplaySummary, parse_time, replay

    settings = _settings(args)
    if args.target_db:
        settings = with_changes(
            settings, clickhouse=with_changes(settings.clickhouse, database=args.target_db))
    try:
        from_ms, to_ms = parse_time(args.from_), parse_time(args.to)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if from_ms > to_ms:
        print("--from is after --to", file=sys.stderr)
        return 2
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    sink = _open_sink_or_explain(settings)
    migrate(sink.client, settings.clickhouse)
    summary = ReplaySummary()
    try:
        asyncio.run(replay(settings, sink, REPLAY_SIGNALS[args.signal], from_ms, to_ms, partitions,
                           rate=args.rate, summary=summary, range_text=(args.from_, args.to)))
    except KeyboardInterrupt:
        print("\nstopped: run the same command again to resume where it stopped", file=sys.stderr)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        sink.close()
    print(format_table(["replay", "count"], summary.rows()))
    return 0 if summary.finished else 130


def _dlq_topics(settings: Settings, signal: str) -> list[str]:
    from streams.tools.producer import topic_for

    return [settings.dlq_topic(topic_for(settings, s)) for s in REPLAY_SIGNALS[signal]]


def cmd_dlq(args: argparse.Namespace) -> int:
    from streams.tools.dead_letters import read_dead_letters, refeed_dead_letters

    settings = _settings(args)
    bootstrap = settings.kafka.bootstrap_servers
    if args.action == "show":
        rows = []
        for topic in _dlq_topics(settings, args.signal):
            for letter in asyncio.run(read_dead_letters(bootstrap, topic, args.limit)):
                rows.append([topic, f"{letter.partition}@{letter.offset}", letter.reason,
                             f"{letter.source_topic}[{letter.header('otelpipe.dlq.source_partition')}]"
                             f"@{letter.header('otelpipe.dlq.source_offset')}",
                             len(letter.value), letter.header("otelpipe.dlq.detail")[:80]])
        print(FORMATS[args.format](["dlq", "at", "reason", "source", "bytes", "detail"], rows))
        return 0
    total = {}
    for topic in _dlq_topics(settings, args.signal):
        for source, n in asyncio.run(refeed_dead_letters(bootstrap, topic, f"{settings.worker.app_id}.dlq-replay")).items():
            total[source] = total.get(source, 0) + n
    print(format_table(["re-fed to", "messages"], sorted(total.items())))
    return 0


# ------------------------------------------------------------------ commands


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(format_table(["setting", "value", "unit", "meaning"], describe(settings), max_width=90))
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    settings = _settings(args)
    broker = _broker(settings)
    if args.action == "up":
        print("kafka:", broker.up(_all_topics(settings)))
    elif args.action == "down":
        print("kafka:", broker.down())
    else:
        info = broker.status()
        print(format_table(["key", "value"], [(k, v) for k, v in info.items()], max_width=100))
        return 0 if info["running"] else 3
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from sinks.clickhouse import connect
    from sinks.migrations import migrate

    client = connect(settings.clickhouse)
    applied = migrate(client, settings.clickhouse)
    if applied:
        for mig in applied:
            print(f"applied {mig.version:04d}_{mig.name}")
    else:
        print("schema is up to date")
    return 0


async def _push_policy(settings: Settings, text: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.tools.kafka_admin import ensure_topics

    await ensure_topics(settings.kafka.bootstrap_servers, [settings.worker.policy_topic], 1,
                        configs={"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.worker.policy_topic, text, key=b"policy", partition=0)
    finally:
        await producer.stop()


async def _read_compacted(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """The latest value per key of a one-partition compacted topic (empty when it does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    latest: dict[str, bytes | None] = {}
    try:
        if topic not in await consumer.topics():
            return latest
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                latest[(record.key or b"").decode("utf-8", "replace")] = record.value
    finally:
        await consumer.stop()
    return latest


def cmd_sampling(args: argparse.Namespace) -> int:
    """Head sampling rates at runtime: every worker follows the compacted control topic."""
    from aiokafka import AIOKafkaProducer

    from streams.tools.kafka_admin import ensure_topics
    from streams.stages.sampling import SamplingError, probability_to_threshold, threshold_to_th

    settings = _settings(args)
    if args.action == "check":
        from streams.stages.tail_policies import TailPolicyError, load_policies

        path = args.policies or settings.sampling.tail_policy_file
        try:
            policies = load_policies(path or None)
        except TailPolicyError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{path or '(default tail policies)'}: valid — " + ", ".join(f"{p.name} ({p.type})" for p in policies))
        return 0
    topic = settings.sampling.control_topic
    key = args.service or "*"

    async def send(value: bytes | None) -> None:
        await ensure_topics(settings.kafka.bootstrap_servers, [topic], 1, configs={"cleanup.policy": "compact"})
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
        finally:
            await producer.stop()

    if args.action == "set":
        if args.rate is None:
            print("sampling set needs a rate, e.g. otelpipe sampling set 0.1", file=sys.stderr)
            return 2
        try:
            probability_to_threshold(args.rate)
        except SamplingError as exc:
            print(exc, file=sys.stderr)
            return 2
        asyncio.run(send(repr(args.rate).encode()))
        print(f"head sampling rate of {'every service without a rate' if key == '*' else key}: {args.rate:g}")
        return 0
    if args.action == "clear":
        asyncio.run(send(None))
        print(f"runtime rate of {key} removed; the configured rate applies")
        return 0
    overrides = {k: v for k, v in asyncio.run(_read_compacted(settings.kafka.bootstrap_servers, topic)).items()
                 if v is not None}
    rows = [["* (default)", f"{settings.sampling.head_rate:g}", overrides.get("*", b"").decode() or "-"]]
    configured = settings.sampling.rates()
    for name in sorted(set(configured) | {k for k in overrides if k != "*"}):
        rows.append([name, f"{configured[name]:g}" if name in configured else "-",
                     overrides.get(name, b"").decode() or "-"])
    for row in rows:
        effective = float(row[2]) if row[2] != "-" else float(row[1]) if row[1] != "-" else None
        row.append("" if effective is None else f"{effective:g} (th:{threshold_to_th(probability_to_threshold(effective))})")
    print(FORMATS[args.format](["service", "configured", "runtime", "effective"], rows))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaProducer

    from streams.stages.catalog import load_catalog
    from streams.tools.kafka_admin import ensure_topics

    settings = _settings(args)
    entries = load_catalog(args.file)  # CatalogError lists every problem
    if args.action == "check":
        print(f"{args.file}: valid — {len(entries)} services")
        return 0

    async def push() -> None:
        await ensure_topics(settings.kafka.bootstrap_servers, [settings.worker.catalog_topic], 1,
                            configs={"cleanup.policy": "compact"})
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for name, entry in entries.items():
                fields = (("team", entry.team), ("tier", entry.tier), ("owner", entry.owner),
                          ("availability", entry.availability), ("latency_ms", entry.latency_ms),
                          ("latency_target", entry.latency_target))
                body = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in fields if v not in (None, ""))
                await producer.send_and_wait(settings.worker.catalog_topic, body.encode(), key=name.encode(),
                                             partition=0)
        finally:
            await producer.stop()

    asyncio.run(push())
    print(f"{len(entries)} services sent to {settings.worker.catalog_topic}; running workers apply them within seconds")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from streams.stages.label_policy import load_policy

    policy = load_policy(args.file)  # PolicyError lists every problem
    if args.action == "push":
        settings = _settings(args)
        asyncio.run(_push_policy(settings, open(args.file, "rb").read()))
        print(f"{args.file}: valid, sent to {settings.worker.policy_topic}; running workers apply it within seconds")
        return 0
    print(f"{args.file}: valid — {len(policy.rules)} cardinality rules, redaction mode {policy.redaction.mode}, "
          f"values {policy.redaction.value_action}ed, span names {'templated' if policy.template_span_names else 'kept'}, "
          f"{len(policy.allowed_metric_names) or 'all'} metric name patterns allowed")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from streams.stages.pipeline import Stages

    Stages.from_settings(settings)  # an invalid label policy stops here, with every problem listed
    from sinks.clickhouse import connect
    from sinks.migrations import migrate
    from streams.tools.kafka_admin import ensure_topics

    from sinks.clickhouse import is_retryable

    try:
        for mig in migrate(connect(settings.clickhouse), settings.clickhouse):
            print(f"applied {mig.version:04d}_{mig.name}")
    except Exception as exc:
        if not is_retryable(exc):
            raise
        # ClickHouse is down: start anyway; the agents consume nothing until it answers.
        print(f"ClickHouse is not reachable yet ({exc}); the worker starts and retries", file=sys.stderr)
    asyncio.run(ensure_topics(settings.kafka.bootstrap_servers, _all_topics(settings), settings.kafka.partitions))
    for topic in (settings.worker.policy_topic, settings.worker.catalog_topic, settings.sampling.control_topic):
        asyncio.run(ensure_topics(settings.kafka.bootstrap_servers, [topic], 1, configs={"cleanup.policy": "compact"}))
    from streams.agents.keyed_state import TOPIC_CONFIGS

    asyncio.run(ensure_topics(settings.kafka.bootstrap_servers, [settings.state_topic("series-budget")],
                              settings.kafka.partitions, configs=TOPIC_CONFIGS))
    if settings.sampling.tail:
        from streams.stages.tail_policies import load_policies

        load_policies(settings.sampling.tail_policy_file or None)  # an invalid file stops here, every problem listed
        asyncio.run(ensure_topics(settings.kafka.bootstrap_servers,
                                  [settings.tail_topic(), settings.state_topic("tail-sampling")],
                                  settings.kafka.partitions, configs=TOPIC_CONFIGS))

    import gc

    from faust import Worker

    from streams.agents.app import create_app

    app = create_app(settings)  # an invalid label or tail policy stops here, every problem listed
    # Everything imported so far lives as long as the process: keep it out of GC scans.
    gc.collect()
    gc.freeze()

    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from streams.tools.kafka_admin import ensure_topics
    from streams.tools.producer import FileProblem, produce_file, produce_workload

    asyncio.run(ensure_topics(settings.kafka.bootstrap_servers, _all_topics(settings), settings.kafka.partitions))
    if args.file:
        try:
            sent, problems = asyncio.run(produce_file(settings, args.file, args.signal))
        except (FileProblem, OSError) as exc:
            print(exc, file=sys.stderr)
            return 2
        for problem in problems:
            print(problem, file=sys.stderr)
        print(format_table(["signal", "messages sent"], sorted(sent.items())))
        return 1 if problems else 0
    started = time.monotonic()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    summary = asyncio.run(produce_workload(
        settings, messages=args.messages, traces_per_message=args.traces_per_message, seed=seed,
        encoding=args.encoding, rate=args.rate, duration_s=args.duration, extra_attributes=args.extra_attributes,
    ))
    elapsed = time.monotonic() - started
    data = summary.as_dict()
    if args.json:
        print(orjson.dumps(data).decode())
        return 0
    rows = [
        ("traces", data["traces"]), ("error traces", data["error_traces"]), ("spans", data["spans"]),
        ("error spans", data["error_spans"]), ("logs", data["logs"]), ("logs with trace id", data["logs_with_trace"]),
    ]
    rows += [(f"{kind} points", n) for kind, n in data["metric_points"].items()]
    rows += [(f"{signal} messages", n) for signal, n in data["messages"].items()]
    print(format_table(["sent", "count"], rows))
    print(f"in {elapsed:.1f}s, encoding {args.encoding}, seed {seed} (pass --seed {seed} to send the same again)")
    return 0


def _wait_for_worker(settings: Settings, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with code {proc.returncode}")
        try:
            if query_worker(settings, "SELECT 1", timeout_s=2) is not None:
                return
        except QueryFailed:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the worker did not answer on {worker_url(settings)} within {timeout_s:.0f}s")


def _count(settings: Settings, table: str) -> int:
    answer = query_worker(settings, f"SELECT count() FROM {settings.clickhouse.database}.{table}")
    return int(answer[1][0][0]) if answer else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Broker up, worker on chDB, a workload in, answers out."""
    settings = _settings(args)
    broker = _broker(settings)
    print("kafka:", broker.up(_all_topics(settings)))
    log_path = os.path.abspath(".otelpipe/worker.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    print(f"worker: starting (log in {log_path})")
    with open(log_path, "ab") as log:
        config = ["--config", args.config] if getattr(args, "config", None) else []
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *config, "run"], stdout=log,
                                stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        _wait_for_worker(settings, proc, 180)
        metric_tables = {kind: f"otel_metrics_{kind}" for kind in METRIC_TABLES}
        before = {t: _count(settings, t) for t in ("otel_traces", "otel_logs", *metric_tables.values())}
        summary = asyncio.run(_produce_demo(settings, args))
        want = {"otel_traces": before["otel_traces"] + summary.spans,
                "otel_logs": before["otel_logs"] + summary.logs}
        for kind, points in summary.metric_points.items():  # metrics take one more hop (routed by name)
            want[metric_tables[kind]] = before[metric_tables[kind]] + points
        print(f"produced {summary.spans} spans in {summary.traces} traces, {summary.logs} logs, "
              f"{sum(summary.metric_points.values())} metric points; waiting for ClickHouse ...")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            have = {t: _count(settings, t) for t in want}
            if all(have[t] >= want[t] for t in want):
                break
            time.sleep(1)
        else:
            print(f"timed out waiting for rows: have {have}, want {want}", file=sys.stderr)
            return 1
        db = settings.clickhouse.database
        for title, sql in DEMO_QUESTIONS:
            columns, rows = run_query(settings, sql.format(db=db))
            print(f"\n{title}")
            print(format_table(columns, rows))
        if args.keep_running:
            print(f"\nThe worker keeps running (Ctrl-C stops it). Ask your own questions meanwhile:\n"
                  f"  otelpipe query \"SELECT SpanName, count() FROM {db}.otel_traces GROUP BY SpanName\"")
            proc.wait()
        else:
            print(f"\nAsk your own questions: otelpipe query \"SELECT SpanName, count() FROM {db}.otel_traces "
                  "GROUP BY SpanName\"\nKafka keeps running for more; `otelpipe kafka down` stops it.")
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _produce_demo(settings: Settings, args: argparse.Namespace) -> Any:
    from streams.tools.producer import produce_workload

    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    return await produce_workload(settings, messages=args.messages, traces_per_message=5, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otelpipe", description="OTLP on Kafka → ClickHouse, exact and crash-safe.")
    parser.add_argument("--config", help="TOML settings file (else $OTELPIPE_CONFIG; OTELPIPE_* variables override)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the worker")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema (idempotent)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("kafka", help="the local single-node Kafka broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("query", help="read-only SQL against the configured ClickHouse")
    p.add_argument("sql")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="query parameter, used as {NAME:Type} in the SQL (never pasted into it)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("produce", help="send a synthetic OTLP workload, or an OTLP file (--file)")
    p.add_argument("--messages", type=int, default=200, help="steps to send (a spans, a logs, sometimes a metrics "
                   "message each); 0 with --duration sends until the duration ends")
    p.add_argument("--traces-per-message", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="makes the workload repeatable (default: random, printed)")
    p.add_argument("--encoding", choices=["otlp_proto", "otlp_json"], default="otlp_proto")
    p.add_argument("--extra-attributes", type=int, default=0, help="extra attributes per span")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--file", help="send this OTLP file instead: JSON lines (Collector file exporter) or protobuf")
    p.add_argument("--signal", choices=["traces", "logs", "metrics"], help="the signal of a protobuf --file")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("trace", help="one trace as a waterfall, with its logs")
    p.add_argument("trace_id")
    p.add_argument("--width", type=int, default=40, help="width of the time bars")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("services", help="rate, error ratio and latency per service (from the rollup)")
    p.add_argument("--since", type=parse_duration, default=3600, metavar="DURATION", help="e.g. 15m, 1h, 7d")
    p.add_argument("--by-operation", action="store_true", help="one row per service and span name")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("slo", help="SLIs, error budgets and burn rates; exits 1 when a service is burning")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_slo)

    p = sub.add_parser("cardinality", help="metrics with the most series, and the labels driving them")
    p.add_argument("--since", type=parse_duration, default=3600, metavar="DURATION")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_cardinality)

    p = sub.add_parser("alerts", help="latest alert records")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("replay", help="read a time range of the source topics again; write what is missing")
    p.add_argument("--signal", choices=sorted(REPLAY_SIGNALS), default="all")
    p.add_argument("--from", dest="from_", required=True, metavar="TIME",
                   help="start: 15m, 2h, 7d (ago), Unix ms, or ISO 8601 (UTC unless a zone is given)")
    p.add_argument("--to", default="now", metavar="TIME", help="end, inclusive (default: now)")
    p.add_argument("--partitions", help="comma-separated partitions (default: all)")
    p.add_argument("--rate", type=float, default=0.0, help="at most this many messages per second")
    p.add_argument("--target-db", help="write into this database instead (created and migrated if needed)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dlq", help="dead letters: show them with their reasons, or re-feed them")
    p.add_argument("action", choices=["show", "replay"])
    p.add_argument("--signal", choices=sorted(REPLAY_SIGNALS), default="all")
    p.add_argument("--limit", type=int, default=50, help="show: the most recent N per topic")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("catalog", help="validate a service catalog file, or push it to every running worker")
    p.add_argument("action", choices=["check", "push"])
    p.add_argument("file")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("sampling", help="head sampling rates: show them, or set them in every running worker")
    p.add_argument("action", choices=["show", "set", "clear", "check"])
    p.add_argument("rate", type=float, nargs="?", default=None, help="probability in (0, 1] (set)")
    p.add_argument("--service", default="", help="one service's rate (default: the rate of every other service)")
    p.add_argument("--policies", default="", help="check: a tail sampling policy file (default: sampling.tail_policy_file)")
    p.add_argument("--format", choices=list(FORMATS), default="table")
    p.set_defaults(func=cmd_sampling)

    p = sub.add_parser("policy", help="validate a label policy file, or push it to every running worker")
    p.add_argument("action", choices=["check", "push"])
    p.add_argument("file")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("config", help="show every setting, its value and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="broker + worker on chDB + workload, then answers from ClickHouse")
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep-running", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:
        from streams.stages.catalog import CatalogError
        from streams.stages.label_policy import PolicyError

        if not isinstance(exc, (PolicyError, CatalogError)):
            raise
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
