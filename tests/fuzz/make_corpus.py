"""Write the fuzz targets' seed corpus: tests/fuzz/corpus/<target>/<name>.

Deterministic: the same files every run (``python tests/fuzz/make_corpus.py``; ``--check`` exits 1
when the committed corpus differs from what this script writes). Seeds are valid requests built
with tests/otlp_builders.py, their OTLP JSON forms, and hostile ones: deep nesting, groups, huge
varints, NaN and infinities, huge integers, timestamps before 1970 and after 2262, empty input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402

from tests.otlp_builders import field, kv, logs_request, metrics_request, traces_request, varint  # noqa: E402
from tests.planted_secrets import requests_with_secrets  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
T2262 = 2**63  # one past the last DateTime64(9) instant
U64 = 2**64 - 1


# ---------------------------------------------------------------- wire helpers


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def spans_wire(*spans: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    """ExportTraceServiceRequest{resource_spans{resource, scope_spans{scope, spans}}} from raw span bytes."""
    scope_spans = (field(1, scope) if scope else b"") + b"".join(field(2, s) for s in spans)
    resource_spans = (field(1, resource) if resource else b"") + field(2, scope_spans)
    return field(1, resource_spans)


def minimal_span() -> bytes:
    return (field(1, bytes(range(1, 17))) + field(2, bytes(range(1, 9))) + field(5, b"op")
            + b"\x39" + (1_700_000_000_000_000_000).to_bytes(8, "little")
            + b"\x41" + (1_700_000_000_000_000_500).to_bytes(8, "little"))


def nested_any_value(depth: int) -> AnyValue:
    value = AnyValue(string_value="leaf")
    for i in range(depth):
        outer = AnyValue()
        if i % 2:
            outer.array_value.values.append(value)
        else:
            outer.kvlist_value.values.append(kv("k", string_value="x"))
            outer.kvlist_value.values[0].value.CopyFrom(value)
        value = outer
    return value


# ---------------------------------------------------------------- OTLP JSON


def _hex_ids(node):
    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else _hex_ids(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def otlp_json(request) -> bytes:
    """The request as OTLP JSON writes it: camelCase, hex ids, 64-bit integers as strings."""
    return orjson.dumps(_hex_ids(json_format.MessageToDict(request)), option=orjson.OPT_SORT_KEYS)


def snake_json(request) -> bytes:
    return orjson.dumps(_hex_ids_snake(json_format.MessageToDict(request, preserving_proto_field_name=True)),
                        option=orjson.OPT_SORT_KEYS)


def _hex_ids_snake(node):
    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in ("trace_id", "span_id", "parent_span_id") and isinstance(v, str)
                    else _hex_ids_snake(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids_snake(v) for v in node]
    return node


def json_text(data) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------- seeds per target


def traces_seeds() -> dict[str, bytes]:
    seeds = {
        "valid_one": traces_request(1).SerializeToString(),
        "valid_three": traces_request(3).SerializeToString(),
        "valid_no_service": traces_request(1, service=None).SerializeToString(),
        "minimal_span": spans_wire(minimal_span()),
        "empty": b"",
        "zero_byte": b"\x00",
        "empty_resource_spans": b"\x0a\x00",
        "groups_deep": b"\x0b" * 150,
        "groups_closed": b"\x0b" * 20 + b"\x0c" * 20,
        "group_in_span": spans_wire(minimal_span() + b"\x6b" + b"\x0a\x01x" + b"\x6c"),
        "huge_varint_kind": spans_wire(minimal_span() + b"\x30" + b"\xff" * 9 + b"\x01"),
        "overlong_varint": spans_wire(minimal_span() + b"\x30" + b"\x80" * 11 + b"\x00"),
        "time_past_2262": spans_wire(field(1, bytes(16)[:15] + b"\x01") + b"\x39" + (T2262).to_bytes(8, "little")
                                     + b"\x41" + U64.to_bytes(8, "little")),
        "time_zero_1970": spans_wire(field(1, b"\x01" * 16) + field(2, b"\x02" * 8) + b"\x39" + bytes(8)),
        "bad_ids": spans_wire(field(1, b"\x01" * 15) + field(2, b"\x02" * 9) + field(4, b"\x03")),
        "invalid_utf8_name": spans_wire(minimal_span() + field(5, b"\xff\xfe")),
        "duplicate_name": spans_wire(field(5, b"\xc3\x28") + minimal_span()),
        "unknown_fields": spans_wire(minimal_span() + field(99, b"zz") + b"\x9d\x06\x01\x02\x03\x04"),
    }
    req = traces_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="nan").value.double_value = float("nan")
    span.attributes.add(key="inf").value.double_value = float("-inf")
    span.attributes.add(key="int_min").value.int_value = -(2**63)
    span.attributes.add(key="deep").value.CopyFrom(nested_any_value(40))
    span.events[0].time_unix_nano = U64
    seeds["hostile_values"] = req.SerializeToString()
    req = traces_request(1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    for i in range(40):
        span.events.add(time_unix_nano=i, name=f"e{i}")
        span.links.add(trace_id=bytes([i]) * 16, span_id=bytes([i]) * 8)
    seeds["many_events_links"] = req.SerializeToString()
    seeds["secrets_everywhere"] = next(requests_with_secrets("traces")).SerializeToString()
    return seeds


def logs_seeds() -> dict[str, bytes]:
    bodies = [AnyValue(string_value="hello"), AnyValue(int_value=-(2**63)), AnyValue(double_value=float("nan")),
              AnyValue(bytes_value=b"\x00\xff"), AnyValue(bool_value=True), nested_any_value(30)]
    seeds = {
        "valid": logs_request().SerializeToString(),
        "bodies": logs_request(bodies).SerializeToString(),
        "empty": b"",
        "groups_deep": b"\x0b" * 150,
    }
    req = logs_request()
    rec = req.resource_logs[0].scope_logs[0].log_records[0]
    rec.time_unix_nano = T2262
    rec.severity_number = 300
    seeds["time_past_2262"] = req.SerializeToString()
    req = ExportLogsServiceRequest()
    rec = req.resource_logs.add().scope_logs.add().log_records.add()
    rec.observed_time_unix_nano = 1
    rec.trace_id = b"\x01" * 15
    seeds["bad_trace_id"] = req.SerializeToString()
    seeds["secrets_everywhere"] = next(requests_with_secrets("logs")).SerializeToString()
    return seeds


def metrics_seeds() -> dict[str, bytes]:
    seeds = {"valid": metrics_request().SerializeToString(), "empty": b"", "groups_deep": b"\x0b" * 150}
    req = metrics_request()
    metrics = req.resource_metrics[0].scope_metrics[0].metrics
    metrics[0].gauge.data_points[0].as_double = float("nan")
    metrics[1].sum.data_points[0].time_unix_nano = T2262
    metrics[2].histogram.data_points[0].count = U64
    metrics[2].histogram.data_points[0].explicit_bounds.append(float("inf"))
    metrics[3].exponential_histogram.data_points[0].scale = -(2**31)
    metrics[3].exponential_histogram.data_points[0].positive.offset = 2**31 - 1
    metrics[4].summary.data_points[0].quantile_values.add(quantile=float("nan"), value=float("-inf"))
    seeds["hostile_values"] = req.SerializeToString()
    req = ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add(name="x")
    m.gauge.data_points.add(time_unix_nano=1).exemplars.add(span_id=b"\x01" * 7)
    seeds["bad_exemplar_id"] = req.SerializeToString()
    return seeds


def json_seeds() -> dict[str, bytes]:
    seeds = {
        "traces": otlp_json(traces_request(1)),
        "traces_snake": snake_json(traces_request(1)),
        "logs": otlp_json(logs_request([AnyValue(string_value="hi"), nested_any_value(6)])),
        "metrics": otlp_json(metrics_request()),
        "empty_object": b"{}",
        "empty": b"",
        "not_object": b"[1,2,3]",
        "nested_arrays": b'{"resourceLogs":' + b"[" * 120 + b"]" * 120 + b"}",
        "nested_objects": b'{"resourceSpans":[' + b'{"a":' * 120 + b"1" + b"}" * 120 + b"]}",
    }
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "x",
            "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": "-1", "endTimeUnixNano": str(2**64),
            "attributes": [{"key": "nan", "value": {"doubleValue": "NaN"}},
                           {"key": "big", "value": {"intValue": str(2**70)}},
                           {"key": "inf", "value": {"doubleValue": "-Infinity"}}]}
    seeds["traces_hostile_numbers"] = json_text({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "startTimeUnixNano": 1700000000000000000, "endTimeUnixNano": 9223372036854775808, "kind": 99,
            "status": {"code": "STATUS_CODE_ERROR"}}
    seeds["traces_numbers_as_numbers"] = json_text({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    seeds["traces_bad_hex"] = json_text({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]})
    point = {"timeUnixNano": "1", "asDouble": "Infinity", "exemplars": [{"spanId": "0102"}]}
    seeds["metrics_hostile"] = json_text({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "g", "gauge": {"dataPoints": [point]}},
        {"name": "h", "histogram": {"dataPoints": [{"count": "18446744073709551615", "bucketCounts": ["-1"]}]}},
    ]}]}]})
    seeds["logs_hostile"] = json_text({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "99999999999999999999", "severityNumber": 2**40, "body": {"kvlistValue": {"values": [
            {"key": "a", "value": {"arrayValue": {"values": [{"bytesValue": "!!"}]}}}]}}}]}]}]})
    seeds["surrogates"] = (rb'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\ud800","attributes":[{"key":"\udc00",'
                           rb'"value":{"stringValue":"\ud83d\ude00"}}]}]}]}]}')
    seeds["logs_special_doubles"] = json_text({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {
        "arrayValue": {"values": [{"doubleValue": "NaN"}, {"doubleValue": 1e-320}, {"doubleValue": -0.0},
                                  {"doubleValue": 1e308}]}}}]}]}]})
    return seeds


def envelope_seeds() -> dict[str, bytes]:
    from streams.agents.routing import encode_envelope, route_partition, split_by_trace
    from streams.otlp.batch import RawMessage

    seeds = {}
    source = RawMessage("otlp_spans", 0, 7, traces_request(2).SerializeToString(), timestamp_ms=1_700_000_000_000)
    for i, (trace_id, (payload, n, end)) in enumerate(sorted(split_by_trace("traces", source, "otlp_proto").items())):
        seeds[f"traces_part{i}"] = encode_envelope("traces", source, 1, payload, n, trace_id, end)
    logs = RawMessage("otlp_logs", 2, 9, logs_request().SerializeToString(), timestamp_ms=None)
    for i, (trace_id, (payload, n, end)) in enumerate(sorted(split_by_trace("logs", logs, "otlp_proto").items())):
        seeds[f"logs_part{i}"] = encode_envelope("logs", logs, 0, payload, n, trace_id, end)
    metrics = RawMessage("otlp_metrics", 1, 3, metrics_request().SerializeToString())
    seeds["metrics"] = encode_envelope("metrics", metrics, 2, metrics.value)
    seeds["late"] = encode_envelope("traces", RawMessage("s", 0, 1, traces_request(1).SerializeToString(),
                                                         timestamp_ms=10**12), 0, traces_request(1).SerializeToString(),
                                    -1, "5b8efff798038103d269b633813fc60c", 1)
    seeds["bad_payload"] = encode_envelope("traces", source, 0, b"\x0b" * 50, 1)
    seeds["truncated"] = seeds["traces_part0"][:40]
    seeds["empty"] = b""
    seeds["bad_enum"] = b"\x10" + seeds["metrics"][1:]  # signal index 8
    seeds["huge_length"] = b"\x00" + b"\xfe\xff\xff\xff\x0f" + b"x" * 8  # a string length of 2^31 - 1
    # bulk records (every trace of one source message routed to one partition), as the fuzz target
    # keys them: the fuzz message's coordinates, its trace
    from streams.agents.routing import encode_traces_envelope

    trace = "5b8efff798038103d269b633813fc60c"
    fuzz_spans = RawMessage("fuzz", 0, 7, traces_request(2).SerializeToString(), timestamp_ms=1_700_000_000_000)
    [(_, (payload, n, end))] = split_by_trace("traces", fuzz_spans, "otlp_proto").items()
    route = route_partition(trace, 3)
    seeds["bulk_traces"] = encode_traces_envelope("traces", fuzz_spans, route, [(trace, payload, n, end)])
    fuzz_logs = RawMessage("fuzz", 0, 7, logs_request().SerializeToString(), timestamp_ms=None)
    [(_, (payload, n, end))] = split_by_trace("logs", fuzz_logs, "otlp_proto").items()
    seeds["bulk_logs"] = encode_traces_envelope("logs", fuzz_logs, route, [(trace, payload, n, end)])
    seeds["bulk_bad_payload"] = encode_traces_envelope("traces", fuzz_spans, route, [(trace, b"\x0b" * 50, 1, 0)])
    return seeds


def stages_seeds() -> dict[str, bytes]:
    """Selector byte (see targets.stages_input) + payload."""
    traces = traces_request(2)
    traces.resource_spans[0].scope_spans[0].spans[0].attributes.extend([
        kv("user.id", string_value="u-1234"), kv("http.route", string_value="/orders/123"),
        kv("url.full", string_value="https://x/y?token=abc&page=1"), kv("host.name", string_value="h1"),
        kv("db.secret", string_value="Bearer abc.def.ghi"), kv("email", string_value="a@example.com"),
        kv("drop.me", string_value="x"), kv("card", string_value="4111 1111 1111 1111"),
    ])
    traces.resource_spans[0].scope_spans[0].spans[1].trace_state = "ot=th:8;rv:abcdefabcdef12"
    logs = logs_request([AnyValue(string_value="password=hunter2 Bearer abc"), AnyValue(int_value=1)])
    metrics = metrics_request()
    metrics.resource_metrics[0].scope_metrics[0].metrics.add(name="Orders-Failed").gauge.data_points.add(
        time_unix_nano=1, as_int=1).attributes.append(kv("user.id", string_value="u2"))
    payloads = {"traces": traces.SerializeToString(), "logs": logs.SerializeToString(),
                "metrics": metrics.SerializeToString()}
    jsons = {"traces": otlp_json(traces), "logs": otlp_json(logs), "metrics": otlp_json(metrics)}
    seeds = {}
    for s, signal in enumerate(("traces", "logs", "metrics")):
        for config in range(4):
            seeds[f"{signal}_proto_config{config}"] = bytes([s | config << 3]) + payloads[signal]
        seeds[f"{signal}_json_config2_twice"] = bytes([s | 4 | 2 << 3 | 32]) + jsons[signal]
        seeds[f"{signal}_header_json_config1"] = bytes([s | 1 << 3 | 64]) + jsons[signal]
        seeds[f"{signal}_hostile_after_good"] = bytes([s | 2 << 3 | 128]) + b"\x0b" * 120
    seeds["empty"] = b""
    seeds["selector_only"] = b"\x12"
    return seeds


def corpus() -> dict[str, dict[str, bytes]]:
    traces, logs = traces_seeds(), logs_seeds()
    return {
        "spans_proto": traces,
        "native_differential": traces,
        "logs_proto": logs,
        "native_logs_differential": logs,
        "metrics_proto": metrics_seeds(),
        "otlp_json": json_seeds(),
        "envelope": envelope_seeds(),
        "stages": stages_seeds(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed corpus, write nothing")
    parser.add_argument("--out", type=Path, default=CORPUS)
    args = parser.parse_args(argv)
    wanted = {f"{target}/{name}": data for target, seeds in corpus().items() for name, data in seeds.items()}
    present = {str(p.relative_to(args.out)): p.read_bytes() for p in args.out.glob("*/*") if p.is_file()} \
        if args.out.exists() else {}
    if args.check:
        stale = sorted(k for k in wanted.keys() | present.keys() if wanted.get(k) != present.get(k))
        for name in stale:
            print(f"differs: {name}")
        return 1 if stale else 0
    for name in present.keys() - wanted.keys():
        (args.out / name).unlink()
    for name, data in sorted(wanted.items()):
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if present.get(name) != data:
            path.write_bytes(data)
    total = sum(len(d) for d in wanted.values())
    digest = hashlib.sha256(b"".join(k.encode() + b"\0" + v for k, v in sorted(wanted.items()))).hexdigest()[:16]
    print(f"{len(wanted)} seeds, {total} bytes, sha256 {digest} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
