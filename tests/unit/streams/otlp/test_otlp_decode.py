import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from streams.otlp.batch import RawMessage
from streams.otlp.columns import TABLE_COLUMNS
from streams.otlp.decode import decode_messages
from streams.otlp.values import format_double, service_name
from streams.otlp.encode import encode_request
from tests.otlp_builders import (
    EXPECTED_KINDS,
    LINK_SPAN,
    LINK_TRACE,
    PARENT_ID,
    T0,
    TRACE_ID,
    logs_request,
    metrics_request,
    traces_request,
)

ENCODINGS = ["otlp_proto", "otlp_json"]


def msg(value: bytes, offset: int = 0, headers=()) -> RawMessage:
    return RawMessage("topic", 0, offset, value, headers=tuple(headers))


def decode_one(signal, request, encoding):
    result = decode_messages(signal, [msg(encode_request(request, encoding))], default_encoding=encoding)
    assert result.dead_letters == [], result.dead_letters
    return result


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_span_every_field(encoding):
    result = decode_one("traces", traces_request(), encoding)
    batch = result.batches["otel_traces"]
    assert batch.column_names == TABLE_COLUMNS["otel_traces"]
    [row] = batch.rows()
    assert row["Timestamp"] == T0
    assert row["TraceId"] == TRACE_ID.hex()
    assert row["ParentSpanId"] == PARENT_ID.hex()
    assert len(row["SpanId"]) == 16
    assert row["TraceState"] == "th=8;rv=abc"
    assert row["SpanName"] == "GET /orders/{id}"
    assert row["SpanKind"] == "Server"
    assert row["ServiceName"] == "checkout"
    assert row["ResourceAttributes"] == {"service.name": "checkout", "host.name": "node-1"}
    assert row["ResourceDroppedAttrCount"] == 2
    assert row["ResourceSchemaUrl"] == "https://opentelemetry.io/schemas/1.26.0"
    assert (row["ScopeName"], row["ScopeVersion"]) == ("io.test", "1.2.3")
    assert row["ScopeAttributes"] == {"scope.attr": "s"}
    assert row["ScopeDroppedAttrCount"] == 1
    assert row["ScopeSchemaUrl"] == "https://opentelemetry.io/schemas/1.25.0"
    assert row["SpanAttributes"] == EXPECTED_KINDS
    assert row["Duration"] == 1_500_000
    assert (row["StatusCode"], row["StatusMessage"]) == ("Error", "boom")
    assert row["Events.Timestamp"] == [T0 + 10]
    assert row["Events.Name"] == ["exception"]
    assert row["Events.Attributes"] == [{"exception.type": "ValueError"}]
    assert row["Events.DroppedAttributesCount"] == [6]
    assert row["Links.TraceId"] == [LINK_TRACE.hex()]
    assert row["Links.SpanId"] == [LINK_SPAN.hex()]
    assert row["Links.TraceState"] == ["k=v"]
    assert row["Links.Attributes"] == [{"link.kind": "follows"}]
    assert row["Links.Flags"] == [1]
    assert row["Links.DroppedAttributesCount"] == [7]
    assert row["SpanFlags"] == 0x301
    assert (row["DroppedAttributesCount"], row["DroppedEventsCount"], row["DroppedLinksCount"]) == (3, 4, 5)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_log_every_field_and_body_kind(encoding):
    bodies = [
        AnyValue(string_value="plain text"),
        AnyValue(int_value=7),
        AnyValue(double_value=0.5),
        AnyValue(bool_value=False),
        AnyValue(bytes_value=b"\xff"),
        AnyValue(array_value={"values": [AnyValue(string_value="a"), AnyValue(int_value=2)]}),
        AnyValue(kvlist_value={"values": [{"key": "k", "value": {"string_value": "v"}}]}),
        AnyValue(),
    ]
    result = decode_one("logs", logs_request(bodies), encoding)
    rows = result.batches["otel_logs"].rows()
    assert [r["Body"] for r in rows] == ["plain text", "7", "0.5", "false", "/w==", '["a",2]', '{"k":"v"}', ""]
    row = rows[0]
    assert row["Timestamp"] == T0 and row["ObservedTimestamp"] == T0 + 5
    assert row["TraceId"] == TRACE_ID.hex() and len(row["SpanId"]) == 16
    assert row["TraceFlags"] == 0x01 and row["LogFlags"] == 0x101
    assert (row["SeverityText"], row["SeverityNumber"]) == ("ERROR", 17)
    assert row["ServiceName"] == "checkout"
    assert row["EventName"] == "order.failed"
    assert row["LogAttributes"] == {"code.lineno": "12"}
    assert row["DroppedAttributesCount"] == 2
    assert row["ScopeAttributes"] == {"scope.attr": "s"}
    assert row["ResourceSchemaUrl"].endswith("1.26.0") and row["ScopeSchemaUrl"].endswith("1.25.0")


def test_log_without_timestamp_uses_observed_time():
    req = logs_request()
    rec = req.resource_logs[0].scope_logs[0].log_records[0]
    rec.time_unix_nano = 0
    result = decode_one("logs", req, "otlp_proto")
    assert result.batches["otel_logs"].rows()[0]["Timestamp"] == T0 + 5


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_metrics_all_five_types(encoding):
    result = decode_one("metrics", metrics_request(), encoding)
    assert set(result.batches) == {
        "otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
        "otel_metrics_exponential_histogram", "otel_metrics_summary",
    }
    for table, batch in result.batches.items():
        assert batch.column_names == TABLE_COLUMNS[table]
        assert len(batch) == 1

    [gauge] = result.batches["otel_metrics_gauge"].rows()
    assert gauge["Value"] == 1024.0 and gauge["Flags"] == 1
    assert gauge["MetricName"] == "mem" and gauge["MetricDescription"] == "memory" and gauge["MetricUnit"] == "By"
    assert gauge["MetricMetadata"] == {"source": "sdk"}
    assert gauge["Attributes"] == {"pool": "heap"}
    assert gauge["StartTimeUnix"] == T0 - 10 and gauge["TimeUnix"] == T0
    assert gauge["Exemplars.Value"] == [9.0]
    assert gauge["Exemplars.TraceId"] == [TRACE_ID.hex()]
    assert gauge["Exemplars.FilteredAttributes"] == [{"user.id": "u1"}]
    assert gauge["Exemplars.TimeUnix"] == [T0 + 1]

    [total] = result.batches["otel_metrics_sum"].rows()
    assert total["Value"] == 7.5 and total["AggregationTemporality"] == 1 and total["IsMonotonic"] is True

    [hist] = result.batches["otel_metrics_histogram"].rows()
    assert (hist["Count"], hist["Sum"], hist["Min"], hist["Max"]) == (6, 3.5, 0.05, 2.0)
    assert hist["BucketCounts"] == [1, 2, 3] and hist["ExplicitBounds"] == [0.1, 1.0]
    assert hist["AggregationTemporality"] == 2

    [exp] = result.batches["otel_metrics_exponential_histogram"].rows()
    assert (exp["Scale"], exp["ZeroCount"], exp["ZeroThreshold"]) == (2, 1, 0.001)
    assert (exp["PositiveOffset"], exp["PositiveBucketCounts"]) == (3, [2, 3])
    assert (exp["NegativeOffset"], exp["NegativeBucketCounts"]) == (-2, [2])

    [summary] = result.batches["otel_metrics_summary"].rows()
    assert (summary["Count"], summary["Sum"]) == (100, 250.0)
    assert summary["ValueAtQuantiles.Quantile"] == [0.5, 0.99]
    assert summary["ValueAtQuantiles.Value"] == [2.0, 9.0]


def test_both_encodings_decode_to_the_same_columns():
    for signal, request in (("traces", traces_request(3)), ("logs", logs_request()), ("metrics", metrics_request())):
        proto = decode_one(signal, request, "otlp_proto")
        json = decode_one(signal, request, "otlp_json")
        assert {t: b.columns for t, b in proto.batches.items()} == {t: b.columns for t, b in json.batches.items()}


def test_content_type_header_overrides_topic_encoding():
    body = encode_request(traces_request(), "otlp_json")
    result = decode_messages("traces", [msg(body, headers=[("content-type", b"application/json")])],
                             default_encoding="otlp_proto")
    assert not result.dead_letters and len(result.batches["otel_traces"]) == 1


def test_service_name_fallbacks():
    assert service_name({"service.name": "a"}) == "a"
    assert service_name({"process.executable.name": "java"}) == "unknown_service:java"
    assert service_name({}) == "unknown_service"
    result = decode_one("traces", traces_request(service=None), "otlp_proto")
    assert result.batches["otel_traces"].rows()[0]["ServiceName"] == "unknown_service"


@pytest.mark.parametrize(
    "value,expected",
    [(1.0, "1"), (0.1, "0.1"), (-2.5, "-2.5"), (1e21, "1000000000000000000000"), (1.5e-7, "0.00000015"),
     (float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf")],
)
def test_format_double_matches_go(value, expected):
    assert format_double(value) == expected


GOOD = encode_request(traces_request(2), "otlp_proto")


@pytest.mark.parametrize(
    "payload,encoding,reason",
    [
        (b"\xff\xfe\xfd\xfc random bytes \x00\x01", "otlp_proto", "undecodable"),
        (GOOD[: len(GOOD) // 2], "otlp_proto", "undecodable"),
        (encode_request(traces_request(), "otlp_json"), "otlp_proto", "wrong_encoding"),
        (b"\x08\x96\x01", "otlp_proto", "undecodable"),  # valid protobuf, but not OTLP
        (GOOD, "otlp_json", "wrong_encoding"),
        (b'{"foo": [1, 2]}', "otlp_json", "wrong_shape"),
        (b"[1, 2, 3]", "otlp_json", "wrong_shape"),
        (b'{"resourceSpans": "nope"}', "otlp_json", "wrong_shape"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "otlp_json", "invalid_id"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abcd"}]}]}]}', "otlp_json", "invalid_id"),
    ],
)
def test_bad_messages_become_dead_letters_and_good_ones_survive(payload, encoding, reason):
    good = encode_request(traces_request(2), encoding)
    messages = [msg(good, 0), msg(payload, 1), msg(good, 2)]
    result = decode_messages("traces", messages, default_encoding=encoding)
    assert [d.reason for d in result.dead_letters] == [reason]
    dead = result.dead_letters[0]
    assert dead.message.offset == 1 and dead.message.value == payload
    assert len(result.batches["otel_traces"]) == 4  # both good messages, nothing of the bad one
    headers = dict(dead.headers())
    assert headers["otelpipe.dlq.reason"] == reason.encode()
    assert headers["otelpipe.dlq.source_offset"] == b"1"
    assert headers["otelpipe.dlq.detail"]


def test_oversized_message_is_dead_lettered_unread():
    result = decode_messages("traces", [msg(GOOD, 0)], max_message_bytes=10)
    assert [d.reason for d in result.dead_letters] == ["too_large"]
    assert result.batches == {}


def test_a_bad_span_takes_back_its_whole_message():
    req = traces_request(3)
    req.resource_spans[0].scope_spans[0].spans[2].span_id = b"\x01\x02"  # wrong length, after two good spans
    result = decode_messages("traces", [msg(req.SerializeToString(), 0), msg(GOOD, 1)])
    assert [d.reason for d in result.dead_letters] == ["invalid_id"]
    assert len(result.batches["otel_traces"]) == 2
    for values in result.batches["otel_traces"].columns.values():
        assert len(values) == 2


def test_empty_request_gives_no_rows_and_no_dead_letter():
    result = decode_messages("traces", [msg(b"", 0), msg(b"{}", 1, headers=[("content-type", b"application/json")])])
    assert result.dead_letters == [] and result.batches == {} and result.decoded_messages == 2


def test_dead_letter_headers_keep_original_headers():
    result = decode_messages("logs", [msg(b"junk", 0, headers=[("tenant", b"a")])])
    headers = result.dead_letters[0].headers()
    assert ("tenant", b"a") in headers
    assert orjson.dumps([k for k, _ in headers])


def test_timestamps_past_datetime64_range_are_dead_lettered_not_retried_forever():
    req = traces_request()
    req.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = 2**64 - 1
    logs = logs_request()
    logs.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano = 2**63
    assert [d.reason for d in decode_messages("traces", [msg(req.SerializeToString())]).dead_letters] == ["invalid_value"]
    assert [d.reason for d in decode_messages("logs", [msg(logs.SerializeToString())]).dead_letters] == ["invalid_value"]
