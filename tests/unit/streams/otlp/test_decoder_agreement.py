"""The native span and log decoders and the protobuf library agree on every input: the same rows, or both refuse.

The Python decoder reads spans and log records with the protobuf library (upb); the native one
(``streams.otlp._native``, native/) reads the wire itself, after a first pass that accepts exactly
what upb accepts. What must never happen is one of them storing a message the other refuses, or
storing other values, or refusing with another reason. Each class of input where a reader of its
own can go wrong has a test built by hand from wire bytes; a seeded mutation search (bytes and
descriptor-aware edits of valid requests, of both signals) looks for new classes.
(tests/unit/streams/otlp/test_native_traces.py and test_native_logs.py compare the two on
workloads, events, links, bodies and every attribute kind.)

A longer search: ``.venv/bin/python -m tests.unit.streams.otlp.test_decoder_agreement 300``
(seconds) prints the first disagreeing payloads it finds.
"""

from __future__ import annotations

import random
import sys
import time

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.tools.workload import Workload
from tests import decoder_paths
from tests.decoder_paths import differences, native_refuses
from tests.otlp_builders import (LINK_SPAN, LINK_TRACE, SPAN_ID, TRACE_ID, logs_request, mutate_bytes,
                                  traces_request)

# Built with the package wherever cargo is (pip install -e .): these tests fail, not skip, without it.
assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."

# ---------------------------------------------------------------- comparing the two paths


def agree(payload: bytes, signal: str = "traces") -> tuple[bool, bool]:
    """Assert both paths agree on one message; return (stored, refused) for the caller to check."""
    problems = differences([payload], signal)
    assert not problems, "\n".join(problems)
    slow = decode_messages(signal, [RawMessage("t", 0, 0, payload)])
    return bool(slow.batches), bool(slow.dead_letters)


def protobuf_refuses(payload: bytes) -> bool:
    try:
        ExportTraceServiceRequest.FromString(payload)
    except Exception:
        return True
    return False


# ---------------------------------------------------------------- wire bytes by hand


def varint(n: int, pad: int = 0) -> bytes:
    """n as a varint; pad > 0 adds that many redundant continuation bytes (an overlong encoding)."""
    n &= 2**64 - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
        if not n:
            break
    for _ in range(pad):
        out.append(0x80)
    out[-1] &= 0x7F
    return bytes(out)


def tag(field: int, wire: int, pad: int = 0) -> bytes:
    return varint(field << 3 | wire, pad)


def ld(field: int, payload: bytes, tag_pad: int = 0, len_pad: int = 0) -> bytes:
    return tag(field, 2, tag_pad) + varint(len(payload), len_pad) + payload


def vf(field: int, value: int, pad: int = 0) -> bytes:
    return tag(field, 0) + varint(value, pad)


def f64(field: int, value: int) -> bytes:
    return tag(field, 1) + value.to_bytes(8, "little")


def f32(field: int, value: int) -> bytes:
    return tag(field, 5) + value.to_bytes(4, "little")


def span_bytes(extra: bytes = b"", name: bytes = b"op") -> bytes:
    return (ld(1, TRACE_ID) + ld(2, SPAN_ID) + ld(5, name) + vf(6, 2) + f64(7, 10) + f64(8, 25) + extra)


def request(span: bytes | None = None, resource: bytes = b"", scope: bytes = b"", scope_spans_extra: bytes = b"",
            resource_spans_extra: bytes = b"", request_extra: bytes = b"") -> bytes:
    """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans: [span]}]}]}."""
    span = span_bytes() if span is None else span
    ss = (ld(1, scope) if scope else b"") + ld(2, span) + scope_spans_extra
    rs = (ld(1, resource) if resource else b"") + ld(2, ss) + resource_spans_extra
    return ld(1, rs) + request_extra


def attr(key: bytes, value: bytes) -> bytes:
    """A KeyValue's bytes with `value` the AnyValue's bytes."""
    return ld(1, key) + ld(2, value)


SERVICE = ld(1, attr(b"service.name", ld(1, b"checkout")))  # Resource.attributes
BAD_UTF8 = b"\xc3\x28"


def column(payload: bytes, name: str):
    result = decode_messages("traces", [RawMessage("t", 0, 0, payload)])
    return result.batches["otel_traces"].columns[name]


# ---------------------------------------------------------------- descriptor-aware editing

def _schema() -> dict[str, dict[int, tuple[str, str | None]]]:
    """Every message reachable from the request: field number → (wire kind, message type name)."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    kinds = {FD.TYPE_STRING: "string", FD.TYPE_BYTES: "bytes", FD.TYPE_MESSAGE: "message",
             FD.TYPE_FIXED64: "fixed64", FD.TYPE_DOUBLE: "fixed64", FD.TYPE_SFIXED64: "fixed64",
             FD.TYPE_FIXED32: "fixed32", FD.TYPE_FLOAT: "fixed32", FD.TYPE_SFIXED32: "fixed32"}
    schema: dict[str, dict[int, tuple[str, str | None]]] = {}
    todo = [ExportTraceServiceRequest.DESCRIPTOR, ExportLogsServiceRequest.DESCRIPTOR]
    while todo:
        d = todo.pop()
        if d.full_name in schema:
            continue
        schema[d.full_name] = {
            f.number: (kinds.get(f.type, "varint"), f.message_type.full_name if f.message_type else None)
            for f in d.fields
        }
        todo.extend(f.message_type for f in d.fields if f.message_type)
    return schema


SCHEMA = _schema()
LOGS_ONLY = {name for name in SCHEMA if ".logs." in name}
ROOT = ExportTraceServiceRequest.DESCRIPTOR.full_name
ROOTS = {"traces": ROOT, "logs": ExportLogsServiceRequest.DESCRIPTOR.full_name}
ANY_VALUE = AnyValue.DESCRIPTOR.full_name
WIRE_OF = {"varint": 0, "fixed64": 1, "string": 2, "bytes": 2, "message": 2, "fixed32": 5}


class Msg(list):
    """A message as a list of [field, wire, value]: value an int, bytes, a Msg, or a group's list."""

    def __init__(self, type_name: str | None, fields=()):
        super().__init__(fields)
        self.type_name = type_name


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value & (2**64 - 1), pos


def parse(buf: bytes, type_name: str | None) -> Msg:
    """Bytes → Msg, descending into the fields the schema names as messages. ValueError if malformed."""
    out, pos, fields = Msg(type_name), 0, SCHEMA.get(type_name, {})
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            kind, sub = fields.get(field, (None, None))
            if kind == "message":
                try:
                    value = parse(value, sub)
                except ValueError:
                    pass  # kept as bytes
        elif wire == 3:  # a group: its fields up to the end tag of the same number
            value, depth, start = [], 1, pos
            while depth:
                key2, pos = read_varint(buf, pos)
                if key2 & 7 == 3:
                    depth += 1
                elif key2 & 7 == 4:
                    depth -= 1
                elif key2 & 7 == 0:
                    _, pos = read_varint(buf, pos)
                elif key2 & 7 == 2:
                    size, pos = read_varint(buf, pos)
                    pos += size
                else:
                    pos += 8 if key2 & 7 == 1 else 4
                if pos > len(buf):
                    raise ValueError
            if key2 >> 3 != field:
                raise ValueError
            value = [[0, "raw", buf[start:pos - len(varint(key2))]]]
        else:
            raise ValueError
        if pos > len(buf):
            raise ValueError
        out.append([field, wire, value])
    return out


def serialize(node) -> bytes:
    out = bytearray()
    for field, wire, value in node:
        if wire == 0:
            out += tag(field, 0) + varint(value)
        elif wire == 1:
            out += tag(field, 1) + (value & (2**64 - 1)).to_bytes(8, "little")
        elif wire == 5:
            out += tag(field, 5) + (value & (2**32 - 1)).to_bytes(4, "little")
        elif wire == 2:
            payload = serialize(value) if isinstance(value, list) else value
            out += tag(field, 2) + varint(len(payload)) + payload
        elif wire == 3:
            out += tag(field, 3) + serialize(value) + tag(field, 4)
        elif wire == "raw":
            out += value
    return bytes(out)


def messages_in(node: Msg) -> list[Msg]:
    """Every Msg in the tree, the root included, iteratively."""
    found, todo = [], [node]
    while todo:
        m = todo.pop()
        found.append(m)
        todo.extend(v for _, w, v in m if isinstance(v, Msg))
    return found


def random_value(rng: random.Random, kind: str, sub: str | None, depth: int = 0):
    """A value of a field's kind: mostly valid, sometimes the edge of validity."""
    if kind == "varint":
        return rng.choice([0, 1, 2, 3, 5, 2**31 - 1, 2**31, 2**32 + 1, 2**63, 2**64 - 1, rng.getrandbits(64)])
    if kind == "fixed64":
        return rng.choice([0, 1, 2**63 - 1, 2**63, 2**64 - 1, rng.getrandbits(64)])
    if kind == "fixed32":
        return rng.getrandbits(32)
    if kind == "string":
        return rng.choice([b"", b"a", b"service.name", b"process.executable.name", "\u00e9\u4e2d".encode(),
                           BAD_UTF8, b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xff", b"\xc0\xaf"])
    if kind == "bytes":
        return rng.choice([b"", TRACE_ID, SPAN_ID, b"\x01" * 15, b"\x02" * 9, rng.randbytes(rng.randrange(20))])
    return random_message(rng, sub, depth + 1)


def random_message(rng: random.Random, type_name: str, depth: int = 0) -> Msg:
    msg = Msg(type_name)
    fields = SCHEMA[type_name]
    if depth > 6:
        return msg
    for _ in range(rng.randrange(0, 4)):
        number = rng.choice(list(fields))
        kind, sub = fields[number]
        msg.append([number, WIRE_OF[kind], random_value(rng, kind, sub, depth)])
    return msg


def random_unknown(rng: random.Random, depth: int = 0) -> list:
    number = rng.choice([rng.randrange(1, 20), rng.randrange(20, 2**29), 2**29 - 1])
    wire = rng.choice([0, 1, 2, 3, 5])
    if wire == 3:
        inner = [random_unknown(rng, depth + 1) for _ in range(rng.randrange(3 if depth < 3 else 1))]
        return [number, 3, inner]
    if wire == 2:
        return [number, 2, rng.randbytes(rng.randrange(12))]
    return [number, wire, rng.getrandbits(64 if wire != 5 else 32)]


def deep_any_value(levels: int, kind: str = "array", leaf: bytes | None = None) -> bytes:
    """An AnyValue `levels` arrays (or kvlists) deep around a string."""
    value = ld(1, b"leaf") if leaf is None else leaf
    for _ in range(levels):
        value = ld(5, ld(1, value)) if kind == "array" else ld(6, ld(1, attr(b"k", value)))
    return value


RAW_EDITS = [
    b"\x80", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x00", b"\x04", b"\x0c", b"\x03\x04",
    b"\x0b\x0c", b"\x0b", b"\x07", b"\x06", b"\x9a\x80\x80\x80\x80\x00\x00",
    b"\xfa\xff\xff\xff\x0f\x00", b"\xfa\xff\xff\xff\x1f\x00", b"\x12\x85\x80\x80\x80\x00abcde",
    b"\x12\x85\x80\x80\x80\x80\x00abcde",
]


def mutate_tree(rng: random.Random, root: Msg, donors: list[Msg]) -> bytes:
    """One to three descriptor-aware edits of a parsed request, serialized with correct lengths."""
    for _ in range(rng.randrange(1, 4)):
        targets = messages_in(root)
        m = rng.choice(targets)
        fields = SCHEMA.get(m.type_name, {})
        action = rng.randrange(14)
        if action == 0 and m:  # the same field again (merge of singular messages, last scalar wins)
            entry = rng.choice(m)
            m.insert(rng.randrange(len(m) + 1), [entry[0], entry[1], copy_tree(entry[2])])
        elif action == 1 and m:
            del m[rng.randrange(len(m))]
        elif action == 2:  # an unknown field, a group sometimes
            m.insert(rng.randrange(len(m) + 1), random_unknown(rng))
        elif action == 3 and fields:  # a known field with a random (often unusual) value
            number = rng.choice(list(fields))
            kind, sub = fields[number]
            m.insert(rng.randrange(len(m) + 1), [number, WIRE_OF[kind], random_value(rng, kind, sub)])
        elif action == 4 and fields:  # a known field with the wrong wire type
            number = rng.choice(list(fields))
            wire = rng.choice([0, 1, 2, 5, 3])
            value = rng.randbytes(rng.randrange(6)) if wire == 2 else ([] if wire == 3 else rng.getrandbits(32))
            m.insert(rng.randrange(len(m) + 1), [number, wire, value])
        elif action == 5 and m:  # a message field's bytes replaced by garbage or bad UTF-8
            entry = rng.choice(m)
            if entry[1] == 2:
                entry[2] = rng.choice([rng.randbytes(rng.randrange(1, 10)), BAD_UTF8, b"\x0a\x01", b"\x08"])
        elif action == 6 and m:  # a string made invalid UTF-8
            entry = rng.choice(m)
            if entry[1] == 2 and isinstance(entry[2], bytes):
                pos = rng.randrange(len(entry[2]) + 1)
                entry[2] = entry[2][:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"]) + entry[2][pos:]
        elif action == 7:  # a raw byte string spliced between fields (overlong tags and sizes, stray group tags)
            m.insert(rng.randrange(len(m) + 1), [0, "raw", rng.choice(RAW_EDITS)])
        elif action == 8 and m.type_name == ANY_VALUE or action == 8 and m.type_name and "KeyValue" in m.type_name:
            levels = rng.choice([1, 10, 40, 44, 45, 46, 47, 48, 49, 50, 60])
            deep = parse(deep_any_value(levels, rng.choice(["array", "kvlist"])), ANY_VALUE)
            if m.type_name == ANY_VALUE:
                m[:] = deep
            else:
                m.append([2, 2, deep])
        elif action == 9 and m:  # fields reordered
            rng.shuffle(m)
        elif action == 10 and donors:  # a subtree of another request
            donor = rng.choice(messages_in(rng.choice(donors)))
            if donor.type_name == m.type_name:
                m.extend(copy_tree(donor))
        elif action == 11 and m:  # a varint or fixed value changed
            entry = rng.choice(m)
            if entry[1] in (0, 1, 5):
                entry[2] = rng.choice([0, 1, 2**32, 2**31 + 3, 2**63, 2**64 - 1, rng.getrandbits(64)])
        elif action == 12 and m:  # a varint re-encoded overlong, or a 10-byte varint with high bits
            entry = rng.choice(m)
            if entry[1] == 0:
                pad = rng.choice([1, 5, 9, 10])
                body = varint(entry[2], pad)[:10]
                if len(body) == 10:
                    body = body[:9] + bytes([rng.randrange(128)])
                m[m.index(entry)] = [0, "raw", tag(entry[0], 0) + body]
        elif action == 13 and m:  # a group holding known-looking fields
            entry = rng.choice(m)
            if isinstance(entry[2], Msg):
                m.insert(rng.randrange(len(m) + 1), [entry[0], 3, list(entry[2])])
    return serialize(root)


def copy_tree(value):
    if isinstance(value, Msg):
        return Msg(value.type_name, [[f, w, copy_tree(v)] for f, w, v in value])
    if isinstance(value, list):
        return [[f, w, copy_tree(v)] if isinstance(v, list) else [f, w, v] for f, w, v in value]
    return value


def seed_requests(signal: str = "traces") -> list[bytes]:
    if signal == "logs":
        workload = Workload(seed=5, extra_attributes=2)
        reqs = [logs_request().SerializeToString(), workload.trace_requests(4)[1].SerializeToString()]
        r = logs_request()
        record = r.resource_logs[0].scope_logs[0].log_records[0]
        record.event_name, record.observed_time_unix_nano, record.dropped_attributes_count = "e", 7, 2
        record.body.kvlist_value.values.add(key="k").value.array_value.values.add(double_value=1.5)
        reqs.append(r.SerializeToString())
        return reqs
    reqs = [traces_request(2).SerializeToString(), traces_request(1, service=None).SerializeToString()]
    workload = Workload(seed=5, extra_attributes=2)
    reqs.append(workload.trace_requests(2)[0].SerializeToString())
    r = traces_request(1)
    r.resource_spans[0].resource.entity_refs.add(schema_url="s", type="host", id_keys=["host.id"],
                                                 description_keys=["host.name"])
    reqs.append(r.SerializeToString())
    return reqs


def mutated(rng: random.Random, signal: str, count: int) -> list[bytes]:
    """``count`` mutations of the signal's seed requests: descriptor-aware edits mostly, byte damage
    the rest (a field twice, unknown fields and groups, wrong wire types, bad UTF-8, overlong
    varints, deep values, subtrees of other requests)."""
    sources = seed_requests(signal)
    trees = [parse(s, ROOTS[signal]) for s in sources]
    return [mutate_tree(rng, copy_tree(rng.choice(trees)), trees) if rng.random() < 0.7
            else mutate_bytes(rng, rng.choice(sources), sources) for _ in range(count)]


def minimize(payload: bytes) -> bytes:
    """A smaller payload on which the paths still disagree: fields taken out one at a time."""
    try:
        root = parse(payload, ROOT)
    except ValueError:
        return payload
    if serialize(root) != payload or not differences([payload]):
        return payload
    changed = True
    while changed:
        changed = False
        for m in messages_in(root):
            i = 0
            while i < len(m):
                entry = m.pop(i)
                if differences([serialize(root)]):
                    changed = True
                else:
                    m.insert(i, entry)
                    i += 1
    return serialize(root)


def search(seed: int, iterations: int | None = None, seconds: float | None = None, stop_at: int = 1,
           stats: dict | None = None, signal: str = "traces"):
    """Mutated requests on which the two paths disagree: [(payload, problems)]."""
    rng = random.Random(seed)
    found: list[tuple[bytes, list[str]]] = []
    deadline = time.monotonic() + seconds if seconds else None
    i = 0
    while (iterations is None or i < iterations) and (deadline is None or time.monotonic() < deadline):
        i += 1
        batch = mutated(rng, signal, 50)
        if stats is not None:  # what the search reached
            for payload in batch:
                slow = decode_messages(signal, [RawMessage("t", 0, 0, payload)])
                key = "refused" if slow.dead_letters else "stored"
                stats[key] = stats.get(key, 0) + 1
        if not differences(batch, signal):
            continue
        for payload in batch:
            problems = differences([payload], signal)
            if problems:
                found.append((payload, problems))
                if len(found) >= stop_at:
                    return found
    return found


# ---------------------------------------------------------------- the harness itself


def test_the_comparison_notices_a_changed_value(monkeypatch):
    real = decoder_paths.decode_messages

    def skewed(*args, **kwargs):
        result = real(*args, **kwargs)
        names = result.batches["otel_traces"].columns["SpanName"]
        names[-1] += "!"
        return result

    monkeypatch.setattr(decoder_paths, "decode_messages", skewed)
    assert differences([request()]) == ["SpanName: native vs python: row 0: 'op' vs 'op!'"]


def test_protobuf_runs_on_upb():
    """The native reader accepts what upb (protobuf's default backend) accepts. The pure-Python backend
    (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python) reads some inputs otherwise: it matches tags
    by their bytes, so an overlong tag is an unknown field there, and it nests groups without
    upb's limit; on it the two paths would not agree."""
    from google.protobuf.internal import api_implementation

    assert api_implementation.Type() == "upb"


# ---------------------------------------------------------------- 1. tags, lengths and varints


def test_overlong_tags_and_lengths_protobuf_reads_are_read_alike():
    # upb reads tags and lengths of up to 5 bytes, and varint values of up to 10, whatever padding
    # they carry; the bits of a 10th byte past the 64th are dropped, not refused.
    span = (ld(1, TRACE_ID, tag_pad=4) + ld(2, SPAN_ID, len_pad=4) + ld(5, b"op", tag_pad=4, len_pad=4)
            + vf(10, 7, pad=8) + tag(12, 0) + b"\xff" * 9 + b"\x7f" + f64(7, 10) + f64(8, 25))
    payload = request(span)
    assert agree(payload) == (True, False) and not native_refuses(payload)
    assert column(payload, "DroppedAttributesCount") == [7]
    assert column(payload, "DroppedEventsCount") == [2**32 - 1]
    value = ld(9, attr(b"n", tag(3, 0) + b"\x80" * 9 + b"\x7f"))  # int_value: only bit 63 survives
    payload = request(span_bytes(value))
    assert agree(payload) == (True, False) and column(payload, "SpanAttributes") == [{"n": str(-2**63)}]


@pytest.mark.parametrize("where", ["span", "entity_ref", "any_value", "unknown_group"])
@pytest.mark.parametrize("bad", [
    tag(5, 2, pad=5) + b"\x00",                    # a 6-byte tag
    b"\xfa\xff\xff\xff\x1f\x00",                   # a 5-byte tag past 32 bits
    tag(5, 2) + varint(0, pad=5),                  # a 6-byte length
    tag(5, 2) + b"\x80\x80\x80\x80\x08",           # a length of 2^31
    tag(10, 0) + b"\xff" * 10 + b"\x01",           # an 11-byte varint
    tag(11, 2) + varint(0, pad=5),                 # a 6-byte length of a field the native reader reads
], ids=["tag6", "tag33bits", "len6", "len2^31", "varint11", "events_len6"])
def test_tags_and_lengths_longer_than_protobuf_reads_are_refused(where, bad):
    if where == "span":
        payload = request(span_bytes(bad))
    elif where == "entity_ref":  # a field only protobuf parses
        payload = request(resource=SERVICE + ld(3, ld(1, b"s") + bad))
    elif where == "any_value":
        payload = request(span_bytes(ld(9, attr(b"k", ld(1, b"v") + bad))))
    else:
        payload = request(span_bytes(tag(99, 3) + bad + tag(99, 4)))
    assert agree(payload) == (False, True)
    assert native_refuses(payload)


def test_field_number_zero_and_the_largest_field_number():
    assert agree(request(span_bytes(vf(0, 1)))) == (False, True)
    assert agree(request(span_bytes(tag(0, 2) + b"\x00"))) == (False, True)
    assert agree(request(span_bytes(tag(0, 4)))) == (False, True)
    payload = request(span_bytes(vf(2**29 - 1, 1) + ld(2**29 - 1, BAD_UTF8)))
    assert agree(payload) == (True, False) and not native_refuses(payload)
    # field 0 inside an unknown group: upb before 37 skips it, later versions refuse it; the
    # native reader must do what the installed library does
    agree(request(span_bytes(tag(99, 3) + vf(0, 1) + tag(99, 4))))


# ---------------------------------------------------------------- 2. every field as protobuf parses it


def _signal(type_name: str) -> str:
    """The signal whose request a message type is tested in: logs for the logs-only types."""
    return "logs" if type_name in LOGS_ONLY else "traces"


def _seed_tree(signal: str = "traces") -> Msg:
    return parse(seed_requests(signal)[3 if signal == "traces" else 2], ROOTS[signal])


def _first(root: Msg, type_name: str) -> Msg:
    return next(m for m in messages_in(root) if m.type_name == type_name)


def _fields_of_kind(*kinds: str) -> list[tuple[str, int]]:
    return [(t, n) for t, fields in SCHEMA.items() for n, (k, _) in fields.items() if k in kinds]


def _short(type_name: str, number: int) -> str:
    return f"{type_name.rsplit('.', 1)[-1]}.{number}"


def _with_field(type_name: str, entry: list) -> bytes:
    root = _seed_tree(_signal(type_name))
    _first(root, type_name).append(entry)
    return serialize(root)


@pytest.mark.parametrize("type_name,number", _fields_of_kind("string"),
                         ids=[_short(*f) for f in _fields_of_kind("string")])
@pytest.mark.parametrize("bad", [BAD_UTF8, b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\xe2\x82"],
                         ids=["truncated2", "surrogate", "past10ffff", "overlong", "truncated3"])
def test_invalid_utf8_in_any_string_field_is_refused(type_name, number, bad):
    # EntityRef's strings, Status.message, schema URLs, names read only once: all are proto3
    # strings that protobuf checks, so the native reader checks them too.
    payload = _with_field(type_name, [number, 2, bad])
    assert agree(payload, _signal(type_name)) == (False, True)
    assert native_refuses(payload, _signal(type_name))


@pytest.mark.parametrize("type_name,number", _fields_of_kind("string"),
                         ids=[_short(*f) for f in _fields_of_kind("string")])
def test_valid_utf8_in_any_string_field_is_stored_alike(type_name, number):
    payload = _with_field(type_name, [number, 2, "\u00e9\u4e2d\U0001f600\x00".encode()])
    assert agree(payload, _signal(type_name))[1] is False
    assert not native_refuses(payload, _signal(type_name))


@pytest.mark.parametrize("type_name,number", _fields_of_kind("message"),
                         ids=[_short(*f) for f in _fields_of_kind("message")])
@pytest.mark.parametrize("bad", [b"\x07", b"\x0c", b"\x0a\x05ab", b"\x0b", b"\x00\x00", b"\x08"],
                         ids=["wire7", "end_group", "truncated_len", "open_group", "field0", "truncated_varint"])
def test_malformed_bytes_in_any_message_field_are_refused(type_name, number, bad):
    payload = _with_field(type_name, [number, 2, bad])
    assert agree(payload, _signal(type_name)) == (False, True)
    assert native_refuses(payload, _signal(type_name))


@pytest.mark.parametrize("type_name,number", _fields_of_kind("message"),
                         ids=[_short(*f) for f in _fields_of_kind("message")])
def test_a_second_valid_occurrence_of_any_message_field_is_stored_alike(type_name, number):
    signal = _signal(type_name)
    root = _seed_tree(signal)
    sub = SCHEMA[type_name][number][1]
    _first(root, type_name).append([number, 2, copy_tree(_first(root, sub))])
    payload = serialize(root)
    assert agree(payload, signal) == (True, False)
    assert not native_refuses(payload, signal)


ALL_FIELDS = [(t, n) for t, fields in SCHEMA.items() for n in fields]


@pytest.mark.parametrize("type_name,number", ALL_FIELDS, ids=[_short(*f) for f in ALL_FIELDS])
def test_known_fields_with_another_wire_type_are_unknown_fields(type_name, number):
    own = WIRE_OF[SCHEMA[type_name][number][0]]
    values = {0: 2**64 - 1, 1: 2**64 - 1, 2: b"\xff\x07\x0c", 5: 2**32 - 1, 3: [[1, 2, BAD_UTF8]]}
    for wire, value in values.items():
        if wire != own:
            payload = _with_field(type_name, [number, wire, value])
            assert agree(payload, _signal(type_name)) == (True, False), wire
            assert not native_refuses(payload, _signal(type_name)), wire


@pytest.mark.parametrize("type_name", sorted(SCHEMA), ids=[t.rsplit(".", 1)[-1] for t in sorted(SCHEMA)])
def test_unknown_fields_and_groups_in_any_message_are_skipped_alike(type_name):
    group = [[1, 0, 5], [2, 2, BAD_UTF8], [3, 3, [[0, "raw", vf(4, 1)]]], [4, 1, 9], [5, 5, 9]]
    for entry in ([999, 3, group], [17, 2, BAD_UTF8], [2**29 - 1, 0, 1], [100, 1, 3], [100, 5, 3]):
        payload = _with_field(type_name, entry)
        assert agree(payload, _signal(type_name)) == (True, False), entry
        assert not native_refuses(payload, _signal(type_name)), entry


def test_entity_refs_are_checked_like_protobuf():
    """Resource.entity_refs (resource.proto field 3): the native reader stores nothing of it, but a
    malformed one makes protobuf refuse the message, so the native reader refuses it too."""
    good = ld(1, b"https://opentelemetry.io/schemas/1.26.0") + ld(2, b"host") + ld(3, b"host.id") + ld(4, b"host.name")
    assert agree(request(resource=SERVICE + ld(3, good))) == (True, False)
    for bad in (ld(2, BAD_UTF8), ld(3, b"\xff"), b"\x03\x04", b"\x0a\x09short"):
        assert agree(request(resource=SERVICE + ld(3, good + bad))) == (False, True)


# ---------------------------------------------------------------- 3. merging and last-one-wins


def test_a_key_value_sent_with_two_values_merges_them():
    # The reported case: a second, empty AnyValue merges into the first, so the resource keeps
    # its service.name (the native reader once read only the last occurrence: unknown_service).
    resource = ld(1, ld(1, b"service.name") + ld(2, ld(1, b"checkout")) + ld(2, b""))
    payload = request(resource=resource)
    assert agree(payload) == (True, False) and not native_refuses(payload)
    assert column(payload, "ServiceName") == ["checkout"]


@pytest.mark.parametrize("values,expected", [
    ([ld(1, b"a"), b""], "a"),                                         # empty occurrence: kept
    ([ld(1, b"a"), vf(3, 5)], "5"),                                    # another member: last set wins
    ([vf(3, 5), ld(1, b"a")], "a"),
    ([vf(2, 1), vf(99, 1)], "true"),                                   # unknown field only
    ([ld(5, ld(1, ld(1, b"a"))), ld(5, ld(1, vf(3, 2)))], '["a",2]'),  # same message member: merged
    ([ld(5, ld(1, ld(1, b"a"))), ld(1, b"s"), ld(5, ld(1, vf(3, 2)))], "[2]"),  # a member between: replaced
    ([ld(6, ld(1, attr(b"x", vf(3, 1)))), ld(6, ld(1, attr(b"y", vf(3, 2))))], '{"x":1,"y":2}'),
    ([ld(6, ld(1, attr(b"x", vf(3, 1)))), ld(6, ld(1, attr(b"x", ld(1, b"z"))))], '{"x":"z"}'),
    ([ld(5, b""), ld(1, b"")], ""),
    ([ld(1, b"a"), vf(8, 3)], ""),                                     # string_value_strindex last
    ([ld(4, b"")], ""),                                                # double with the wrong wire type
    ([f64(4, 0), ld(7, b"\x00")], "AA=="),                              # bytes after a double
])
def test_any_value_occurrences_merge_as_in_protobuf(values, expected):
    kv = ld(1, b"k") + b"".join(ld(2, v) for v in values)
    payload = request(span_bytes(ld(9, kv)))
    assert agree(payload) == (True, False)
    assert column(payload, "SpanAttributes") == [{"k": expected}]


def test_an_invalid_first_value_is_refused_though_a_second_replaces_it():
    for first in (ld(1, BAD_UTF8), b"\x07", ld(5, ld(1, ld(1, BAD_UTF8)))):
        kv = ld(1, b"k") + ld(2, first) + ld(2, ld(1, b"fine"))
        assert agree(request(span_bytes(ld(9, kv)))) == (False, True)


def test_singular_messages_merge_and_scalars_take_the_last_occurrence():
    status = ld(15, vf(3, 2)) + ld(15, ld(2, b"boom"))                       # code, then message
    span = (span_bytes(status + ld(5, b"renamed") + vf(6, 3) + vf(10, 4) + vf(10, 0) + f32(16, 1) + f32(16, 7)))
    resource = ld(1, attr(b"host.name", ld(1, b"a"))) + vf(2, 9)
    payload = request(span, resource=resource, scope=ld(1, b"lib") + ld(2, b"1"),
                      scope_spans_extra=ld(1, ld(1, b"lib2")) + ld(3, b"s1") + ld(3, b"s2"),
                      resource_spans_extra=ld(1, ld(1, attr(b"service.name", ld(1, b"svc")))))
    assert agree(payload) == (True, False) and not native_refuses(payload)
    row = {name: column(payload, name)[0] for name in (
        "StatusCode", "StatusMessage", "SpanName", "SpanKind", "DroppedAttributesCount", "SpanFlags",
        "ServiceName", "ResourceAttributes", "ResourceDroppedAttrCount", "ScopeName", "ScopeVersion",
        "ScopeSchemaUrl")}
    assert row == {
        "StatusCode": "Error", "StatusMessage": "boom", "SpanName": "renamed", "SpanKind": "Client",
        "DroppedAttributesCount": 0, "SpanFlags": 7, "ServiceName": "svc",
        "ResourceAttributes": {"host.name": "a", "service.name": "svc"}, "ResourceDroppedAttrCount": 9,
        "ScopeName": "lib2", "ScopeVersion": "1", "ScopeSchemaUrl": "s2",
    }


def test_an_earlier_occurrence_of_a_string_is_checked():
    # Once a known difference: only the last occurrence of a singular string was checked.
    assert agree(request(span_bytes(ld(5, b"renamed"), name=BAD_UTF8))) == (False, True)
    assert agree(request(span_bytes(ld(5, BAD_UTF8)))) == (False, True)
    assert agree(request(span_bytes(ld(3, BAD_UTF8) + ld(3, b"k=v")))) == (False, True)
    assert agree(request(resource_spans_extra=ld(3, BAD_UTF8) + ld(3, b"ok"))) == (False, True)


# ---------------------------------------------------------------- 4. enums


@pytest.mark.parametrize("code", [2, 2 + 2**32, 2**31 + 2, 2**64 - 1, 3, 2**63 + 1])
def test_status_code_is_read_as_int32_by_both_paths(code):
    payload = request(span_bytes(ld(15, vf(3, code))))
    assert agree(payload) == (True, False)
    expected = {2: "Error", 1: "Ok"}.get(code & (2**32 - 1), "Unset")
    assert column(payload, "StatusCode") == [expected]


# ---------------------------------------------------------------- 5. nesting


def value_reaching(base: int, deepest: int) -> bytes:
    """An AnyValue at nesting level `base` (the request is level 0) whose deepest message is at
    level `deepest`: arrays two levels at a time, an empty ArrayValue for an odd last level."""
    n, odd = divmod(deepest - base, 2)
    return deep_any_value(n, "array", ld(5, b"") if odd else ld(1, b"leaf"))


PLACES = {  # where an attribute value sits, and the nesting level of its AnyValue
    "resource": (lambda v: request(resource=ld(1, attr(b"k", v))), 4),
    "scope": (lambda v: request(scope=ld(3, attr(b"k", v))), 5),
    "span": (lambda v: request(span_bytes(ld(9, attr(b"k", v)))), 5),
    "event": (lambda v: request(span_bytes(ld(11, f64(1, 5) + ld(3, attr(b"k", v))))), 6),
    "link": (lambda v: request(span_bytes(ld(13, ld(1, LINK_TRACE) + ld(2, LINK_SPAN) + ld(4, attr(b"k", v))))), 6),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("deepest", [99, 100, 101, 102, 400])
def test_nesting_is_counted_from_the_request_as_protobuf_counts_it(place, deepest):
    # protobuf (upb) parses messages nested at most 100 deep below the request; the native reader
    # once handed an attribute's AnyValue to the library alone, which counted from there.
    build, base = PLACES[place]
    payload = build(value_reaching(base, deepest))
    assert protobuf_refuses(payload) == (deepest > 100)
    assert agree(payload) == (deepest <= 100, deepest > 100)
    assert native_refuses(payload) == (deepest > 100)


def test_nesting_through_kvlists_and_past_a_replaced_member():
    for levels, refused in ((32, False), (33, True)):  # 4 + 3 * 32 = 100
        payload = PLACES["resource"][0](deep_any_value(levels, "kvlist"))
        assert agree(payload) == (not refused, refused)
    # a too-deep value replaced by a later oneof member is still parsed, so still refused
    payload = PLACES["span"][0](value_reaching(5, 101) + ld(1, b"replaced"))
    assert agree(payload) == (False, True)


@pytest.mark.parametrize("groups,refused", [(97, False), (98, True), (5_000, True)])
def test_unknown_groups_count_toward_the_nesting_limit(groups, refused):
    payload = request(span_bytes(tag(20, 3) * groups + tag(20, 4) * groups))  # the span is level 3
    assert agree(payload) == (not refused, refused)
    # an AnyValue at level 99 (a span attribute, 47 arrays deep) holding one group reaches 100
    for inner, refused in ((1, False), (2, True)):
        leaf = tag(20, 3) * inner + tag(20, 4) * inner
        payload = PLACES["span"][0](deep_any_value(47, "array", leaf))
        assert agree(payload) == (not refused, refused)


# ---------------------------------------------------------------- groups


def test_malformed_groups_are_refused():
    for bad in (tag(20, 3), tag(20, 3) + tag(21, 4), tag(20, 4), tag(20, 3) + tag(20, 3) + tag(20, 4),
                tag(20, 3) + tag(5, 2) + b"\x05ab" + tag(20, 4), tag(20, 3) + tag(1, 6) + tag(20, 4)):
        assert agree(request(span_bytes(bad))) == (False, True), bad.hex()
    # a group must close inside the message it opened in
    assert agree(request(span_bytes(tag(20, 3)), scope_spans_extra=tag(20, 4))) == (False, True)


def test_groups_under_known_field_numbers_are_unknown_fields():
    # Span.attributes (9), Span.name (5), Span.status (15), ResourceSpans.resource (1) as groups
    span = span_bytes(tag(9, 3) + ld(1, BAD_UTF8) + tag(9, 4) + tag(5, 3) + tag(5, 4) + tag(15, 3) + vf(3, 2) + tag(15, 4))
    payload = request(span, resource_spans_extra=tag(1, 3) + ld(1, b"\xff") + tag(1, 4))
    assert agree(payload) == (True, False) and not native_refuses(payload)
    assert column(payload, "SpanAttributes") == [{}] and column(payload, "StatusCode") == ["Unset"]


# ---------------------------------------------------------------- the search


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_mutated_requests_decode_alike(seed, signal):
    found = search(seed, iterations=30, signal=signal)
    assert not found, "\n".join([found[0][0].hex(), *found[0][1]])


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time())
    print(f"seed {seed}, {seconds:.0f} s")
    counts: dict = {}
    for payload, problems in search(seed, seconds=seconds, stop_at=20, stats=counts):
        small = minimize(payload)
        print(small.hex())
        for p in differences([small]) or problems:
            print("   ", p)
    print(counts)
