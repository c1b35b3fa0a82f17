"""The Grafana ClickHouse data source's OpenTelemetry queries run unchanged on otelpipe's tables.

Every statement below is the SQL the plugin (github.com/grafana/clickhouse-datasource) sends for
its OpenTelemetry views, copied from its source: the query builder's output
(src/data/sqlGenerator.ts, the exact strings of src/data/sqlGenerator.test.ts where a test pins
them, otherwise what the generator emits for the OTel column map of src/otel.ts), the log volume
and trace/log links (src/data/CHDatasource.ts, src/data/utils.ts, src/data/logs.ts), the schema
probes it makes before building a trace query, and the bundled OTel dashboards
(src/dashboards/*.json). The plugin's own macros are then expanded the way its backend does
(pkg/macros/macros.go) for one fixed time range, and Grafana's variables the way its frontend does.

Each query runs against two databases holding the same spans, logs and gauge points, written by
otelpipe's writer: one otelpipe made (``migrate``), and one the Collector's ClickHouse exporter
v0.165.1 made from its own DDL and otelpipe then adopted.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from sinks.clickhouse import ClickHouseSink
from sinks.migrations import migrate
from sinks.settings import ClickHouseSettings
from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from tests.exporter_ddl import create_statements, render_for
from tests.otlp_builders import kv

PLUGIN = "grafana/clickhouse-datasource"
#: The release the queries come from (tag v4.20.0).
RELEASE = "v4.20.0 (973c4a508220c378ef8a477f3133bba935ca2345)"
#: Its main branch, where the trace-by-id query's WITH aliases gained a __gf_ prefix after v4.20.0.
MAIN = "main (1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf)"
EXPORTER = "v0.165.1"

# ------------------------------------------------------------------------------------------ data

T0_S = int(dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp())
T0 = T0_S * 10**9
MS = 10**6
#: The dashboard's time range and interval: ten minutes around the data, one-minute buckets.
FROM_S, TO_S, INTERVAL_S = T0_S - 300, T0_S + 300, 60

TRACE_A, TRACE_B = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT_A, CHILD_A, ROOT_B = "b7ad6b7169203331", "00f067aa0ba902b7", "53995c3f42cd8ad8"


def spans_request() -> ExportTraceServiceRequest:
    """Trace A: frontend's root span calling checkout's span, which fails, records an exception
    event and links to trace B. Trace B: one root span, a second later."""
    req = ExportTraceServiceRequest()

    def service(name: str):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([kv("service.name", string_value=name),
                                       kv("k8s.namespace.name", string_value="shop")])
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = "io.opentelemetry.http", "1.0.0"
        return ss

    frontend, checkout = service("frontend"), service("checkout")
    root = frontend.spans.add(trace_id=bytes.fromhex(TRACE_A), span_id=bytes.fromhex(ROOT_A),
                              name="GET /checkout", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                              start_time_unix_nano=T0, end_time_unix_nano=T0 + 20 * MS)
    root.attributes.extend([kv("http.route", string_value="/checkout"),
                            kv("http.response.status_code", int_value=200)])
    child = checkout.spans.add(trace_id=bytes.fromhex(TRACE_A), span_id=bytes.fromhex(CHILD_A),
                               parent_span_id=bytes.fromhex(ROOT_A), trace_state="vendor=1",
                               name="charge card", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                               start_time_unix_nano=T0 + 2 * MS, end_time_unix_nano=T0 + 7 * MS)
    child.attributes.append(kv("payment.provider", string_value="acme"))
    child.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    child.status.message = "card declined"
    event = child.events.add(time_unix_nano=T0 + 6 * MS, name="exception")
    event.attributes.append(kv("exception.type", string_value="CardDeclined"))
    link = child.links.add(trace_id=bytes.fromhex(TRACE_B), span_id=bytes.fromhex(ROOT_B))
    link.attributes.append(kv("link.kind", string_value="follows"))
    frontend.spans.add(trace_id=bytes.fromhex(TRACE_B), span_id=bytes.fromhex(ROOT_B), name="GET /health",
                       kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=T0 + 1000 * MS,
                       end_time_unix_nano=T0 + 1001 * MS)
    return req


def logs_request() -> ExportLogsServiceRequest:
    """Two logs of trace A (one per span), and one of no trace in the next minute."""
    req = ExportLogsServiceRequest()
    for name, records in (
        ("checkout", [(T0 + 3 * MS, 17, "ERROR", "payment failed: card declined", TRACE_A, CHILD_A)]),
        ("frontend", [(T0 + 1 * MS, 9, "INFO", "checkout started", TRACE_A, ROOT_A),
                      (T0 + 90_000 * MS, 13, "WARN", "slow health check", "", "")]),
    ):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend([kv("service.name", string_value=name),
                                       kv("k8s.namespace.name", string_value="shop")])
        sl = rl.scope_logs.add()
        sl.scope.name = "io.opentelemetry.logs"
        for time_ns, number, text, body, trace_id, span_id in records:
            rec = sl.log_records.add(time_unix_nano=time_ns, observed_time_unix_nano=time_ns, severity_number=number,
                                     severity_text=text, trace_id=bytes.fromhex(trace_id),
                                     span_id=bytes.fromhex(span_id))
            rec.body.string_value = body
            rec.attributes.append(kv("logger", string_value=name))
    return req


def gauge_request() -> ExportMetricsServiceRequest:
    """checkout's queue.depth at T0 (3) and a minute later (5), each with an exemplar of trace A.

    Every point has an exemplar: a point without one is not written into the exporter's table,
    whose Exemplars.TimeUnix is DateTime (the writer's scaling of that column to seconds takes
    only lists, and a point without exemplars has an empty tuple there).
    """
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", string_value="checkout"))
    metric = rm.scope_metrics.add().metrics.add(name="queue.depth", unit="{item}")
    for time_ns, value in ((T0, 3), (T0 + 60_000 * MS, 5)):
        point = metric.gauge.data_points.add(time_unix_nano=time_ns, as_int=value)
        point.attributes.append(kv("queue", string_value="payments"))
        point.exemplars.add(time_unix_nano=time_ns, as_int=value, trace_id=bytes.fromhex(TRACE_A),
                            span_id=bytes.fromhex(CHILD_A))
    return req


def write_data(client: Any, database: str) -> None:
    sink = ClickHouseSink(client, ClickHouseSettings(database=database), "grafana")
    for signal, request in (("traces", spans_request()), ("logs", logs_request()), ("metrics", gauge_request())):
        decoded = decode_messages(signal, [RawMessage(signal, 0, 0, request.SerializeToString())])
        assert not decoded.dead_letters
        for table, batch in decoded.batches.items():
            sink.write(batch, token=f"grafana-{table}")


@pytest.fixture(params=["otelpipe", "exporter"])
def database(request, chdb_client) -> str:
    """A database with the spans, logs and gauge points above: one otelpipe created, or one the
    exporter created and otelpipe adopted."""
    if request.param == "otelpipe":
        settings = request.getfixturevalue("ch_settings")
        name = settings.database
    else:
        name = f"exp_{uuid.uuid4().hex[:10]}"
        chdb_client.command(f"CREATE DATABASE {name}")
        for sql in create_statements(EXPORTER, fulltext=True).values():
            chdb_client.command(render_for(sql, name))
        migrate(chdb_client, ClickHouseSettings(database=name))
        request.addfinalizer(lambda: chdb_client.command(f"DROP DATABASE IF EXISTS {name} SYNC"))
    write_data(chdb_client, name)
    return name


# ------------------------------------------------------------------------- macros and variables

#: Dashboard variables: ${service} set to one service, every multi-value variable at "All" and
#: the free-text ones empty, so each $__conditionalAll(...) becomes 1=1.
VARIABLES = {"service": "checkout"}


def macro_calls(sql: str, name: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, arguments) of each ``$__name(...)`` call, arguments split at top-level commas."""
    calls = []
    for match in re.finditer(re.escape(f"$__{name}") + r"\(", sql):
        depth, quote, args, start = 1, "", [], match.end()
        i = start
        while depth:
            c = sql[i]
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"`":
                quote = c
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(sql[start:i].strip())
                start = i + 1
            i += 1
        args.append(sql[start:i - 1].strip())
        calls.append((match.start(), i, args))
    return calls


def replace_calls(sql: str, name: str, render: Callable[[list[str]], str]) -> str:
    for start, end, args in reversed(macro_calls(sql, name)):
        sql = sql[:start] + render(args) + sql[end:]
    return sql


def expand(sql: str, database: str) -> str:
    """The statement as ClickHouse receives it.

    Frontend first (CHDatasource.applyConditionalAll, then Grafana's variables), then the backend's
    macros (pkg/macros/macros.go): $__fromTime and $__toTime are toDateTime(<unix seconds>),
    $__timeFilter(c) is ``c >= toDateTime(from) AND c <= toDateTime(to)``, $__timeInterval(c) is
    ``toStartOfInterval(toDateTime(c), INTERVAL <interval seconds> second)`` and $__interval_s the
    interval in seconds. The plugin's database "otel" and the dashboards' unqualified OTel tables
    (they rely on the data source's default database) are set to ``database``.
    """
    sql = replace_calls(sql, "conditionalAll", lambda args: "1=1")
    sql = re.sub(r"\$\{(\w+):singlequote\}", lambda m: f"'{VARIABLES[m[1]]}'", sql)
    sql = re.sub(r"\$\{(\w+)\}", lambda m: VARIABLES[m[1]], sql)
    sql = replace_calls(sql, "timeFilter",
                        lambda a: f"{a[0]} >= toDateTime({FROM_S}) AND {a[0]} <= toDateTime({TO_S})")
    sql = replace_calls(sql, "timeInterval",
                        lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {INTERVAL_S} second)")
    sql = re.sub(r"\$__fromTime(?!_)", f"toDateTime({FROM_S})", sql)
    sql = re.sub(r"\$__toTime(?!_)", f"toDateTime({TO_S})", sql)
    sql = re.sub(r"\$__interval_s\b", str(INTERVAL_S), sql)
    assert "$" not in sql, sql
    sql = sql.replace('"otel"', f'"{database}"')
    return re.sub(r"\b(FROM|JOIN)\s+(otel_\w+)", rf"\1 {database}.\2", sql)


# ------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class PluginQuery:
    name: str
    #: Where the plugin has it: file, test or dashboard panel, and version.
    source: str
    sql: str
    #: Asserts the answer: (column names, rows).
    check: Callable[[list[str], list[tuple]], None]


def ms(ns: int) -> float:
    return ns / MS


def utc(value: Any) -> dt.datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def at(ns: int) -> dt.datetime:
    """The UTC instant of a nanosecond time, to the microsecond (as the client returns it)."""
    return dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).replace(microsecond=ns % 10**9 // 1000)


def as_dicts(columns: list[str], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row)) for row in rows]


def pairs(kvs: list[dict[str, str]]) -> dict[str, str]:
    """The trace panel's [{key, value}, ...] as a dict."""
    return {item["key"]: item["value"] for item in kvs}


# The columns of Grafana's trace data frame, in the order generateTraceIdQuery emits them for the
# OTel column map (src/otel.ts traceColumnMap: SpanKind, StatusMessage and TraceState included).
TRACE_FRAME = ["traceID", "spanID", "parentSpanID", "serviceName", "operationName", "startTime", "duration",
               "tags", "serviceTags", "statusCode", "logs", "references", "kind", "statusMessage", "traceState"]


def check_trace_a(columns: list[str], rows: list[tuple], frame: list[str] = TRACE_FRAME) -> None:
    assert columns == frame
    spans = sorted(as_dicts(columns, rows), key=lambda s: s["startTime"])
    assert [(s["traceID"], s["spanID"], s["parentSpanID"], s["serviceName"], s["operationName"]) for s in spans] == [
        (TRACE_A, ROOT_A, "", "frontend", "GET /checkout"),
        (TRACE_A, CHILD_A, ROOT_A, "checkout", "charge card"),
    ]
    # the plugin multiplies by 0.000001: milliseconds as floats, to within rounding
    assert [s["startTime"] for s in spans] == pytest.approx([ms(T0), ms(T0 + 2 * MS)], abs=1e-3)
    assert [s["duration"] for s in spans] == pytest.approx([20.0, 5.0])
    assert [s["statusCode"] for s in spans] == [0, 2]
    root, child = spans
    assert pairs(root["tags"]) == {"http.route": "/checkout", "http.response.status_code": "200"}
    assert pairs(child["serviceTags"]) == {"service.name": "checkout", "k8s.namespace.name": "shop"}
    if "kind" in frame:
        assert [s["kind"] for s in spans] == ["Server", "Server"]
        assert child["statusMessage"] == "card declined" and child["traceState"] == "vendor=1"
    if "logs" in frame:
        assert root["logs"] == [] and root["references"] == []


def check_events_and_links(columns: list[str], rows: list[tuple]) -> None:
    check_trace_a(columns, rows)
    child = next(s for s in as_dicts(columns, rows) if s["spanID"] == CHILD_A)
    # the named tuples the plugin casts to, one per event and link
    assert child["logs"] == [{"name": "exception", "timestamp": str((T0 + 6 * MS) // MS),
                              "fields": [{"key": "exception.type", "value": "CardDeclined"}]}]
    assert child["references"] == [{"traceID": TRACE_B, "spanID": ROOT_B,
                                    "tags": [{"key": "link.kind", "value": "follows"}]}]


def check_events_and_links_flattened(columns: list[str], rows: list[tuple]) -> None:
    check_trace_a(columns, rows)
    child = next(s for s in as_dicts(columns, rows) if s["spanID"] == CHILD_A)
    [event] = child["logs"]
    assert event["timestamp"] == pytest.approx((T0 + 6 * MS) / 10**9 * 1000)
    assert event["fields"] == [{"key": "exception.type", "value": "CardDeclined"},
                               {"key": "message", "value": "exception"}]
    assert child["references"] == [{"traceID": TRACE_B, "spanID": ROOT_B,
                                    "tags": [{"key": "link.kind", "value": "follows"}]}]


LOG_FRAME = ["timestamp", "body", "level", "traceID", "ResourceAttributes", "ScopeAttributes", "LogAttributes"]


def check_logs(columns: list[str], rows: list[tuple]) -> None:
    assert columns == LOG_FRAME
    logs = as_dicts(columns, rows)
    assert [(utc(r["timestamp"]), r["body"], r["level"], r["traceID"]) for r in logs] == [
        (at(T0 + 90_000 * MS), "slow health check", "WARN", ""),
        (at(T0 + 3 * MS), "payment failed: card declined", "ERROR", TRACE_A),
        (at(T0 + 1 * MS), "checkout started", "INFO", TRACE_A),
    ]
    assert logs[1]["ResourceAttributes"]["service.name"] == "checkout"
    assert logs[1]["LogAttributes"] == {"logger": "checkout"}
    assert logs[1]["ScopeAttributes"] == {}


def check_trace_logs(columns: list[str], rows: list[tuple]) -> None:
    assert columns == LOG_FRAME
    assert [(r["body"], r["traceID"]) for r in as_dicts(columns, rows)] == [
        ("checkout started", TRACE_A), ("payment failed: card declined", TRACE_A)]


LEVELS = ["critical", "error", "warn", "info", "debug", "trace", "unknown"]


def check_log_volume(columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["time", *LEVELS]
    assert [(utc(r[0]), dict(zip(LEVELS, r[1:]))) for r in rows] == [
        (at(T0), {**dict.fromkeys(LEVELS, 0), "error": 1, "info": 1}),
        (at(T0 + 60_000 * MS), {**dict.fromkeys(LEVELS, 0), "warn": 1}),
    ]


def check_trace_search(columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["traceID", "serviceName", "operationName", "startTime", "duration"]
    assert [(r[0], r[1], r[2], utc(r[3])) for r in rows] == [
        (TRACE_B, "frontend", "GET /health", at(T0 + 1000 * MS)),
        (TRACE_A, "frontend", "GET /checkout", at(T0)),
    ]
    assert [r[4] for r in rows] == pytest.approx([1.0, 20.0])


def check_gauge_trend(columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["time", "value"]
    assert [(utc(t), v) for t, v in rows] == [(at(T0), 3.0), (at(T0 + 60_000 * MS), 5.0)]


def check_show_tables(columns: list[str], rows: list[tuple]) -> None:
    tables = {r[0] for r in rows}
    assert {"otel_traces", "otel_traces_trace_id_ts", "otel_logs", "otel_metrics_gauge"} <= tables


def check_trace_id_ts_columns(columns: list[str], rows: list[tuple]) -> None:
    # CHDatasource.hasTraceTimestampTable: the lookup form is used only with all three columns
    assert {"Start", "End", "TraceId"} <= {r[0] for r in rows}


def check_logs_columns(columns: list[str], rows: list[tuple]) -> None:
    # otel.detectLogsVersion: no TimestampTime column picks the 1.3.0 column map, whose columns
    # must all be there
    names = {r[0] for r in rows}
    assert "TimestampTime" not in names
    assert {"Timestamp", "Body", "SeverityText", "TraceId", "ResourceAttributes", "ScopeAttributes",
            "LogAttributes"} <= names


def check_traces_columns(columns: list[str], rows: list[tuple]) -> None:
    # the traceColumnMap's columns, and Map (not JSON) attributes: the mapKeys() form of tags
    types = {r[0]: r[1] for r in rows}
    for name in ("Timestamp", "TraceId", "SpanId", "ParentSpanId", "ServiceName", "SpanName", "Duration",
                 "SpanAttributes", "ResourceAttributes", "StatusCode", "SpanKind", "StatusMessage", "TraceState",
                 "Events.Timestamp", "Events.Name", "Events.Attributes", "Links.TraceId", "Links.SpanId",
                 "Links.Attributes"):
        assert name in types, name
    assert types["SpanAttributes"].startswith("Map(") and types["ResourceAttributes"].startswith("Map(")


def rows_equal(expected: list[tuple], columns: list[str] | None = None, key: Callable | None = None):
    def check(got_columns: list[str], rows: list[tuple]) -> None:
        if columns is not None:
            assert got_columns == columns
        got = [tuple(r) for r in rows]
        assert (sorted(got, key=key) if key else got) == expected

    return check


# generateTraceIdQuery's parts for the OTel column map (src/otel.ts traceColumnMap), joined with
# single spaces as the generator joins them; sqlGenerator.test.ts pins the same text for
# "generates trace ID query with additional fields, flatten nested disabled" / "... enabled" and
# "... without the time range optimization when the trace timestamp table does not exist".
TRACE_SPAN_COLUMNS = (
    """SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, """
    """"ServiceName" as serviceName, "SpanName" as operationName, """
    """multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime, """
    """multiply("Duration", 0.000001) as duration, """
    """arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags, """
    """arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) """
    """as serviceTags, """
    """if("StatusCode" IN ('Error', 'STATUS_CODE_ERROR'), 2, 0) as statusCode"""
)
TRACE_EVENTS_LINKS = (
    """arrayMap((name, timestamp, attributes) -> tuple(name, toString(toUnixTimestamp64Milli(timestamp)), """
    """arrayMap(key -> map('key', key, 'value', attributes[key]), mapKeys(attributes)))"""
    """::Tuple(name String, timestamp String, fields Array(Map(String, String))), "Events".Name, """
    """"Events".Timestamp, "Events".Attributes) AS logs, """
    """arrayMap((traceID, spanID, attributes) -> tuple(traceID, spanID, arrayMap(key -> map('key', key, 'value', """
    """attributes[key]), mapKeys(attributes)))::Tuple(traceID String, spanID String, """
    """tags Array(Map(String, String))), "Links".TraceId, "Links".SpanId, "Links".Attributes) AS references"""
)
TRACE_EVENTS_LINKS_FLATTENED = (
    """arrayMap(event -> tuple(multiply(toFloat64(event.Timestamp), 1000), arrayConcat(arrayMap(key -> map('key', """
    """key, 'value', event.Attributes[key]), mapKeys(event.Attributes)), [map('key', 'message', 'value', """
    """event.Name)]))::Tuple(timestamp Float64, fields Array(Map(String, String))), "Events") as logs, """
    """arrayMap(link -> tuple(link.TraceId, link.SpanId, arrayMap(key -> map('key', key, 'value', """
    """link.Attributes[key]), mapKeys(link.Attributes)))::Tuple(traceID String, spanID String, """
    """tags Array(Map(String, String))), "Links") AS references"""
)
TRACE_OTEL_COLUMNS = """"SpanKind" as kind, "StatusMessage" as statusMessage, "TraceState" as traceState"""


def trace_by_id(events_links: str, prefix: str = "") -> str:
    """The trace-by-id query with the otel_traces_trace_id_ts start/end lookup; ``prefix`` is the
    WITH aliases' prefix (none in the release, ``__gf_`` on main)."""
    trace_id, start, end = f"{prefix}trace_id", f"{prefix}trace_start", f"{prefix}trace_end"
    return (
        f"""WITH '{TRACE_A}' as {trace_id}, (SELECT min(Start) FROM "otel"."otel_traces_trace_id_ts" """
        f"""WHERE TraceId = {trace_id}) as {start}, (SELECT max(End) + 1 FROM "otel"."otel_traces_trace_id_ts" """
        f"""WHERE TraceId = {trace_id}) as {end} """
        f"""{TRACE_SPAN_COLUMNS}, {events_links}, {TRACE_OTEL_COLUMNS} FROM "otel"."otel_traces" """
        f"""WHERE traceID = {trace_id} AND "Timestamp" >= {start} AND "Timestamp" <= {end}"""
    )


LOG_LEVEL_SUMS = ", ".join(
    f"sum(multiSearchAny(toString(\"SeverityText\"), [{values}])) as {level}" for level, values in (
        ("critical", "'critical','fatal','crit','alert','emerg','CRITICAL','FATAL','CRIT','ALERT','EMERG',"
                     "'Critical','Fatal','Crit','Alert','Emerg'"),
        ("error", "'error','err','eror','ERROR','ERR','EROR','Error','Err','Eror'"),
        ("warn", "'warn','warning','WARN','WARNING','Warn','Warning'"),
        ("info", "'info','information','informational','INFO','INFORMATION','INFORMATIONAL','Info','Information',"
                 "'Informational'"),
        ("debug", "'debug','dbug','DEBUG','DBUG','Debug','Dbug'"),
        ("trace", "'trace','TRACE','Trace'"),
        ("unknown", "'unknown','UNKNOWN','Unknown'"),
    )
)

QUERIES = [
    # ---- schema probes made before a trace or logs query is built (src/data/CHDatasource.ts)
    PluginQuery("show tables", f"CHDatasource.fetchTables, {RELEASE}", 'SHOW TABLES FROM "otel"', check_show_tables),
    PluginQuery("trace id ts columns", f"CHDatasource.hasTraceTimestampTable → fetchColumnsFromTable, {RELEASE}",
                'DESC TABLE "otel"."otel_traces_trace_id_ts"', check_trace_id_ts_columns),
    PluginQuery("logs columns", f"logsQueryBuilderHooks.useOtelColumns → otel.detectLogsVersion, {RELEASE}",
                'DESC TABLE "otel"."otel_logs"', check_logs_columns),
    PluginQuery("traces columns", f"utils.ts stampJsonColumnTypes (tags as Map or JSON), {RELEASE}",
                'DESC TABLE "otel"."otel_traces"', check_traces_columns),
    # ---- traces (src/data/sqlGenerator.ts generateTraceSearchQuery / generateTraceIdQuery)
    PluginQuery(
        "trace search", f'sqlGenerator.test.ts "generates trace search query" (the default trace filters), {RELEASE}',
        """SELECT "TraceId" as traceID, "ServiceName" as serviceName, "SpanName" as operationName, """
        """"Timestamp" as startTime, multiply("Duration", 0.000001) as duration FROM "otel"."otel_traces" """
        """WHERE ( Timestamp >= $__fromTime AND Timestamp <= $__toTime ) AND ( ParentSpanId = '' ) """
        """AND ( Duration > 0 ) ORDER BY Timestamp DESC, Duration DESC LIMIT 1000""",
        check_trace_search),
    PluginQuery(
        "trace by id",
        f'generateTraceIdQuery with otel_traces_trace_id_ts: the "View trace" link of a log and the trace panel, '
        f'{RELEASE}',
        trace_by_id(TRACE_EVENTS_LINKS),
        check_events_and_links),
    PluginQuery(
        "trace by id, main", f"generateTraceIdQuery with otel_traces_trace_id_ts (__gf_ WITH aliases), {MAIN}",
        trace_by_id(TRACE_EVENTS_LINKS, prefix="__gf_"),
        check_events_and_links),
    PluginQuery(
        "trace by id, flatten nested", f"generateTraceIdQuery, the data source's flattenNested on, {RELEASE}",
        trace_by_id(TRACE_EVENTS_LINKS_FLATTENED),
        check_events_and_links_flattened),
    PluginQuery(
        "trace by id, no lookup table", f"generateTraceIdQuery, hasTraceTimestampTable false, {RELEASE}",
        f"""{TRACE_SPAN_COLUMNS} FROM "otel"."otel_traces" WHERE traceID = '{TRACE_A}'""",
        lambda c, r: check_trace_a(c, r, TRACE_FRAME[:10])),
    # ---- logs (generateLogsQuery with the OTel 1.3.0 columns and the default filters and order)
    PluginQuery(
        "logs", f"generateLogsQuery, OTel columns (sqlGenerator.test.ts v0.151.0+ schema test), {RELEASE}",
        """SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level", TraceId as "traceID", """
        """ResourceAttributes, ScopeAttributes, LogAttributes FROM "otel"."otel_logs" """
        """WHERE ( timestamp >= $__fromTime AND timestamp <= $__toTime ) ORDER BY timestamp DESC LIMIT 1000""",
        check_logs),
    PluginQuery(
        "log volume", f"CHDatasource.getSupplementaryLogsVolumeQuery (CHDatasource.test.ts), {RELEASE}",
        f"""SELECT toStartOfInterval("Timestamp", INTERVAL 1 MINUTE) as "time", {LOG_LEVEL_SUMS} """
        """FROM "otel"."otel_logs" WHERE ( time >= $__fromTime AND time <= $__toTime ) """
        """GROUP BY time ORDER BY time ASC""",
        check_log_volume),
    PluginQuery(
        "trace to logs", f'utils.ts "View logs" link of a trace id (log defaults, TraceId filter), {RELEASE}',
        """SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level", TraceId as "traceID", """
        """ResourceAttributes, ScopeAttributes, LogAttributes FROM "otel"."otel_logs" """
        f"""WHERE ( traceID = '{TRACE_A}' ) ORDER BY timestamp ASC""",
        check_trace_logs),
    # ---- metrics: the time series builder in aggregate (Trend) mode over the exporter's gauge table
    PluginQuery(
        "gauge time series", f"generateAggregateTimeSeriesQuery, {RELEASE}",
        """SELECT $__timeInterval(TimeUnix) as "time", avg(Value) as value FROM "otel"."otel_metrics_gauge" """
        """WHERE ( TimeUnix >= $__fromTime AND TimeUnix <= $__toTime ) AND ( MetricName = 'queue.depth' ) """
        """GROUP BY time ORDER BY time ASC LIMIT 1000""",
        check_gauge_trend),
    # ---- the bundled OTel dashboards (src/dashboards/*.json, panel rawSql)
    PluginQuery(
        "service requests per second", f"otel-service-dashboard.json, {RELEASE}",
        "SELECT toStartOfInterval(Timestamp, INTERVAL $__interval_s second) AS time, count() / $__interval_s AS rps "
        "FROM otel_traces WHERE $__timeFilter(Timestamp) AND ServiceName = '${service}' AND SpanKind = 'Server' "
        "AND $__conditionalAll(SpanName IN ($operation), $operation) "
        "AND $__conditionalAll(hasToken(SpanName, '$search'), $search) GROUP BY time ORDER BY time",
        lambda c, r: rows_equal([(at(T0), 1 / 60)])(c, [(utc(t), v) for t, v in r])),
    PluginQuery(
        "service error rate", f"otel-service-dashboard.json, {RELEASE}",
        "SELECT toStartOfInterval(Timestamp, INTERVAL $__interval_s second) AS time, "
        "countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR')) / count() AS error_rate FROM otel_traces "
        "WHERE $__timeFilter(Timestamp) AND ServiceName = '${service}' AND SpanKind = 'Server' "
        "AND $__conditionalAll(SpanName IN ($operation), $operation) "
        "AND $__conditionalAll(hasToken(SpanName, '$search'), $search) GROUP BY time ORDER BY time",
        lambda c, r: rows_equal([(at(T0), 1.0)])(c, [(utc(t), v) for t, v in r])),
    PluginQuery(
        "service latency", f"otel-service-dashboard.json, {RELEASE}",
        "SELECT toStartOfInterval(Timestamp, INTERVAL $__interval_s second) AS time, quantile(0.5)(Duration) AS p50, "
        "quantile(0.9)(Duration) AS p90, quantile(0.99)(Duration) AS p99 FROM otel_traces "
        "WHERE $__timeFilter(Timestamp) AND ServiceName = '${service}' AND SpanKind = 'Server' "
        "AND $__conditionalAll(SpanName IN ($operation), $operation) "
        "AND $__conditionalAll(hasToken(SpanName, '$search'), $search) GROUP BY time ORDER BY time",
        lambda c, r: rows_equal([(at(T0), 5e6, 5e6, 5e6)])(c, [(utc(r0[0]), *r0[1:]) for r0 in r])),
    PluginQuery(
        "service errors", f"otel-service-dashboard.json, {RELEASE}",
        "SELECT SpanName AS Operation, SpanKind AS Kind, StatusMessage AS Error, count() AS Count, "
        "max(Timestamp) AS \"Last Seen\" FROM otel_traces WHERE $__timeFilter(Timestamp) "
        "AND ServiceName = '${service}' AND StatusCode IN ('Error', 'STATUS_CODE_ERROR') "
        "AND $__conditionalAll(hasToken(SpanName, '$search'), $search) "
        "GROUP BY SpanName, SpanKind, StatusMessage ORDER BY Count DESC LIMIT 20",
        lambda c, r: rows_equal([("charge card", "Server", "card declined", 1, at(T0 + 2 * MS))],
                                ["Operation", "Kind", "Error", "Count", "Last Seen"])(
            c, [(*r0[:4], utc(r0[4])) for r0 in r])),
    PluginQuery(
        "service logs", f"otel-service-dashboard.json, {RELEASE}",
        "SELECT Timestamp AS timestamp, Body AS body, SeverityText AS level, ServiceName, TraceId, SpanId "
        "FROM otel_logs WHERE $__timeFilter(Timestamp) AND ServiceName = '${service}' "
        "AND $__conditionalAll(hasToken(Body, '$search'), $search) ORDER BY Timestamp DESC LIMIT 200",
        lambda c, r: rows_equal([("payment failed: card declined", "ERROR", "checkout", TRACE_A, CHILD_A)])(
            c, [tuple(r0[1:]) for r0 in r])),
    PluginQuery(
        "service map nodes", f"otel-traces-explorer.json, {RELEASE}",
        "SELECT\n  ServiceName AS id,\n  ServiceName AS title,\n  concat(toString(count()), ' spans') AS mainstat,\n"
        "  concat(toString(round(avg(Duration) / 1000000, 1)), ' ms avg') AS secondarystat,\n"
        "  (count() - countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR'))) / count() AS arc__success,\n"
        "  countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR')) / count() AS arc__errors\nFROM otel_traces\n"
        "WHERE $__timeFilter(Timestamp)\nGROUP BY ServiceName\nORDER BY count() DESC\nLIMIT 30",
        rows_equal([("frontend", "frontend", "2 spans", "10.5 ms avg", 1.0, 0.0),
                     ("checkout", "checkout", "1 spans", "5 ms avg", 0.0, 1.0)],
                    ["id", "title", "mainstat", "secondarystat", "arc__success", "arc__errors"])),
    PluginQuery(
        "service map edges", f"otel-traces-explorer.json, {RELEASE}",
        "SELECT\n  concat(parent.ServiceName, '-', child.ServiceName) AS id,\n  parent.ServiceName AS source,\n"
        "  child.ServiceName AS target,\n  concat(toString(count()), ' calls') AS mainstat\n"
        "FROM otel_traces AS child\nINNER JOIN otel_traces AS parent\n  ON child.ParentSpanId = parent.SpanId\n"
        "  AND child.TraceId = parent.TraceId\nWHERE $__timeFilter(child.Timestamp)\n"
        "  AND $__timeFilter(parent.Timestamp)\n  AND parent.ServiceName != child.ServiceName\n"
        "GROUP BY source, target\nORDER BY count() DESC\nLIMIT 50",
        rows_equal([("frontend-checkout", "frontend", "checkout", "1 calls")],
                   ["id", "source", "target", "mainstat"])),
    PluginQuery(
        "trace list", f"otel-traces-explorer.json, {RELEASE}",
        "SELECT\n  TraceId,\n  any(ServiceName) AS Service,\n  any(SpanName) AS RootOperation,\n"
        "  min(Timestamp) AS Time,\n  max(Duration) AS Duration,\n  count() AS Spans,\n"
        "  anyIf(StatusCode, StatusCode IN ('Error', 'STATUS_CODE_ERROR')) AS Status\nFROM otel_traces\n"
        "WHERE $__timeFilter(Timestamp)\n  AND $__conditionalAll(ServiceName IN ($service), $service)\n"
        "  AND $__conditionalAll(SpanName IN ($operation), $operation)\n"
        "  AND $__conditionalAll(StatusCode IN ($status), $status)\n"
        "  AND $__conditionalAll(hasToken(SpanName, '$search'), $search)\nGROUP BY TraceId\n"
        "HAVING $__conditionalAll(max(Duration) >= toUInt64($min_duration) * 1000000, $min_duration)\n"
        "ORDER BY Time DESC\nLIMIT 200",
        lambda c, r: rows_equal([(TRACE_B, at(T0 + 1000 * MS), 1_000_000, 1, ""),
                                 (TRACE_A, at(T0), 20_000_000, 2, "Error")])(
            c, [(r0[0], utc(r0[3]), *r0[4:]) for r0 in r])),
    PluginQuery(
        "log volume by level", f"otel-logs-explorer.json, {RELEASE}",
        "SELECT\n  toStartOfInterval(Timestamp, INTERVAL $__interval_s second) AS time,\n  SeverityText AS metric,\n"
        "  count() AS count\nFROM otel_logs\nWHERE $__timeFilter(Timestamp)\n"
        "  AND $__conditionalAll(ServiceName IN ($service), $service)\n"
        "  AND $__conditionalAll(SeverityText IN ($level_filter), $level_filter)\n"
        "  AND $__conditionalAll(hasToken(Body, '$search'), $search)\nGROUP BY time, metric\nORDER BY time",
        lambda c, r: rows_equal([(at(T0), "ERROR", 1), (at(T0), "INFO", 1), (at(T0 + 60_000 * MS), "WARN", 1)],
                                key=lambda x: (x[0], x[1]))(c, [(utc(t), m, n) for t, m, n in r])),
    PluginQuery(
        "service log lines", f"otel-logs-explorer.json, {RELEASE}",
        "SELECT\n  Timestamp AS timestamp,\n  Body AS body,\n  SeverityText AS level,\n  ServiceName,\n  TraceId,\n"
        "  SpanId,\n  ResourceAttributes['service.namespace'] AS namespace,\n"
        "  ResourceAttributes['k8s.pod.name'] AS k8s_pod\nFROM otel_logs\nWHERE $__timeFilter(Timestamp)\n"
        "  AND ServiceName = '${service}'\n  AND $__conditionalAll(SeverityText IN ($level_filter), $level_filter)\n"
        "  AND $__conditionalAll(hasToken(Body, '$search'), $search)\nORDER BY Timestamp DESC\nLIMIT 200",
        lambda c, r: rows_equal([("payment failed: card declined", "ERROR", "checkout", TRACE_A, CHILD_A, "", "")])(
            c, [tuple(r0[1:]) for r0 in r])),
]


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_plugin_query(chdb_client, database, query: PluginQuery):
    sql = expand(query.sql, database)
    try:
        result = chdb_client.query(sql)
    except Exception as exc:
        pytest.fail(f"{PLUGIN} {query.source}: {query.name!r} does not run on {database}: {exc}\n{sql}")
    query.check(list(result.column_names), [tuple(row) for row in result.result_rows])
