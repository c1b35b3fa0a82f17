"""Questions answered in SQL: query, trace, services, slo, cardinality, alerts."""

from __future__ import annotations

import argparse
import sys
import time

from streams.cli.common import METRIC_TABLES, QueryFailed, as_dicts, parse_params, run_query, settings_from
from streams.cli.render import FORMATS
from streams.config import with_changes


def cmd_query(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        columns, rows = run_query(settings, args.sql, parse_params(args.param))
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 1
    print(FORMATS[args.format](columns, rows))
    return 0


# The SQL the commands run: {db} is the configured database (a checked identifier); values are
# query parameters ({name:Type}), never pasted into the text.
TRACE_SPANS_SQL = (
    "SELECT TraceId, SpanId, ParentSpanId, ServiceName, SpanName, SpanKind, StatusCode, StatusMessage, "
    "toUnixTimestamp64Nano(Timestamp) AS Timestamp, Duration "
    "FROM {db}.otel_traces WHERE TraceId = {{id:String}} ORDER BY Timestamp")
TRACE_LOGS_SQL = (
    "SELECT SpanId, ServiceName, SeverityText, SeverityNumber, Body, "
    "toUnixTimestamp64Nano(Timestamp) AS Timestamp "
    "FROM {db}.otel_logs WHERE TraceId = {{id:String}} ORDER BY Timestamp")
LATEST_ALERTS_SQL = (
    "SELECT Timestamp, Kind, Service, Name, State, Severity, round(Value, 3) AS Value, Threshold "
    "FROM {db}.otelpipe_alerts ORDER BY Timestamp DESC LIMIT {{n:UInt32}}")


def cmd_trace(args: argparse.Namespace) -> int:
    from streams.cli.waterfall import render_trace

    settings = settings_from(args)
    db = settings.clickhouse.database
    trace_id = args.trace_id.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        print(f"a trace id is 32 hex digits, got {args.trace_id!r}", file=sys.stderr)
        return 2
    try:
        spans = as_dicts(*run_query(settings, TRACE_SPANS_SQL.format(db=db), {"id": trace_id}))
        logs = as_dicts(*run_query(settings, TRACE_LOGS_SQL.format(db=db), {"id": trace_id}))
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    if not spans:
        print(f"no spans of trace {trace_id}" + (f" ({len(logs)} logs)" if logs else ""), file=sys.stderr)
        return 1
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print("\n".join(render_trace(spans, logs, width=args.width, color=color)))
    return 0


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
    settings = settings_from(args)
    now = int(time.time())
    try:
        columns, rows = run_query(settings, services_query(settings.clickhouse.database, args.by_operation),
                                  {"now": now, "since": args.since})
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    out = []
    for rec in as_dicts(columns, rows):
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

    settings = settings_from(args)
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
    settings = settings_from(args)
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
    settings = settings_from(args)
    try:
        columns, rows = run_query(settings, LATEST_ALERTS_SQL.format(db=settings.clickhouse.database),
                                  {"n": args.limit})
    except QueryFailed as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    print(FORMATS[args.format](columns, rows))
    return 0
