"""Decode OTLP export requests (protobuf or JSON) from Kafka messages into columnar batches.

Input: ``RawMessage`` values as the OpenTelemetry Collector's Kafka exporter writes them: one
``Export{Trace,Logs,Metrics}ServiceRequest`` per message, encoded ``otlp_proto`` (default) or
``otlp_json``. The encoding comes from a ``content-type`` header when present, else from the topic's
configured encoding.

Output: a ``DecodeResult`` holding one ``ColumnBatch`` per ClickHouse table (``otel_traces``,
``otel_logs`` and the five ``otel_metrics_*`` tables) with the column names and value conventions of
the Collector's ClickHouse exporter, plus the columns that exporter drops (schema URLs, dropped
counts, flags, observed timestamps, ...). Messages that cannot be decoded become ``DeadLetter``s
with a reason; they never raise, and they never stop the messages around them.

Value conventions, as the Collector's exporter stores them:
- ids are lowercase hex (``""`` when absent); timestamps are integer nanoseconds;
- attribute values are strings: bool → ``true``/``false``, int → decimal, double → shortest
  round-trip decimal without exponent, bytes → base64, arrays and kvlists → JSON (keys sorted);
- span kind ``Unspecified|Internal|Server|Client|Producer|Consumer``, status ``Unset|Ok|Error``;
- ``ServiceName`` is the resource's ``service.name``; without it, ``unknown_service:<process.executable.name>``
  or ``unknown_service`` (the OpenTelemetry SDK's own fallback).

Pure: no I/O, no faust; the same bytes always give the same columns.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Callable, Sequence

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.otlp.batch import ORIGIN, ColumnBatch, DeadLetter, DecodeResult, RawMessage
from streams.otlp.columns import (
    EXP_HISTOGRAM_TABLE,
    GAUGE_TABLE,
    HISTOGRAM_TABLE,
    LOGS_TABLE,
    NONE,
    SIGNAL_TABLES,
    SIGNALS,
    SPAN_KINDS,
    STATUS_CODES,
    SUM_TABLE,
    SUMMARY_TABLE,
    TABLE_COLUMNS,
    TRACES_TABLE,
)
from streams.otlp.values import (
    MAX_TIMESTAMP_NS,
    BadMessage,
    any_value_str,
    attributes_map,
    checked_timestamp,
    id_hex,
    service_name,
)



_REQUEST_TYPES: dict[str, type[Message]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_TOP_LEVEL_JSON_KEYS = {
    "traces": ("resourceSpans", "resource_spans"),
    "logs": ("resourceLogs", "resource_logs"),
    "metrics": ("resourceMetrics", "resource_metrics"),
}
_ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}

PROTO_CONTENT_TYPES = {"application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"}
JSON_CONTENT_TYPES = {"application/json"}


# ---------------------------------------------------------------- bytes to request


def choose_encoding(message: RawMessage, default: str) -> str:
    content_type = message.header("content-type") or message.header("content_type")
    if content_type:
        ctype = content_type.decode("latin-1").split(";")[0].strip().lower()
        if ctype in PROTO_CONTENT_TYPES:
            return "otlp_proto"
        if ctype in JSON_CONTENT_TYPES:
            return "otlp_json"
    return default


# Nesting allowed in OTLP JSON, counting every object and array from the request down: the
# request's own structure takes 9 levels to an attribute value; protobuf refuses messages nested
# more than 100 deep, and so does this.
MAX_JSON_NESTING = 100
# SeverityNumber is an open enum (int32) stored as UInt8: defined values are 0..24.
MAX_SEVERITY_NUMBER = 24


def _hex_ids_to_base64(root: Any) -> Any:
    """OTLP JSON writes ids as hex; protobuf's JSON mapping wants base64. Rewrite them in place.
    Iterative, so no input can exhaust the Python stack; past MAX_JSON_NESTING it is refused."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_NESTING:
            raise BadMessage("too_deep", f"OTLP JSON nested more than {MAX_JSON_NESTING} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str):
                    if value == "":
                        continue
                    try:
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        raise BadMessage("invalid_id", f"{key} is not hex ({len(value)} characters)") from None
                elif isinstance(value, (dict, list)):
                    stack.append((value, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node if isinstance(item, (dict, list)))
    return root


def _json_position(exc: Exception) -> str:
    """Where JSON parsing stopped, never what the text says there (dead letters' headers must not
    carry the message's contents)."""
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    return f"at line {line} column {column}" if line is not None else type(exc).__name__


_PARSE_ERROR_FIELD = re.compile(r"Failed to parse ([A-Za-z_][A-Za-z0-9_]{0,63}) field")


def _parse_error_field(exc: Exception) -> str:
    """The schema field protobuf's JSON parser stopped at (a known field's name, never a value)."""
    found = _PARSE_ERROR_FIELD.search(str(exc))
    return f" (field {found.group(1)})" if found else ""


def _not_protobuf(signal: str, payload: bytes, detail: str) -> BadMessage:
    looks_json = payload.lstrip()[:1] in (b"{", b"[")
    reason = "wrong_encoding" if looks_json else "undecodable"
    hint = " (looks like JSON: is the topic's encoding otlp_json?)" if looks_json else ""
    return BadMessage(reason, f"not an OTLP protobuf {signal} request ({detail}){hint}")


def parse_request(signal: str, payload: bytes, encoding: str) -> Message:
    """Bytes → Export*ServiceRequest, or BadMessage naming why not."""
    request_type = _REQUEST_TYPES[signal]
    if encoding == "otlp_json":
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if payload.lstrip()[:1] in (b"{", b"["):
                raise BadMessage("undecodable", f"not valid JSON ({_json_position(exc)})") from None
            raise BadMessage("wrong_encoding", f"not JSON (is the topic's encoding otlp_proto?) ({_json_position(exc)})") from None
        if not isinstance(data, dict):
            raise BadMessage("wrong_shape", f"OTLP JSON must be an object, got {type(data).__name__}")
        keys = _TOP_LEVEL_JSON_KEYS[signal]
        if data and not any(k in data for k in keys):
            raise BadMessage(
                "wrong_shape", f"OTLP JSON {signal} request needs {keys[0]!r}; found {len(data)} other keys"
            )
        request = request_type()
        try:
            json_format.ParseDict(_hex_ids_to_base64(data), request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise BadMessage("wrong_shape", f"OTLP JSON does not match the {signal} schema{_parse_error_field(exc)}") from None
        except RecursionError:
            raise BadMessage("too_deep", "OTLP JSON nested too deeply to parse") from None
        return request

    request = request_type()
    try:
        request.ParseFromString(payload)
    except DecodeError as exc:
        raise _not_protobuf(signal, payload, type(exc).__name__) from None
    except RecursionError:
        raise BadMessage("too_deep", f"OTLP protobuf {signal} request nested too deeply to parse") from None
    if payload and not request.ListFields():
        # Bytes that parse only as unknown fields are not telemetry; an empty request is 0 bytes.
        raise BadMessage("undecodable", f"no OTLP {signal} content in {len(payload)} bytes")
    return request


# ---------------------------------------------------------------- request to columns


class _Columns:
    """Column lists for one table, filled row by row through bound append methods."""

    __slots__ = ("names", "data")

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.data: dict[str, list[Any]] = {name: [] for name in names}

    def appenders(self) -> list[Callable[[Any], None]]:
        return [self.data[name].append for name in self.names]

    def truncate(self, length: int) -> None:
        for values in self.data.values():
            del values[length:]

    def __len__(self) -> int:
        return len(self.data[self.names[0]])


def _resource_scope(resource: Any, resource_schema_url: str) -> tuple[dict[str, str], str, str, int]:
    attrs = attributes_map(resource.attributes)
    return attrs, service_name(attrs), resource_schema_url, resource.dropped_attributes_count


def _spans_to_columns(request: Any, out: _Columns) -> None:
    (
        ts, trace_id, span_id, parent, state, name, kind, service, res_attrs, scope_name, scope_version,
        span_attrs, duration, status_code, status_message, ev_ts, ev_name, ev_attrs, ln_trace, ln_span,
        ln_state, ln_attrs, res_schema, res_dropped, scope_attrs, scope_dropped, scope_schema, flags,
        dropped_attrs, dropped_events, dropped_links, ev_dropped, ln_flags, ln_dropped,
    ) = out.appenders()
    for rs in request.resource_spans:
        r_attrs, r_service, r_schema, r_dropped = _resource_scope(rs.resource, rs.schema_url)
        for ss in rs.scope_spans:
            scope = ss.scope
            s_name, s_version, s_dropped = scope.name, scope.version, scope.dropped_attributes_count
            s_attrs = attributes_map(scope.attributes)
            s_schema = ss.schema_url
            for span in ss.spans:
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if start > MAX_TIMESTAMP_NS or end > MAX_TIMESTAMP_NS:
                    checked_timestamp(max(start, end), "span time")
                ts(start)
                raw = span.trace_id
                trace_id(raw.hex() if len(raw) == 16 else id_hex(raw, 16, "trace_id"))
                raw = span.span_id
                span_id(raw.hex() if len(raw) == 8 else id_hex(raw, 8, "span_id"))
                raw = span.parent_span_id
                parent(raw.hex() if len(raw) == 8 else id_hex(raw, 8, "parent_span_id"))
                state(span.trace_state)
                name(span.name)
                k = span.kind
                kind(SPAN_KINDS[k] if 0 <= k < len(SPAN_KINDS) else "Unspecified")
                service(r_service)
                res_attrs(r_attrs)
                scope_name(s_name)
                scope_version(s_version)
                span_attrs(attributes_map(span.attributes))
                duration(end - start if end > start else 0)
                status = span.status
                code = status.code
                status_code(STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else "Unset")
                status_message(status.message)
                events = span.events
                if events:
                    ev_ts([checked_timestamp(e.time_unix_nano, "event time") for e in events])
                    ev_name([e.name for e in events])
                    ev_attrs([attributes_map(e.attributes) for e in events])
                    ev_dropped([e.dropped_attributes_count for e in events])
                else:
                    ev_ts(NONE), ev_name(NONE), ev_attrs(NONE), ev_dropped(NONE)
                links = span.links
                if links:
                    ln_trace([id_hex(link.trace_id, 16, "link trace_id") for link in links])
                    ln_span([id_hex(link.span_id, 8, "link span_id") for link in links])
                    ln_state([link.trace_state for link in links])
                    ln_attrs([attributes_map(link.attributes) for link in links])
                    ln_flags([link.flags for link in links])
                    ln_dropped([link.dropped_attributes_count for link in links])
                else:
                    ln_trace(NONE), ln_span(NONE), ln_state(NONE), ln_attrs(NONE), ln_flags(NONE), ln_dropped(NONE)
                res_schema(r_schema)
                res_dropped(r_dropped)
                scope_attrs(s_attrs)
                scope_dropped(s_dropped)
                scope_schema(s_schema)
                flags(span.flags)
                dropped_attrs(span.dropped_attributes_count)
                dropped_events(span.dropped_events_count)
                dropped_links(span.dropped_links_count)


def _logs_to_columns(request: Any, out: _Columns) -> None:
    (
        ts, trace_id, span_id, trace_flags, sev_text, sev_number, service, body, res_schema, res_attrs,
        scope_schema, scope_name, scope_version, scope_attrs, log_attrs, event_name, observed, log_flags,
        dropped, res_dropped, scope_dropped,
    ) = out.appenders()
    for rl in request.resource_logs:
        r_attrs, r_service, r_schema, r_dropped = _resource_scope(rl.resource, rl.schema_url)
        for sl in rl.scope_logs:
            scope = sl.scope
            s_name, s_version, s_dropped = scope.name, scope.version, scope.dropped_attributes_count
            s_attrs = attributes_map(scope.attributes)
            s_schema = sl.schema_url
            for rec in sl.log_records:
                observed_ns = checked_timestamp(rec.observed_time_unix_nano, "observed time")
                # A record without a timestamp happened when it was observed (OTel data model).
                ts(checked_timestamp(rec.time_unix_nano, "log time") or observed_ns)
                trace_id(id_hex(rec.trace_id, 16, "trace_id"))
                span_id(id_hex(rec.span_id, 8, "span_id"))
                f = rec.flags
                trace_flags(f & 0xFF)
                sev_text(rec.severity_text)
                sev = rec.severity_number  # an open enum: values past FATAL4 (24) are Unspecified (0)
                sev_number(sev if 0 <= sev <= MAX_SEVERITY_NUMBER else 0)
                service(r_service)
                body(any_value_str(rec.body) if rec.HasField("body") else "")
                res_schema(r_schema)
                res_attrs(r_attrs)
                scope_schema(s_schema)
                scope_name(s_name)
                scope_version(s_version)
                scope_attrs(s_attrs)
                log_attrs(attributes_map(rec.attributes))
                event_name(rec.event_name)
                observed(observed_ns)
                log_flags(f)
                dropped(rec.dropped_attributes_count)
                res_dropped(r_dropped)
                scope_dropped(s_dropped)


def _exemplar_columns(exemplars: Any) -> tuple[list, list, list, list, list]:
    if not exemplars:
        return NONE, NONE, NONE, NONE, NONE
    return (
        [attributes_map(e.filtered_attributes) for e in exemplars],
        [checked_timestamp(e.time_unix_nano, "exemplar time") for e in exemplars],
        [float(e.as_int) if e.WhichOneof("value") == "as_int" else e.as_double for e in exemplars],
        [id_hex(e.span_id, 8, "exemplar span_id") for e in exemplars],
        [id_hex(e.trace_id, 16, "exemplar trace_id") for e in exemplars],
    )


def _metrics_to_columns(request: Any, outs: dict[str, _Columns]) -> None:
    for rm in request.resource_metrics:
        r_attrs, r_service, r_schema, r_dropped = _resource_scope(rm.resource, rm.schema_url)
        for sm in rm.scope_metrics:
            scope = sm.scope
            common_scope = (
                scope.name,
                scope.version,
                attributes_map(scope.attributes),
                scope.dropped_attributes_count,
                sm.schema_url,
            )
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue  # a metric without data has no points to store
                head = (
                    r_attrs, r_schema, r_dropped, *common_scope, r_service,
                    metric.name, metric.description, metric.unit, attributes_map(metric.metadata),
                )
                if kind == "gauge":
                    _number_points(outs[GAUGE_TABLE], head, metric.gauge.data_points, None)
                elif kind == "sum":
                    s = metric.sum
                    _number_points(outs[SUM_TABLE], head, s.data_points, (s.aggregation_temporality, s.is_monotonic))
                elif kind == "histogram":
                    _histogram_points(outs[HISTOGRAM_TABLE], head, metric.histogram)
                elif kind == "exponential_histogram":
                    _exp_histogram_points(outs[EXP_HISTOGRAM_TABLE], head, metric.exponential_histogram)
                elif kind == "summary":
                    _summary_points(outs[SUMMARY_TABLE], head, metric.summary.data_points)


def _append_head(cols: list[Callable[[Any], None]], head: tuple, point: Any) -> int:
    """Fill the common metric columns; return how many appenders were used."""
    n = len(head)
    for i in range(n):
        cols[i](head[i])
    cols[n](attributes_map(point.attributes))
    cols[n + 1](checked_timestamp(point.start_time_unix_nano, "start time"))
    cols[n + 2](checked_timestamp(point.time_unix_nano, "time"))
    cols[n + 3](point.flags)
    return n + 4


def _append_exemplars(cols: list[Callable[[Any], None]], start: int, point: Any) -> None:
    for offset, values in enumerate(_exemplar_columns(point.exemplars)):
        cols[start + offset](values)


def _point_rows(out: _Columns, head: tuple, points: Any, values_of: Callable[[Any], tuple],
                exemplars: bool = True) -> None:
    """One row per data point: the common columns, the type's own values, then its exemplars."""
    cols = out.appenders()
    for p in points:
        i = _append_head(cols, head, p)
        for value in values_of(p):
            cols[i](value)
            i += 1
        if exemplars:
            _append_exemplars(cols, i, p)


def _number_value(p: Any) -> float:
    return float(p.as_int) if p.WhichOneof("value") == "as_int" else p.as_double


def _number_points(out: _Columns, head: tuple, points: Any, sum_info: tuple[int, bool] | None) -> None:
    if sum_info is None:
        _point_rows(out, head, points, lambda p: (_number_value(p),))
    else:
        temporality, monotonic = sum_info
        _point_rows(out, head, points, lambda p: (_number_value(p), temporality, monotonic))


def _histogram_points(out: _Columns, head: tuple, histogram: Any) -> None:
    t = histogram.aggregation_temporality
    _point_rows(out, head, histogram.data_points, lambda p: (
        p.count, p.sum, list(p.bucket_counts), list(p.explicit_bounds), p.min, p.max, t,
    ))


def _exp_histogram_points(out: _Columns, head: tuple, histogram: Any) -> None:
    t = histogram.aggregation_temporality
    _point_rows(out, head, histogram.data_points, lambda p: (
        p.count, p.sum, p.scale, p.zero_count, p.zero_threshold,
        p.positive.offset, list(p.positive.bucket_counts), p.negative.offset, list(p.negative.bucket_counts),
        p.min, p.max, t,
    ))


def _summary_points(out: _Columns, head: tuple, points: Any) -> None:
    _point_rows(out, head, points, lambda p: (
        p.count, p.sum, [q.quantile for q in p.quantile_values], [q.value for q in p.quantile_values],
    ), exemplars=False)


# ---------------------------------------------------------------- the stage


def decode_messages(
    signal: str,
    messages: Sequence[RawMessage],
    default_encoding: str = "otlp_proto",
    max_message_bytes: int = 16 * 1024 * 1024,
) -> DecodeResult:
    """Decode a run of Kafka messages of one signal into table batches and dead letters.

    A message contributes all of its rows or none: if any record in it is invalid, the whole
    message is dead-lettered and the rows already appended for it are taken back.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {SIGNALS}")
    outs = {table: _Columns(TABLE_COLUMNS[table]) for table in SIGNAL_TABLES[signal]}
    origins: dict[str, list[int]] = {table: [] for table in outs}
    result = DecodeResult()
    for index, message in enumerate(messages):
        size = len(message.value)
        if size > max_message_bytes:
            result.dead_letters.append(
                DeadLetter(message, "too_large", f"{size} bytes is over the limit of {max_message_bytes}")
            )
            continue
        marks = {table: len(cols) for table, cols in outs.items()}
        try:
            encoding = choose_encoding(message, default_encoding)
            request = parse_request(signal, message.value, encoding)
            if signal == "traces":
                _spans_to_columns(request, outs[TRACES_TABLE])
            elif signal == "logs":
                _logs_to_columns(request, outs[LOGS_TABLE])
            else:
                _metrics_to_columns(request, outs)
        except (BadMessage, ValueError, TypeError, OverflowError, binascii.Error) as exc:
            for table, cols in outs.items():
                cols.truncate(marks[table])
            if isinstance(exc, BadMessage):
                result.dead_letters.append(DeadLetter(message, exc.reason, exc.detail))
            else:
                # the class only: the text of a library's error may quote the message
                result.dead_letters.append(DeadLetter(message, "invalid_value", f"{type(exc).__name__} while decoding"))
            continue
        except Exception as exc:  # one message never stops the others: whatever else failed is named
            for table, cols in outs.items():
                cols.truncate(marks[table])
            # The class only: an unforeseen exception's text may quote the payload, and letters'
            # headers must not carry what the message says.
            result.dead_letters.append(DeadLetter(message, "internal", f"{type(exc).__name__} while decoding"))
            continue
        for table, cols in outs.items():
            added = len(cols) - marks[table]
            if added:
                origins[table].extend([index] * added)
        result.decoded_messages += 1
    for table, cols in outs.items():
        if len(cols):
            result.batches[table] = ColumnBatch(table, {**cols.data, ORIGIN: origins[table]})
    return result
