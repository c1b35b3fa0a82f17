"""The native span decoder (streams.otlp._native) against the Python decoder.

Both paths decode the same messages: the same messages refused (reason and detail), and every
otel_traces column of ``NativeBlock.to_columns()`` equal, value for value and type for type, to
the Python ``ColumnBatch``. Inputs: the workload generator's
messages, tests/otlp_builders.py requests (every attribute kind, events, links, flags, dropped
counts) and hostile ones (truncated at every byte, random bytes, descriptor-aware mutations,
nesting past protobuf's limit, huge declared lengths, invalid UTF-8 in every string field).
Then the Native block: byte for byte what a reference encoder written here makes of the Python
columns, and inserted into chDB the same rows as the Python batch inserted by clickhouse-connect.
The attribute dictionary: its distinct pairs, and a remap applied to every map.
"""

from __future__ import annotations

import math
import random
import struct
import uuid

import pytest

from streams.config import ClickHouseSettings
from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.otlp.columns import NONE, TRACE_COLUMNS
from streams.tools.workload import Workload
from tests.decoder_paths import differences, python_result
from tests.fuzz.targets import same
from tests.otlp_builders import EXPECTED_KINDS, traces_request
from tests.unit.streams.otlp.test_decoder_agreement import (
    BAD_UTF8,
    PLACES,
    SCHEMA,
    SERVICE,
    WIRE_OF,
    _fields_of_kind,
    _signal,
    _with_field,
    attr,
    deep_any_value,
    f32,
    f64,
    ld,
    mutated,
    request,
    seed_requests,
    span_bytes,
    tag,
    value_reaching,
    varint,
    vf,
)

# Built with the package wherever cargo is (pip install -e .): these tests fail, not skip, without it.
assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."


# ---------------------------------------------------------------- comparing the two paths


def agree(payloads: list[bytes], **kwargs) -> None:
    problems = differences(payloads, **kwargs)
    assert not problems, "\n".join(problems)


def agree_each(payloads: list[bytes], signal: str = "traces") -> None:
    """Agreement on the batch, and (on a disagreement) the first message that disagrees alone."""
    problems = differences(payloads, signal)
    if problems:
        for p in payloads:
            alone = differences([p], signal)
            assert not alone, p.hex() + "\n" + "\n".join(alone)
        pytest.fail("\n".join(problems))


def outcome(payload: bytes, signal: str = "traces") -> tuple[bool, bool]:
    """(stored, refused) of one message, after checking both paths agree on it."""
    agree([payload], signal=signal)
    block = native.DECODERS[signal]([payload])
    return bool(block.rows), bool(block.errors)


def column(payload: bytes, name: str) -> list:
    return native.decode_traces([payload]).to_columns([name])[name]


# ---------------------------------------------------------------- the module


def test_columns_are_the_tables():
    assert list(native._native.COLUMNS) == TRACE_COLUMNS
    assert list(native.column_types()) == TRACE_COLUMNS


@pytest.mark.parametrize("table", ["otel_traces", "otel_logs"])
def test_native_types_are_the_ddl_types_as_the_server_converts_them(table):
    """Each column is sent as its DDL type (LowCardinality ones dictionary-encoded)."""
    from sinks.migrations import targets

    sql = next(t.sql for t in targets(ClickHouseSettings(database="otel"), True) if t.name == table)
    ddl: dict[str, str] = {}
    nested = None
    for line in sql.splitlines():
        words = line.strip().rstrip(",").split()
        if words and words[0].startswith("`") and words[0].endswith("`"):
            words[0] = words[0][1:-1]
        if len(words) >= 2 and words[1] == "Nested":
            nested = words[0]
        elif words and words[0].startswith(")"):
            nested = None
        elif len(words) >= 2 and words[0][0].isupper() and words[0] not in ("INDEX", "ENGINE"):
            typ = " ".join(words[1:]).split(" CODEC")[0].split(" DEFAULT")[0].split(" MATERIALIZED")[0]
            typ = typ.split(" COMMENT")[0]
            typ = typ.rstrip(",")
            # the first definition of a name (DEFAULT expressions go on over later lines)
            ddl.setdefault(f"{nested}.{words[0]}" if nested else words[0], f"Array({typ})" if nested else typ)
    for name, sent in native.column_types(table).items():
        assert sent == ddl[name], name


def test_validator_schema_is_the_descriptors():
    """The validator's table names every field of every message the request reaches, with its kind."""
    assert native._native.schema() == SCHEMA


def test_payloads_must_be_bytes():
    with pytest.raises(TypeError):
        native.decode_traces(["not bytes"])
    assert native.decode_traces([]).rows == 0


def test_without_the_extension_the_wrapper_says_so(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    assert not native.available()
    with pytest.raises(RuntimeError, match="decode_messages"):
        native.decode_traces([b""])


def test_refusals_become_dead_letters_of_their_messages():
    messages = [RawMessage("spans", 3, 10 + i, p) for i, p in enumerate([b"\x07", traces_request(1).SerializeToString()])]
    block = native.decode_traces([m.value for m in messages])
    [letter] = native.dead_letters(messages, block)
    assert (letter.message.offset, letter.reason) == (10, "undecodable")
    assert dict(letter.headers())["otelpipe.dlq.reason"] == b"undecodable"


# ---------------------------------------------------------------- (a) differential: valid requests


def test_every_attribute_kind_event_link_flag_and_dropped_count():
    requests = [traces_request(3), traces_request(1, service=None)]
    r = traces_request(1)
    r.resource_spans[0].resource.attributes.add(key="process.executable.name").value.string_value = "java"
    del r.resource_spans[0].resource.attributes[0]  # no service.name
    requests.append(r)
    payloads = [req.SerializeToString() for req in requests]
    agree(payloads)
    cols = native.decode_traces(payloads).to_columns()
    assert cols["SpanAttributes"][0] == EXPECTED_KINDS
    assert cols["ServiceName"] == ["checkout"] * 3 + ["unknown_service", "unknown_service:java"]
    assert cols["Links.Flags"][0] == [1] and cols["Events.DroppedAttributesCount"][0] == [6]
    assert (cols["SpanFlags"][0], cols["DroppedLinksCount"][0]) == (0x301, 5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_workload_messages(seed):
    workload = Workload(seed=seed, extra_attributes=3)
    payloads = [request.SerializeToString() for signal, _, request in workload.requests(8) if signal == "traces"]
    agree(payloads)
    assert native.decode_traces(payloads).rows > 100


def test_spans_with_many_events_and_links():
    request_ = traces_request(2)
    for span in request_.resource_spans[0].scope_spans[0].spans:
        for i in range(100):
            span.events.add(time_unix_nano=5 + i, name=f"e{i}").attributes.add(key="i").value.int_value = i
        for i in range(40):
            span.links.add(trace_id=bytes([i]) * 16, span_id=b"\x02" * 8, flags=i)
    agree([request_.SerializeToString(), traces_request(1).SerializeToString()])


def test_an_empty_request_gives_no_rows_and_no_refusal():
    block = native.decode_traces([b"", b"\x0a\x00", b"\x0a\x02\x12\x00"])
    assert (block.rows, block.errors) == (0, [])
    agree([b"", b"\x0a\x00", b"\x0a\x02\x12\x00"])


def test_doubles_are_written_as_both_formatters_write_them():
    """Top-level doubles as Go's FormatFloat (values.format_double), doubles inside arrays and
    kvlists as orjson: shortest round-trip digits, the closest, ties to even."""
    rng = random.Random(5)
    values = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    values += [rng.randrange(-10**18, 10**18) / 10 ** rng.randrange(0, 30) for _ in range(2000)]
    values += [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e15, 1e16,
               9999999999999998.0, 1e-5, 1e-6, 1e-7, 0.1, 1 / 3, 2.0**53, 2.0**63, 1.5001296997070312,
               float("nan"), float("inf"), float("-inf"), 123456789012345680.0, 1e21, 1e22, 1e100]
    spans = []
    for i in range(0, len(values), 200):
        attrs = b""
        for j, v in enumerate(values[i:i + 200]):
            bits = struct.unpack("<Q", struct.pack("<d", v))[0]
            attrs += ld(9, attr(b"t%d" % j, f64(4, bits)))
            attrs += ld(9, attr(b"a%d" % j, ld(5, ld(1, f64(4, bits)) + ld(1, vf(3, j)))))
            attrs += ld(9, attr(b"k%d" % j, ld(6, ld(1, attr(b"v", f64(4, bits))))))
        spans.append(request(span_bytes(attrs)))
    agree(spans)


def test_json_strings_escape_as_orjson_does():
    text = bytes(range(0x80)) + "é中😀\u2028".encode()
    values = (ld(5, ld(1, ld(1, text)) + ld(1, ld(7, text)) + ld(1, vf(2, 1)) + ld(1, vf(3, 2**64 - 1)) + ld(1, b"")),
              ld(6, ld(1, attr(text, ld(1, text)) + attr(b"b", ld(7, b"\x00\xff")) + attr(b"a", b"") + ld(1, b"")
                      + ld(1, ld(1, b"z")) + attr(b"a", vf(3, 7)))))
    payload = request(span_bytes(b"".join(ld(9, attr(b"k%d" % i, v)) for i, v in enumerate(values))))
    agree([payload])


@pytest.mark.parametrize("values,expected", [
    ([ld(1, b"a"), b""], "a"),
    ([ld(1, b"a"), vf(3, 5)], "5"),
    ([vf(3, 5), ld(1, b"a")], "a"),
    ([ld(5, ld(1, ld(1, b"a"))), ld(5, ld(1, vf(3, 2)))], '["a",2]'),
    ([ld(5, ld(1, ld(1, b"a"))), ld(1, b"s"), ld(5, ld(1, vf(3, 2)))], "[2]"),
    ([ld(6, ld(1, attr(b"x", vf(3, 1)))), ld(6, ld(1, attr(b"x", ld(1, b"z"))))], '{"x":"z"}'),
    ([ld(1, b"a"), vf(8, 3)], ""),
    ([ld(4, b"")], ""),
    ([f64(4, 0), ld(7, b"\x00")], "AA=="),
    ([ld(5, ld(1, ld(1, b"a") + ld(5, ld(1, vf(2, 0))))), ld(5, ld(1, b""))], '[[false],null]'),
])
def test_any_value_occurrences_merge_as_in_protobuf(values, expected):
    kv = ld(1, b"k") + b"".join(ld(2, v) for v in values)
    payload = request(span_bytes(ld(9, kv)))
    agree([payload])
    assert column(payload, "SpanAttributes") == [{"k": expected}]


def test_merged_resources_scopes_and_statuses_and_last_scalars():
    status = ld(15, vf(3, 2)) + ld(15, ld(2, b"boom"))
    span = span_bytes(status + ld(5, b"renamed") + vf(6, 3) + vf(10, 4) + vf(10, 0) + f32(16, 1) + f32(16, 7)
                      + ld(9, attr(b"k", ld(1, b"1"))) + ld(9, attr(b"j", ld(1, b"2"))) + ld(9, attr(b"k", ld(1, b"3"))))
    resource = ld(1, attr(b"host.name", ld(1, b"a"))) + vf(2, 9)
    payload = request(span, resource=resource, scope=ld(1, b"lib") + ld(2, b"1"),
                      scope_spans_extra=ld(1, ld(1, b"lib2")) + ld(3, b"s1") + ld(3, b"s2"),
                      resource_spans_extra=ld(1, ld(1, attr(b"service.name", ld(1, b"svc")))))
    agree([payload])
    assert list(column(payload, "SpanAttributes")[0].items()) == [("k", "3"), ("j", "2")]
    assert column(payload, "ServiceName") == ["svc"]


@pytest.mark.parametrize("kind", [2, 2 + 2**32, 2**31 + 2, 2**64 - 1, 6, 2**40])
def test_enums_are_read_as_int32(kind):
    agree([request(span_bytes(vf(6, kind) + ld(15, vf(3, kind))))])


def test_refusals_name_the_first_bad_value_in_the_python_decoders_order():
    t2262, trace = 2**63, b"\x01" * 16

    def link(trace_id: bytes, span_id: bytes) -> bytes:
        return ld(13, ld(1, trace_id) + ld(2, span_id))

    spans = [
        span_bytes(f64(8, t2262) + ld(1, b"\x01")),                     # time before ids
        span_bytes(ld(2, b"\x01" * 9) + ld(4, b"\x01")),                 # span_id before parent
        span_bytes(ld(4, b"\x01") + ld(11, f64(1, t2262 + 5))),           # parent before events
        span_bytes(ld(11, f64(1, 1)) + ld(11, f64(1, 2**64 - 1)) + link(b"\x01", b"\x02")),
        span_bytes(link(trace, b"\x02") + link(b"\x03", b"\x04" * 8)),  # every link's trace_id first
        span_bytes(link(trace, b"\x02" * 8) + link(trace, b"\x02" * 7)),
    ]
    payloads = [request(s) for s in spans]
    payloads.append(request(span_bytes()) + ld(1, ld(2, ld(2, span_bytes(ld(1, b"x"))))))  # a later resource
    agree(payloads)
    assert [e[1] for e in native.decode_traces(payloads).errors] == [
        "invalid_value", "invalid_id", "invalid_id", "invalid_value", "invalid_id", "invalid_id", "invalid_id"]


def test_too_large_messages_are_refused_before_reading():
    payloads = [traces_request(1).SerializeToString(), traces_request(3).SerializeToString(), b"\xff" * 5000]
    agree(payloads, max_message_bytes=1000)
    assert [e[1] for e in native.decode_traces(payloads, max_message_bytes=1000).errors] == ["too_large"] * 2


# ---------------------------------------------------------------- (a) differential: hostile input


def test_truncated_at_every_byte():
    for source in seed_requests():
        agree_each([source[:i] for i in range(len(source) + 1)])


def test_random_bytes():
    rng = random.Random(11)
    payloads = [rng.randbytes(rng.randrange(64)) for _ in range(3000)]
    payloads += [b"\x0a" + rng.randbytes(rng.randrange(64)) for _ in range(1000)]
    payloads += [b" \t{" + rng.randbytes(8), b"[1]", b"\n\x0b\x0c\r {}"]
    agree_each(payloads)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_mutated_requests(seed):
    """Byte damage and descriptor-aware edits (a field twice, unknown fields and groups, wrong wire
    types, bad UTF-8, overlong varints, deep values, subtrees of other requests)."""
    payloads = mutated(random.Random(seed), "traces", 1500)
    agree_each(payloads)
    refused = len(native.decode_traces(payloads).errors)
    assert 0 < refused < len(payloads)


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("deepest", [99, 100, 101, 102, 400, 5000])
def test_nesting_past_protobufs_limit_is_refused_alike(place, deepest):
    build, base = PLACES[place]
    payload = build(value_reaching(base, deepest))
    assert outcome(payload) == (deepest <= 100, deepest > 100)


@pytest.mark.parametrize("levels", [32, 33, 1000])
def test_nested_kvlists(levels):
    assert outcome(PLACES["resource"][0](deep_any_value(levels, "kvlist"))) == (levels <= 32, levels > 32)


@pytest.mark.parametrize("groups", [1, 97, 98, 150_000])
def test_nested_groups(groups):
    for payload in (request(span_bytes(tag(20, 3) * groups + tag(20, 4) * groups)), b"\x0b" * groups,
                    b"\x0b" * groups + b"\x0c" * groups, ld(1, b"\x0b" * groups)):
        agree([payload])


@pytest.mark.parametrize("declared", [2**31 - 1, 2**31, 2**32, 2**35 - 1, 2**63, 2**64 - 1])
def test_huge_declared_lengths(declared):
    """A length past the input (or past protobuf's 31 bits) refuses the message; nothing is
    allocated from it."""
    for where in (lambda b: b, lambda b: request(span_bytes(b)), lambda b: request(resource=SERVICE + b)):
        for number in (1, 5, 9, 11, 99):
            payload = where(tag(number, 2) + varint(declared) + b"abc")
            agree([payload])
            assert native.decode_traces([payload]).errors


@pytest.mark.parametrize("type_name,number", _fields_of_kind("string"))
def test_invalid_utf8_in_every_string_field(type_name, number):
    for bad in (BAD_UTF8, b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\xe2\x82"):
        assert outcome(_with_field(type_name, [number, 2, bad]), _signal(type_name)) == (False, True)
    assert outcome(_with_field(type_name, [number, 2, "é中😀\x00".encode()]), _signal(type_name))[1] is False


@pytest.mark.parametrize("type_name,number", _fields_of_kind("message"))
def test_malformed_bytes_in_every_message_field(type_name, number):
    for bad in (b"\x07", b"\x0c", b"\x0a\x05ab", b"\x0b", b"\x00\x00", b"\x08"):
        assert outcome(_with_field(type_name, [number, 2, bad]), _signal(type_name)) == (False, True)


@pytest.mark.parametrize("type_name", sorted(SCHEMA))
def test_every_field_with_another_wire_type_and_unknown_fields(type_name):
    values = {0: 2**64 - 1, 1: 2**64 - 1, 2: b"\xff\x07\x0c", 5: 2**32 - 1, 3: [[1, 2, BAD_UTF8]]}
    payloads = []
    for number, (kind, _) in SCHEMA[type_name].items():
        payloads += [_with_field(type_name, [number, wire, v]) for wire, v in values.items() if wire != WIRE_OF[kind]]
    group = [[1, 0, 5], [2, 2, BAD_UTF8], [3, 3, [[0, "raw", vf(4, 1)]]], [4, 1, 9], [5, 5, 9]]
    for entry in ([999, 3, group], [17, 2, BAD_UTF8], [2**29 - 1, 0, 1], [100, 1, 3], [100, 5, 3]):
        payloads.append(_with_field(type_name, entry))
    agree(payloads, signal=_signal(type_name))
    assert not native.DECODERS[_signal(type_name)](payloads).errors


def test_field_number_zero_and_bad_tags():
    for payload in (request(span_bytes(vf(0, 1))), request(span_bytes(tag(99, 3) + tag(0, 4))),
                    request(span_bytes(tag(5, 2, pad=5) + b"\x00")), request(span_bytes(b"\xfa\xff\xff\xff\x1f\x00")),
                    request(span_bytes(tag(10, 0) + b"\xff" * 10 + b"\x01")), request(span_bytes(tag(1, 6))),
                    request(span_bytes(tag(20, 4)))):
        assert outcome(payload) == (False, True)
    assert outcome(request(span_bytes(vf(2**29 - 1, 1) + ld(2**29 - 1, BAD_UTF8))))[0] is True
    # field 0 inside an unknown group: upb before 37 (the installed protobuf) skips it, later
    # versions refuse it; whichever is installed, both paths must decide alike
    for inner in (vf(0, 1), tag(0, 2) + b"\x01x", tag(0, 3) + tag(0, 4), tag(0, 1) + bytes(8), tag(0, 5) + bytes(4),
                  tag(0, 3) + tag(5, 3) + tag(5, 4) + tag(0, 4), tag(0, 3), tag(0, 6)):
        agree([request(span_bytes(tag(99, 3) + inner + tag(99, 4)))])


def test_a_refused_message_leaves_nothing_behind():
    """Rows, strings, pairs and maps of a message refused half-way are taken back: the block of
    [good, bad, good] is the block of [good, good] but for the origins."""
    good = Workload(seed=4, extra_attributes=2).trace_requests(3)[0].SerializeToString()
    bad_late = good + request(span_bytes(ld(9, attr(b"only.in.bad", ld(1, b"v"))) + ld(1, b"\x01")))
    both = native.decode_traces([good, bad_late, good])
    plain = native.decode_traces([good, good])
    assert [e[:2] for e in both.errors] == [(1, "invalid_id")]
    assert both.to_columns() == plain.to_columns()
    assert both.distinct_attribute_values() == plain.distinct_attribute_values()
    assert both.to_native() == plain.to_native()


# ---------------------------------------------------------------- the attribute dictionary


def _map_columns(columns: dict) -> list[dict]:
    maps = []
    for name in ("ResourceAttributes", "ScopeAttributes", "SpanAttributes"):
        maps += columns[name]
    for name in ("Events.Attributes", "Links.Attributes"):
        maps += [m for cell in columns[name] for m in cell]
    return maps


def test_distinct_attribute_values_are_the_pairs_of_every_map():
    payloads = [r.SerializeToString() for s, _, r in Workload(seed=2, extra_attributes=4).requests(5) if s == "traces"]
    payloads.append(traces_request(2).SerializeToString())
    block = native.decode_traces(payloads)
    pairs = block.distinct_attribute_values()
    assert len(pairs) == len(set(pairs))
    batch = python_result(payloads).batches["otel_traces"].columns
    assert set(pairs) == {kv for m in _map_columns(batch) for kv in m.items()}
    assert ("service.name", "checkout") in pairs and ("exception.type", "ValueError") in pairs


def test_remap_applies_one_decision_per_pair_to_every_map():
    payloads = [r.SerializeToString() for s, _, r in Workload(seed=3, extra_attributes=2).requests(4) if s == "traces"]
    payloads.append(traces_request(2).SerializeToString())
    block = native.decode_traces(payloads)
    pairs = block.distinct_attribute_values()
    rng = random.Random(1)
    mapping = {}
    for pair in pairs:
        choice = rng.random()
        if choice < 0.2:
            mapping[pair] = None
        elif choice < 0.5:
            mapping[pair] = f"masked:{len(pair[1])}"
    mapping[("no.such.key", "x")] = "ignored"
    expected_changes = sum(1 for kv in pairs if kv in mapping and mapping[kv] != kv[1])
    assert block.remap_attribute_values(mapping) == expected_changes

    def remapped(m: dict) -> dict:
        return {k: mapping.get((k, v), v) for k, v in m.items() if mapping.get((k, v), v) is not None}

    python = python_result(payloads).batches["otel_traces"].columns
    columns = block.to_columns()
    for name in TRACE_COLUMNS:
        want = python[name]
        if name in ("ResourceAttributes", "ScopeAttributes", "SpanAttributes"):
            want = [remapped(m) for m in want]
        elif name in ("Events.Attributes", "Links.Attributes"):
            want = [[remapped(m) for m in cell] if cell else NONE for cell in want]
        assert same(columns[name], want), name
    after = block.distinct_attribute_values()
    assert len(after) == len(set(after))
    assert set(after) == {kv for m in _map_columns(columns) for kv in m.items()}
    assert block.to_native() == reference_native(columns, block.rows)
    assert block.remap_attribute_values({}) == 0


def test_remap_checks_its_argument():
    block = native.decode_traces([traces_request(1).SerializeToString()])
    with pytest.raises(TypeError):
        block.remap_attribute_values({"service.name": "x"})
    with pytest.raises(TypeError):
        block.remap_attribute_values({("service.name", "checkout"): 3})


# ---------------------------------------------------------------- (b) the Native block


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _encode(values: list, typ: str) -> bytes:
    """ClickHouse Native data of one column, written from Python values."""
    if typ.startswith("Array("):
        inner = typ[len("Array("):-1]
        offsets, flat, total = b"", [], 0
        for cell in values:
            total += len(cell)
            offsets += struct.pack("<Q", total)
            flat.extend(cell)
        return offsets + _encode(flat, inner)
    if typ in ("Map(String, String)", "Map(LowCardinality(String), String)"):
        offsets, keys, vals, total = b"", [], [], 0
        for m in values:
            total += len(m)
            offsets += struct.pack("<Q", total)
            keys += list(m)
            vals += list(m.values())
        return offsets + _encode(keys, typ[len("Map("):-len(", String)")]) + _encode(vals, "String")
    if typ == "LowCardinality(String)":  # as clickhouse-connect writes it
        if not values:
            return b""
        dictionary: dict[str, int] = {}
        indexes = [dictionary.setdefault(v, len(dictionary)) for v in values]
        width = int(math.log2(len(dictionary))) >> 3
        return (struct.pack("<QQ", (1 << 9) | (1 << 10) | width, len(dictionary)) + _encode(list(dictionary), "String")
                + struct.pack("<Q", len(indexes)) + b"".join(struct.pack("<" + "BHI"[width], i) for i in indexes))
    if typ == "String":
        return b"".join(_varint(len(v.encode())) + v.encode() for v in values)
    fmt = {"DateTime64(9)": "<q", "UInt64": "<Q", "UInt32": "<I", "UInt8": "<B"}[typ]
    return b"".join(struct.pack(fmt, v) for v in values)


def reference_native(columns: dict, rows: int, table: str = "otel_traces") -> bytes:
    types = native.column_types(table)
    out = _varint(len(columns)) + _varint(rows)
    for name, values in columns.items():
        out += _varint(len(name)) + name.encode() + _varint(len(types[name])) + types[name].encode()
        if "LowCardinality" in types[name]:
            out += struct.pack("<Q", 1)  # the serialization version, before the column's data
        out += _encode(values, types[name])
    return out


def test_native_block_is_the_reference_encoding_of_the_python_columns():
    payloads = [r.SerializeToString() for s, _, r in Workload(seed=6, extra_attributes=3).requests(6) if s == "traces"]
    payloads += [traces_request(3).SerializeToString(), b"\x0a\x01", request(span_bytes(ld(1, b"\x01")))]
    block = native.decode_traces(payloads)
    python = python_result(payloads).batches["otel_traces"].columns
    expected = {name: python[name] for name in TRACE_COLUMNS}
    assert block.to_native() == reference_native(expected, block.rows)
    some = ["SpanAttributes", "Timestamp", "Links.Attributes", "ServiceName"]
    assert block.to_native(some) == reference_native({n: python[n] for n in some}, block.rows)
    assert native.decode_traces([]).to_native() == reference_native({n: [] for n in TRACE_COLUMNS}, 0)
    with pytest.raises(KeyError):
        block.to_native(["NoSuchColumn"])


# Rows as clickhouse-connect reads them, with the nanosecond columns as integers (it reads
# DateTime64(9) to microseconds).
_SELECT = ("SELECT * EXCEPT (Timestamp, `Events.Timestamp`), toUnixTimestamp64Nano(Timestamp), "
           "arrayMap(t -> toUnixTimestamp64Nano(t), `Events.Timestamp`), RecordId "
           "FROM {db}.otel_traces ORDER BY SpanId, Timestamp")


def _traces_table(client, database: str, table: str = "otel_traces") -> None:
    from sinks.migrations import targets

    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    target = next(t for t in targets(ClickHouseSettings(database=database), True) if t.name == table)
    client.command(target.sql)


def inserted_both_ways(client, table: str, block, batch, select: str) -> tuple[list, list]:
    """The rows ``select`` reads back after the block's Native bytes went in with ``raw_insert`` and
    the Python batch with ``client.insert``, each into a fresh database: (native rows, Python rows)."""
    suffix = uuid.uuid4().hex[:10]
    native_db, python_db = f"native_{suffix}", f"python_{suffix}"
    names = block.column_names()
    try:
        for db in (native_db, python_db):
            _traces_table(client, db, table)
        client.raw_insert(f"{native_db}.{table}", names, insert_block=block.to_native(names), fmt="Native")
        client.insert(f"{python_db}.{table}", batch.insert_columns(), column_names=batch.column_names,
                      column_oriented=True)
        return (client.query(select.format(db=native_db)).result_rows,
                client.query(select.format(db=python_db)).result_rows)
    finally:
        for db in (native_db, python_db):
            client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


def test_native_block_inserts_the_rows_of_the_python_batch(chdb_client):
    workload = Workload(seed=8, extra_attributes=4)
    payloads = [r.SerializeToString() for s, _, r in workload.requests(10) if s == "traces"]
    payloads += [traces_request(3).SerializeToString(), traces_request(1, service=None).SerializeToString()]
    hostile = traces_request(1)
    span = hostile.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="nan").value.double_value = float("nan")
    span.attributes.add(key="control").value.string_value = "\x00\x01\n\"\\é😀"
    span.start_time_unix_nano, span.end_time_unix_nano = 0, 5
    payloads += [hostile.SerializeToString(), b"\x0b" * 200]
    block = native.decode_traces(payloads)
    batch = python_result(payloads).batches["otel_traces"]
    stored, expected = inserted_both_ways(chdb_client, "otel_traces", block, batch, _SELECT)
    assert len(stored) == len(batch) == block.rows > 200
    assert stored == expected


def test_a_block_sent_as_several_inserts_the_same_rows(chdb_client):
    """to_native(start=, stop=): runs of rows as Native blocks of their own, one insert of them all."""
    workload = Workload(seed=4, extra_attributes=2)
    payloads = [r.SerializeToString() for signal, _, r in workload.requests(6) if signal == "traces"]
    block = native.decode_traces(payloads)
    names = list(TRACE_COLUMNS)
    assert block.to_native(names, 0, len(block)) == block.to_native(names)
    with pytest.raises(ValueError):
        block.to_native(names, 5, 2)
    db = f"t_{uuid.uuid4().hex[:12]}"
    chdb_client.command(f"CREATE DATABASE {db}")
    try:
        _traces_table(chdb_client, db)
        cuts = [0, 1, 7, len(block) // 2, len(block) - 1, len(block)]
        pieces = b"".join(block.to_native(names, a, b) for a, b in zip(cuts, cuts[1:]))
        once = {"insert_deduplicate": 0}
        chdb_client.raw_insert(f"{db}.otel_traces", names, insert_block=block.to_native(names), fmt="Native",
                               settings=once)
        chdb_client.raw_insert(f"{db}.otel_traces", names, insert_block=pieces, fmt="Native", settings=once)
        halves = chdb_client.query(f"SELECT count(), count(DISTINCT *) FROM {db}.otel_traces").result_rows[0]
        assert halves == (2 * len(block), len(block))  # every row twice: the pieces hold exactly the block's rows
    finally:
        chdb_client.command(f"DROP DATABASE {db} SYNC")


@pytest.mark.parametrize("names", [1, 300, 70_000], ids=["one", "uint16", "uint32"])
def test_low_cardinality_indexes_of_every_width_insert_their_values(chdb_client, names):
    """Dictionaries of 1, 300 and 70,000 span names and attribute keys (1-, 2- and 4-byte indexes)."""
    request_ = traces_request(1)
    spans = request_.resource_spans[0].scope_spans[0].spans
    first = spans[0]
    for i in range(1, names):  # small spans, so 70,000 stay within the message limit
        span = spans.add(trace_id=first.trace_id, span_id=i.to_bytes(8, "big"), name=f"op-{i}",
                         start_time_unix_nano=first.start_time_unix_nano, end_time_unix_nano=first.end_time_unix_nano)
        span.attributes.add(key=f"key.{i}").value.string_value = "v"
    block = native.decode_traces([request_.SerializeToString()])
    assert len(block) == names
    db = f"t_{uuid.uuid4().hex[:12]}"
    try:
        _traces_table(chdb_client, db)
        chdb_client.raw_insert(f"{db}.otel_traces", list(TRACE_COLUMNS), insert_block=block.to_native(), fmt="Native")
        stored = chdb_client.query(f"SELECT SpanName, mapKeys(SpanAttributes) FROM {db}.otel_traces "
                                   "ORDER BY SpanId").result_rows
        expected = block.to_columns(["SpanId", "SpanName", "SpanAttributes"])
        by_id = sorted(zip(expected["SpanId"], expected["SpanName"], expected["SpanAttributes"]))
        assert [(n, sorted(k)) for n, k in stored] == [(n, sorted(a)) for _, n, a in by_id]
    finally:
        chdb_client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
