"""The native log decoder (streams.otlp._native.decode_logs) against the Python decoder.

Both paths decode the same messages: the same messages refused (reason and detail), and every
otel_logs column of ``NativeBlock.to_columns()`` equal, value for value and type for type, to the
Python ``ColumnBatch``. Inputs: the workload's log records (ordinary and high-cardinality), bodies
of every AnyValue kind, records built field by field from wire bytes (times past DateTime64(9) in
each place, ids of every wrong size, severities past FATAL4 and negative, a body sent twice, no
body, no time), and hostile input (truncated at every byte, random bytes, descriptor-aware
mutations, deep bodies). Then the Native block: byte for byte the reference encoding of the Python
columns, and inserted into chDB the same rows as the Python batch inserted by clickhouse-connect.
(The per-field checks of every logs message type are in test_decoder_agreement.py.)
"""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from streams.otlp import native
from streams.otlp.columns import LOG_COLUMNS
from streams.tools.workload import Workload
from tests.decoder_paths import python_result
from tests.otlp_builders import SPAN_ID, TRACE_ID, logs_request
from tests.unit.streams.otlp.test_decoder_agreement import (
    SERVICE,
    attr,
    deep_any_value,
    f32,
    f64,
    ld,
    mutated,
    seed_requests,
    vf,
)
from tests.unit.streams.otlp import test_native_traces as traces_tests
from tests.unit.streams.otlp.test_native_traces import inserted_both_ways, reference_native

assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."

T = 1_700_000_000_000_000_000
MAX_NS = 2**63 - 1


def agree(payloads: list[bytes], **kwargs) -> None:
    traces_tests.agree(payloads, signal="logs", **kwargs)


def agree_each(payloads: list[bytes]) -> None:
    traces_tests.agree_each(payloads, "logs")


def outcome(payload: bytes) -> tuple[bool, bool]:
    return traces_tests.outcome(payload, "logs")


def record_bytes(extra: bytes = b"") -> bytes:
    """A LogRecord: time, observed time, severity, text, a string body, an attribute, ids, flags."""
    return (f64(1, T) + f64(11, T + 5) + vf(2, 9) + ld(3, b"INFO") + ld(5, ld(1, b"hello"))
            + ld(6, attr(b"k", ld(1, b"v"))) + ld(9, TRACE_ID) + ld(10, SPAN_ID) + f32(8, 0x101) + extra)


def logs_payload(*records: bytes, resource: bytes = SERVICE) -> bytes:
    sl = ld(1, ld(1, b"scope")) + b"".join(ld(2, r) for r in records) + ld(3, b"https://s/1")
    return ld(1, ld(1, resource) + ld(2, sl) + ld(3, b"https://r/1"))


def column(payload: bytes, name: str) -> list:
    return native.decode_logs([payload]).to_columns([name])[name]


# ---------------------------------------------------------------- the module


def test_columns_are_the_tables():
    assert list(native._native.LOG_COLUMNS) == LOG_COLUMNS
    assert list(native.column_types("otel_logs")) == LOG_COLUMNS
    block = native.decode_logs([logs_request().SerializeToString()])
    assert block.table == "otel_logs" and block.column_names() == LOG_COLUMNS
    with pytest.raises(ValueError):
        native.column_types("otel_metrics_sum")


def test_spans_only_methods_refuse_a_block_of_logs():
    block = native.decode_logs([logs_request().SerializeToString()])
    for call in (lambda: block.head_groups(), lambda: block.apply_head([]), lambda: block.span_name_routes("r"),
                 lambda: block.remap_span_names("r", {})):
        with pytest.raises(ValueError, match="otel_traces"):
            call()
    spans = native.decode_traces([])
    with pytest.raises(ValueError, match="otel_logs"):
        spans.apply_log_head([], 13)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_workload_messages(seed):
    for distinct in (False, True):
        workload = Workload(seed=seed, extra_attributes=4, distinct_values=distinct)
        payloads = [r.SerializeToString() for s, _, r in workload.requests(12) if s == "logs"]
        agree(payloads)
        assert native.decode_logs(payloads).rows > 20


def test_bodies_of_every_kind():
    bodies = [
        AnyValue(string_value="plain"), AnyValue(string_value=""), AnyValue(int_value=-(2**63)),
        AnyValue(double_value=1e-7), AnyValue(double_value=float("nan")), AnyValue(double_value=float("-inf")),
        AnyValue(bool_value=False), AnyValue(bytes_value=b"\x00\xff"),
        AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="\"q\"\n"),
                                                AnyValue(double_value=2.5), AnyValue()])),
        AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="z", value=AnyValue(bool_value=True)),
                                                   KeyValue(key="a", value=AnyValue(bytes_value=b"x"))])),
        AnyValue(),
    ]
    payload = logs_request(bodies).SerializeToString()
    agree([payload])
    assert column(payload, "Body")[:3] == ["plain", "", str(-(2**63))]


def test_records_field_by_field():
    cases = {
        "no body": record_bytes().replace(ld(5, ld(1, b"hello")), b""),
        "body twice merges": record_bytes(ld(5, vf(3, 7))),
        "body of two arrays concatenates": record_bytes(ld(5, ld(5, ld(1, ld(1, b"a")))) + ld(5, ld(5, ld(1, vf(3, 2))))),
        "no time: the observed time": record_bytes(f64(1, 0)),
        "no times at all": record_bytes(f64(1, 0) + f64(11, 0)),
        "severity past FATAL4": record_bytes(vf(2, 25)),
        "severity negative as int32": record_bytes(vf(2, 2**64 - 3)),
        "severity with high bits": record_bytes(vf(2, 2**32 + 17)),
        "flags past 8 bits": record_bytes(f32(8, 0xFFFFFFFF)),
        "no ids": record_bytes().replace(ld(9, TRACE_ID) + ld(10, SPAN_ID), b""),
        "event name and dropped count": record_bytes(ld(12, b"order.placed") + vf(7, 3)),
        "the last time wins": record_bytes(f64(1, T + 99)),
        "time at the last instant": record_bytes(f64(1, MAX_NS) + f64(11, MAX_NS)),
        "attributes with one key twice": record_bytes(ld(6, attr(b"k", ld(1, b"second")))),
    }
    for name, record in cases.items():
        assert outcome(logs_payload(record)) == (True, False), name
    assert column(logs_payload(cases["no time: the observed time"]), "Timestamp") == [T + 5]
    assert column(logs_payload(cases["severity past FATAL4"]), "SeverityNumber") == [0]
    assert column(logs_payload(cases["flags past 8 bits"]), "TraceFlags") == [255]
    assert column(logs_payload(cases["attributes with one key twice"]), "LogAttributes") == [{"k": "second"}]


def test_refusals_name_the_first_bad_value_in_the_python_decoders_order():
    cases = [
        (record_bytes(f64(11, MAX_NS + 1) + f64(1, MAX_NS + 2) + ld(9, b"x")), "observed time"),
        (record_bytes(f64(1, MAX_NS + 1) + ld(9, b"x")), "log time"),
        (record_bytes(ld(9, b"short") + ld(10, b"x")), "trace_id must be 16 bytes, got 5"),
        (record_bytes(ld(10, b"\x01" * 9)), "span_id must be 8 bytes, got 9"),
    ]
    for record, detail in cases:
        payload = logs_payload(record_bytes(), record)
        agree([payload])
        errors = native.decode_logs([payload]).errors
        assert len(errors) == 1 and detail in errors[0][2], (detail, errors)


def test_not_logs_bytes():
    json_like = b' {"resourceLogs": []}'
    cases = [json_like, b"\xff\xff", ld(7, b"x"), b""]
    agree(cases)
    errors = native.decode_logs(cases).errors
    assert [e[1] for e in errors] == ["wrong_encoding", "undecodable", "undecodable"]
    assert "logs request" in errors[0][2] and "no OTLP logs content" in errors[2][2]


def test_too_large_messages_are_refused_before_reading():
    payloads = [logs_request().SerializeToString(), b"\xff" * 5000]
    agree(payloads, max_message_bytes=1000)
    assert [e[1] for e in native.decode_logs(payloads, max_message_bytes=1000).errors] == ["too_large"]


# ---------------------------------------------------------------- hostile input


def test_truncated_at_every_byte():
    for source in seed_requests("logs"):
        agree_each([source[:i] for i in range(len(source) + 1)])


def test_random_bytes():
    rng = random.Random(21)
    payloads = [rng.randbytes(rng.randrange(64)) for _ in range(3000)]
    payloads += [b"\x0a" + rng.randbytes(rng.randrange(64)) for _ in range(1000)]
    agree_each(payloads)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_mutated_requests(seed):
    payloads = mutated(random.Random(seed), "logs", 1500)
    agree_each(payloads)
    refused = len(native.decode_logs(payloads).errors)
    assert 0 < refused < len(payloads)


@pytest.mark.parametrize("levels", [31, 32, 33, 200, 5000])
def test_deep_bodies(levels):
    """The body sits at depth 4 from the request: arrays nest to protobuf's limit, kvlists past JSON's."""
    for kind in ("array", "kvlist"):
        agree([logs_payload(record_bytes(ld(5, deep_any_value(levels, kind))))])


def test_a_refused_message_leaves_nothing_behind():
    good = logs_request().SerializeToString()
    bad = logs_payload(record_bytes(ld(6, attr(b"only.here", ld(1, b"x")))), record_bytes(ld(9, b"bad")))
    alone = native.decode_logs([good, good])
    mixed = native.decode_logs([good, bad, good])
    assert mixed.rows == alone.rows and mixed.origins() == [0] * (alone.rows // 2) + [2] * (alone.rows // 2)
    assert ("only.here", "x") not in mixed.distinct_attribute_values()
    assert mixed.to_native() == alone.to_native()


# ---------------------------------------------------------------- the Native block


def _payloads() -> list[bytes]:
    workload = Workload(seed=9, extra_attributes=3)
    payloads = [r.SerializeToString() for s, _, r in workload.requests(12) if s == "logs"]
    hostile = logs_request([AnyValue(string_value="\x00\x01\n\"\\é😀"), AnyValue(double_value=float("nan"))])
    hostile.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = 0
    return payloads + [hostile.SerializeToString(), b"\x0b" * 200, logs_payload(record_bytes(vf(2, 99)))]


def test_native_block_is_the_reference_encoding_of_the_python_columns():
    payloads = _payloads()
    block = native.decode_logs(payloads)
    python = python_result(payloads, "logs").batches["otel_logs"].columns
    assert block.to_native() == reference_native({n: python[n] for n in LOG_COLUMNS}, block.rows, "otel_logs")
    assert native.decode_logs([]).to_native() == reference_native({n: [] for n in LOG_COLUMNS}, 0, "otel_logs")


_SELECT = ("SELECT * EXCEPT (Timestamp, ObservedTimestamp), toUnixTimestamp64Nano(Timestamp), "
           "toUnixTimestamp64Nano(ObservedTimestamp), RecordId FROM {db}.otel_logs ORDER BY RecordId")


def test_native_block_inserts_the_rows_of_the_python_batch(chdb_client):
    payloads = _payloads()
    block = native.decode_logs(payloads)
    batch = python_result(payloads, "logs").batches["otel_logs"]
    stored, expected = inserted_both_ways(chdb_client, "otel_logs", block, batch, _SELECT)
    assert len(stored) == len(batch) == block.rows > 20
    assert stored == expected
