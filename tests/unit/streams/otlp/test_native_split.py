"""The native cut of a request by trace (the tail router's) against the protobuf library's: the same
traces in the same order, the same record counts and ends, and each part decodes to the same rows
and refusals, on the workload, on hand-made non-canonical requests and on mutated ones; what
protobuf would not parse, the native cut declines."""

import random

import pytest

from streams.agents.routing import split_by_trace
from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.otlp.values import BadMessage
from streams.tools.workload import Workload
from tests.otlp_builders import field, logs_request, traces_request, varint
from tests.unit.streams.otlp.test_decoder_agreement import mutated

# Built with the package wherever cargo is (pip install -e .): these tests fail, not skip, without it.
assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."
BIG = 1 << 30


def _python(signal, payload):
    """The protobuf library's cut."""
    try:
        return split_by_trace(signal, RawMessage("t", 0, 0, payload), "otlp_proto", max_total=BIG,
                              native_cut=False)
    except BadMessage as exc:
        return exc.reason


def _rows(signal, part):
    result = decode_messages(signal, [RawMessage("t", 0, 0, part)])
    table = "otel_traces" if signal == "traces" else "otel_logs"
    batch = result.batches.get(table)
    columns = {} if batch is None else {k: v for k, v in batch.columns.items() if k != "_origin"}
    return columns, [(d.reason, d.detail) for d in result.dead_letters]


def check_agrees(signal, payload):
    expected = _python(signal, payload)
    cut = native.split_by_trace(signal, payload, BIG)
    if native.redaction_inputs(signal, payload, ["token"]) is not None:  # what the router then asks for
        assert native.split_by_trace(signal, payload, BIG, validated=True) == cut
    if isinstance(expected, str):
        assert cut is None, f"protobuf refused it ({expected}), the native cut did not"
        return
    assert cut is not None, "the native cut declined what protobuf parses"
    assert [t for t, _, _, _ in cut] == list(expected)
    for trace_id, part, records, end_ns in cut:
        want_part, want_records, want_end_ms = expected[trace_id]
        assert (records, end_ns // 1_000_000) == (want_records, want_end_ms)
        assert _rows(signal, part) == _rows(signal, want_part)


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_the_workload(signal):
    workload = Workload(seed=11, extra_attributes=3)
    for _ in range(4):
        spans, logs = workload.trace_requests(20)
        check_agrees(signal, (spans if signal == "traces" else logs).SerializeToString())


def test_non_canonical_requests():
    base = traces_request(3)
    spans = base.resource_spans[0].scope_spans[0].spans
    spans[1].trace_id = b"\x01" * 16
    payload = base.SerializeToString()
    rs = base.resource_spans[0].SerializeToString()
    ss = base.resource_spans[0].scope_spans[0].SerializeToString()
    span = spans[0].SerializeToString()
    cases = [
        payload,
        payload + payload,  # resources twice
        field(1, rs + field(3, b"https://schema/2")),  # schema_url twice, last wins
        field(1, field(1, b"") + field(2, ss) + field(2, ss) + varint(99 << 3) + varint(7)),  # unknown varint field
        field(1, field(2, field(2, span + field(1, b"\x02" * 16)))),  # a span's trace id twice: the last counts
        field(1, field(2, field(2, varint(1 << 3) + varint(5) + field(2, b"\x03" * 8)))),  # a varint trace id: unknown
        field(1, field(2, field(2, span) + varint(9 << 3 | 3) + varint(9 << 3 | 4))),  # an empty unknown group
        field(1, field(2, field(2, field(1, b"")))),  # a span without a trace id
        b"",
    ]
    for case in cases:
        check_agrees("traces", case)
    logs = logs_request()
    check_agrees("logs", logs.SerializeToString() * 2)


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_mutated_requests(signal):
    rng = random.Random(41 if signal == "traces" else 42)
    for payload in mutated(rng, signal, 400):
        check_agrees(signal, payload)


def test_random_bytes_never_raise():
    rng = random.Random(7)
    for _ in range(2000):
        payload = rng.randbytes(rng.randrange(0, 64))
        for signal in ("traces", "logs"):
            check_agrees(signal, payload)


def test_a_resource_repeated_over_many_traces_is_refused_before_it_is_copied():
    request = traces_request(1)
    rs = request.resource_spans[0]
    rs.resource.attributes.add(key="big").value.string_value = "x" * 100_000
    spans = rs.scope_spans[0].spans
    for i in range(1, 300):
        spans.add().CopyFrom(spans[0])
        spans[i].trace_id = i.to_bytes(16, "big")
    payload = request.SerializeToString()
    with pytest.raises(ValueError, match="too_large"):
        native.split_by_trace("traces", payload, 8 * 1024 * 1024)
    # the native cut (of the request as it came, or redacted) and the protobuf library's all refuse it
    for redact, native_cut in ((None, True), (lambda r: 0, True), (lambda r: 0, False)):
        with pytest.raises(BadMessage) as exc:
            split_by_trace("traces", RawMessage("t", 0, 0, payload), "otlp_proto", redact, max_total=8 * 1024 * 1024,
                           native_cut=native_cut)
        assert exc.value.reason == "too_large"
    assert len(split_by_trace("traces", RawMessage("t", 0, 0, payload), "otlp_proto")) == 300  # the default allows it


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_a_redacted_or_json_request_is_cut_as_the_protobuf_library_cuts_it(signal):
    """Parsed (JSON or protobuf), redacted, then serialized and cut natively: the same traces,
    counts, ends and rows as the protobuf library's own cut of the redacted request."""
    from tests.fuzz.make_corpus import otlp_json

    def scrub(request):  # a redaction that changes every request: drops an attribute everywhere
        resources = request.resource_spans if signal == "traces" else request.resource_logs
        for resource in resources:
            del resource.resource.attributes[:1]
        return 1

    workload = Workload(seed=5, extra_attributes=2)
    for _ in range(3):
        spans, logs = workload.trace_requests(12)
        request = spans if signal == "traces" else logs
        for encoding, payload in (("otlp_proto", request.SerializeToString()), ("otlp_json", otlp_json(request))):
            message = RawMessage("t", 0, 0, payload)
            native_parts = split_by_trace(signal, message, encoding, scrub, max_total=BIG)
            python_parts = split_by_trace(signal, message, encoding, scrub, max_total=BIG, native_cut=False)
            assert list(native_parts) == list(python_parts)
            for trace_id, (part, records, end_ms) in native_parts.items():
                want, want_records, want_end_ms = python_parts[trace_id]
                assert (records, end_ms) == (want_records, want_end_ms)
                assert _rows(signal, part) == _rows(signal, want)
