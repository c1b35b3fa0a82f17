"""The worker and its demo: run, demo, produce, migrate."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import orjson

from streams.cli.common import (
    METRIC_TABLES,
    QueryFailed,
    WrongStore,
    all_topics,
    local_broker,
    query_worker,
    run_query,
    settings_from,
    worker_url,
)
from streams.cli.render import format_table
from streams.config import Settings

COUNT_ROWS_SQL = "SELECT count() FROM {db}.{table}"
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


def warn_of_undersized_topics(settings) -> None:
    """Name the topics otelpipe writes that exist with a smaller max.message.bytes than it needs."""
    from streams.tools.kafka_admin import topic_max_message_bytes, undersized_topics

    written = settings.routed_topics() + [settings.dlq_topic(t) for t in settings.source_topics()
                                          + settings.routed_topics()]
    try:
        limits = asyncio.run(topic_max_message_bytes(settings.kafka, written))
    except Exception as exc:  # a broker that will not describe configs: nothing to warn about
        print(f"could not read the topics' max.message.bytes ({type(exc).__name__})", file=sys.stderr)
        return
    for warning in undersized_topics(limits, settings.record_max_bytes()):
        print(f"warning: {warning}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from streams.stages.pipeline import Stages

    Stages.from_settings(settings)  # an invalid label policy stops here, with every problem listed
    from sinks.clickhouse import connect, is_retryable
    from sinks.migrations import migrate
    from streams.tools.kafka_admin import ensure_topics

    try:
        for step in migrate(connect(settings.clickhouse), settings.clickhouse):
            print(f"{step.table}: {step.what}")
    except Exception as exc:
        if not is_retryable(exc):
            raise
        # ClickHouse is down: start anyway; the agents consume nothing until it answers.
        from streams import masking

        print(masking.mask(f"ClickHouse is not reachable yet ({exc}); the worker starts and retries",
                           masking.secret_values(settings)), file=sys.stderr)
    asyncio.run(ensure_topics(settings.kafka, all_topics(settings), settings.kafka.partitions,
                              configs=settings.topic_configs()))
    warn_of_undersized_topics(settings)
    for topic in (settings.worker.policy_topic, settings.worker.catalog_topic, settings.sampling.control_topic):
        asyncio.run(ensure_topics(settings.kafka, [topic], 1,
                                  configs=settings.topic_configs(**{"cleanup.policy": "compact"})))
    from streams.agents.keyed_state import TOPIC_CONFIGS

    asyncio.run(ensure_topics(settings.kafka, [settings.state_topic("series-budget")],
                              settings.kafka.partitions, configs=settings.topic_configs(**TOPIC_CONFIGS)))
    if settings.sampling.tail:
        from streams.stages.tail_policies import load_policies

        load_policies(settings.sampling.tail_policy_file or None)  # an invalid file stops here, every problem listed
        asyncio.run(ensure_topics(settings.kafka,
                                  [settings.tail_topic(), settings.state_topic("tail-sampling")],
                                  settings.kafka.partitions, configs=settings.topic_configs(**TOPIC_CONFIGS)))

    import gc

    from faust import Worker

    from streams.agents.app import create_app

    app = create_app(settings)  # an invalid label or tail policy stops here, every problem listed
    # Everything imported so far lives as long as the process: keep it out of GC scans.
    gc.collect()
    gc.freeze()

    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    # faust's terminal spinner, at a log level of WARN and above, sets the root logger to DEBUG (to
    # spin on every record): every debug call of aiokafka and faust would then make a record,
    # formatting a whole produced value into it. No spinner: the level is the one asked for.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from streams.tools.kafka_admin import ensure_topics
    from streams.tools.producer import FileProblem, produce_file, produce_workload

    asyncio.run(ensure_topics(settings.kafka, all_topics(settings), settings.kafka.partitions,
                              configs=settings.topic_configs()))
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
        except WrongStore as exc:
            raise SystemExit(str(exc)) from None
        except QueryFailed:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the worker did not answer on {worker_url(settings)} within {timeout_s:.0f}s")


def _count(settings: Settings, table: str) -> int:
    answer = query_worker(settings, COUNT_ROWS_SQL.format(db=settings.clickhouse.database, table=table))
    return int(answer[1][0][0]) if answer else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Broker up, worker on chDB, a workload in, answers out."""
    settings = settings_from(args)
    broker = local_broker(settings)
    print("kafka:", broker.up(all_topics(settings)))
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


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from sinks.clickhouse import connect
    from sinks.migrations import migrate

    client = connect(settings.clickhouse)
    if getattr(args, "plan", False):
        from sinks.migrations import plan

        todo = plan(client, settings.clickhouse)
        lines = todo.lines()
        print("\n".join(lines) if todo.steps else "\n".join(["schema is up to date"] + lines))
        if todo.steps:
            print(f"{len(todo.steps)} step(s); `otelpipe migrate` takes them (metadata only: no table is rewritten)")
        return 0
    applied = migrate(client, settings.clickhouse)
    if applied:
        for step in applied:
            print(f"{step.table}: {step.what}")
        print(f"schema is up to date ({len(applied)} step(s) taken)")
    else:
        print("schema is up to date")
    return 0
