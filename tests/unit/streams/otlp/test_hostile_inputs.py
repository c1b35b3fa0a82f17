"""Classes of hostile input the decoders must turn into rows or dead letters, never an exception
or a crash: deep nesting (protobuf groups, JSON), open enums outside their column's range."""

import random

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from tests.otlp_builders import varint


def _decode(signal, payload, encoding="otlp_proto"):
    return decode_messages(signal, [RawMessage("t", 0, 0, payload)], encoding)


@pytest.mark.parametrize("depth", [1, 99, 101, 5_000, 150_000])
def test_nested_protobuf_groups_are_refused_not_a_crash(depth):
    groups = b"\x0b" * depth  # start-group tags of field 1, never closed
    inside_a_span = b"\x0a" + varint(len(groups)) + groups
    for payload in (groups, inside_a_span, b"\x0b" * depth + b"\x0c" * depth):
        result = _decode("traces", payload)
        assert len(result.dead_letters) == 1 and not result.batches
        assert len(native.decode_traces([payload]).errors) == 1


@pytest.mark.parametrize("depth", [50, 101, 1000, 100_000])
def test_nested_json_is_a_dead_letter_with_a_reason(depth):
    for payload in (b'{"resourceLogs":' + b"[" * depth + b"]" * depth + b"}",
                    b'{"resourceLogs":[' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}"):
        result = _decode("logs", payload, "otlp_json")
        if depth > 100:
            assert [d.reason for d in result.dead_letters] in (["too_deep"], ["undecodable"], ["wrong_shape"])
        else:
            assert len(result.dead_letters) <= 1


def test_open_enums_outside_their_range_are_stored_as_unspecified():
    request = ExportLogsServiceRequest()
    rec = request.resource_logs.add().scope_logs.add().log_records.add()
    rec.time_unix_nano = 1
    rec.severity_number = 300
    result = _decode("logs", request.SerializeToString())
    assert not result.dead_letters
    assert result.batches["otel_logs"].columns["SeverityNumber"] == [0]


@pytest.mark.parametrize("kind", [2, 2 + 2**32, 2**31 + 2, -1, 6, 2**40])
def test_span_kind_is_read_as_int32_by_both_paths(kind):
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.start_time_unix_nano, span.end_time_unix_nano = b"\x01" * 16, b"\x02" * 8, 1, 2
    payload = bytearray(span.SerializeToString())
    # write the kind (field 6) by hand: a varint of any size, as a producer could
    kind_field = b"\x30" + varint(kind & (2**64 - 1))
    span_bytes = bytes(payload) + kind_field
    scope = b"\x12" + varint(len(span_bytes)) + span_bytes
    resource = b"\x12" + varint(len(scope)) + scope
    wire = b"\x0a" + varint(len(resource)) + resource
    block, slow = native.decode_traces([wire]), _decode("traces", wire)
    assert [e[1] for e in block.errors] == [d.reason for d in slow.dead_letters]
    if not slow.dead_letters:
        assert block.to_columns(["SpanKind"])["SpanKind"] == slow.batches["otel_traces"].columns["SpanKind"]


def test_random_bytes_never_raise():
    rng = random.Random(11)
    for _ in range(3000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        for signal in ("traces", "logs", "metrics"):
            for encoding in ("otlp_proto", "otlp_json"):
                _decode(signal, payload, encoding)


def test_an_unforeseen_failure_is_a_letter_naming_the_class_not_the_payload(monkeypatch):
    from streams.otlp import decode

    def explode(request, out):
        raise KeyError("password=hunter2")

    monkeypatch.setattr(decode, "_logs_to_columns", explode)
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().time_unix_nano = 1
    result = _decode("logs", request.SerializeToString())
    [letter] = result.dead_letters
    assert (letter.reason, letter.detail) == ("internal", "KeyError while decoding")
