"""Hand-built OTLP requests that set every field, for decoder tests."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
LINK_TRACE = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
LINK_SPAN = bytes.fromhex("1112131415161718")
T0 = 1_700_000_000_123_456_789


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def every_kind() -> list[KeyValue]:
    """One attribute of each AnyValue kind, nested ones included."""
    nested = AnyValue()
    nested.kvlist_value.values.extend([
        kv("z", int_value=1), kv("a", array_value={"values": [AnyValue(string_value="x"), AnyValue(bool_value=True)]}),
        kv("b", bytes_value=b"\x00\xff"),
    ])
    return [
        kv("str", string_value="hello"),
        kv("bool", bool_value=True),
        kv("int", int_value=-42),
        kv("double", double_value=2.5),
        kv("double_int", double_value=3.0),
        kv("double_big", double_value=1e20),
        kv("bytes", bytes_value=b"\x01\x02\x03"),
        kv("array", array_value={"values": [AnyValue(string_value="a"), AnyValue(int_value=1), AnyValue(double_value=1.5)]}),
        KeyValue(key="kvlist", value=nested),
        kv("empty_string", string_value=""),
        KeyValue(key="unset"),
    ]


EXPECTED_KINDS = {
    "str": "hello",
    "bool": "true",
    "int": "-42",
    "double": "2.5",
    "double_int": "3",
    "double_big": "100000000000000000000",
    "bytes": "AQID",
    "array": '["a",1,1.5]',
    "kvlist": '{"a":["x",true],"b":"AP8=","z":1}',
    "empty_string": "",
    "unset": "",
}


def _resource(target, service: str | None = "checkout") -> None:
    if service is not None:
        target.resource.attributes.append(kv("service.name", string_value=service))
    target.resource.attributes.append(kv("host.name", string_value="node-1"))
    target.resource.dropped_attributes_count = 2
    target.schema_url = "https://opentelemetry.io/schemas/1.26.0"


def _scope(target) -> None:
    target.scope.name = "io.test"
    target.scope.version = "1.2.3"
    target.scope.attributes.append(kv("scope.attr", string_value="s"))
    target.scope.dropped_attributes_count = 1
    target.schema_url = "https://opentelemetry.io/schemas/1.25.0"


def traces_request(spans: int = 1, service: str | None = "checkout") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rs, service)
    ss = rs.scope_spans.add()
    _scope(ss)
    for i in range(spans):
        span = ss.spans.add(
            trace_id=TRACE_ID, span_id=SPAN_ID[:-1] + bytes([i % 256]), parent_span_id=PARENT_ID,
            trace_state="th=8;rv=abc", flags=0x301, name="GET /orders/{id}", kind=trace_pb2.Span.SPAN_KIND_SERVER,
            start_time_unix_nano=T0, end_time_unix_nano=T0 + 1_500_000, dropped_attributes_count=3,
            dropped_events_count=4, dropped_links_count=5,
        )
        span.attributes.extend(every_kind())
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        span.status.message = "boom"
        ev = span.events.add(time_unix_nano=T0 + 10, name="exception", dropped_attributes_count=6)
        ev.attributes.append(kv("exception.type", string_value="ValueError"))
        link = span.links.add(trace_id=LINK_TRACE, span_id=LINK_SPAN, trace_state="k=v", flags=1,
                              dropped_attributes_count=7)
        link.attributes.append(kv("link.kind", string_value="follows"))
    return req


def logs_request(bodies: list[AnyValue] | None = None) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _resource(rl)
    sl = rl.scope_logs.add()
    _scope(sl)
    for body in bodies or [AnyValue(string_value="hello")]:
        rec = sl.log_records.add(
            time_unix_nano=T0, observed_time_unix_nano=T0 + 5, severity_number=17, severity_text="ERROR",
            dropped_attributes_count=2, flags=0x101, trace_id=TRACE_ID, span_id=SPAN_ID, event_name="order.failed",
        )
        rec.body.CopyFrom(body)
        rec.attributes.append(kv("code.lineno", int_value=12))
    return req


def metrics_request() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rm)
    sm = rm.scope_metrics.add()
    _scope(sm)

    def exemplar(point, as_int: bool = False):
        ex = point.exemplars.add(time_unix_nano=T0 + 1, trace_id=TRACE_ID, span_id=SPAN_ID)
        if as_int:
            ex.as_int = 9
        else:
            ex.as_double = 0.25
        ex.filtered_attributes.append(kv("user.id", string_value="u1"))

    g = sm.metrics.add(name="mem", description="memory", unit="By")
    g.metadata.append(kv("source", string_value="sdk"))
    p = g.gauge.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=1024, flags=1)
    p.attributes.append(kv("pool", string_value="heap"))
    exemplar(p, as_int=True)

    s = sm.metrics.add(name="requests", unit="{request}")
    s.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    s.sum.is_monotonic = True
    p = s.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_double=7.5)
    exemplar(p)

    h = sm.metrics.add(name="latency", unit="s")
    h.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    p = h.histogram.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, count=6, sum=3.5,
                                    bucket_counts=[1, 2, 3], explicit_bounds=[0.1, 1.0], min=0.05, max=2.0)
    exemplar(p)

    e = sm.metrics.add(name="latency.exp", unit="ms")
    e.exponential_histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    p = e.exponential_histogram.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, count=8, sum=20.0,
                                                scale=2, zero_count=1, zero_threshold=0.001, min=0.5, max=9.0)
    p.positive.offset = 3
    p.positive.bucket_counts.extend([2, 3])
    p.negative.offset = -2
    p.negative.bucket_counts.extend([2])
    exemplar(p)

    q = sm.metrics.add(name="db.latency", unit="ms")
    p = q.summary.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, count=100, sum=250.0)
    p.quantile_values.add(quantile=0.5, value=2.0)
    p.quantile_values.add(quantile=0.99, value=9.0)
    sm.metrics.add(name="no.data")  # a metric without points: no rows, no error
    return req


# ---------------------------------------------------------------- protobuf wire, by hand
# For requests protobuf's own builders will not make (too deep, overlong, invalid UTF-8).


def varint(n: int) -> bytes:
    """A base-128 varint of ``n`` taken as unsigned 64-bit."""
    n &= 2**64 - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def mutate_bytes(rng: random.Random, source: bytes, donors: list[bytes]) -> bytes:
    """One random damage to a payload: cut, flipped or inserted bytes, a deleted run, a splice with
    one of ``donors``, or a run of bytes repeated (a field sent twice)."""
    data = bytearray(source)
    if not data:
        return rng.randbytes(rng.randrange(1, 8))
    action = rng.randrange(6)
    if action == 0:
        del data[rng.randrange(len(data)):]
    elif action == 1:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif action == 2:
        pos = rng.randrange(len(data))
        data[pos:pos] = rng.randbytes(rng.randrange(1, 6))
    elif action == 3:
        start = rng.randrange(len(data))
        del data[start:start + rng.randrange(1, 20)]
    elif action == 4:  # a splice: the head of one payload, the tail of another
        other = rng.choice(donors)
        data = data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]
    else:  # a field duplicated: the same bytes twice
        start = rng.randrange(len(data))
        data[start:start] = data[start:start + rng.randrange(1, 40)]
    return bytes(data)


def mixed_spans_request(rng: random.Random, trace_ids: list[bytes], services: list[str | None], spans: tuple[int, int],
                        start_ns: int, statuses: tuple[int, ...] = (0, 0, 0, 1, 2, 5), wild_times: float = 0.0,
                        refused: bool = False) -> ExportTraceServiceRequest:
    """Spans of ``trace_ids`` in any order, one resource per service (None: no service.name):
    any number of roots per trace or none, the given status codes (codes no enum has included),
    durations of many sizes, some events and links. ``wild_times``: the share of spans with any
    start and an end before or after it; ``refused``: events past 2262, which the decoder refuses."""
    request = ExportTraceServiceRequest()
    for service in services:
        resource = request.resource_spans.add()
        if service is not None:
            resource.resource.attributes.append(kv("service.name", string_value=service))
        scope = resource.scope_spans.add()
        for _ in range(rng.randint(*spans)):
            span = scope.spans.add()
            span.trace_id = rng.choice(trace_ids)
            span.span_id = rng.randbytes(8)
            if rng.random() < 0.6:
                span.parent_span_id = rng.randbytes(8)
            span.name = rng.choice(["GET /a", "GET /b", "work", "x" * rng.randint(0, 40)])
            span.status.code = rng.choice(statuses)
            if rng.random() < wild_times:
                span.start_time_unix_nano = rng.randint(0, 2**63 - 1)
                span.end_time_unix_nano = max(0, span.start_time_unix_nano + rng.randint(-10**9, 10**10))
            else:
                span.start_time_unix_nano = start_ns + rng.randint(0, 10**9)
                span.end_time_unix_nano = span.start_time_unix_nano + rng.choice([10**6, 10**8, 9 * 10**8, 5 * 10**9])
            if rng.random() < 0.3:
                event = span.events.add()
                event.time_unix_nano = 2**63 + 5 if refused else span.start_time_unix_nano
                event.name = "e"
            if rng.random() < 0.2:
                link = span.links.add()
                link.trace_id, link.span_id = rng.randbytes(16), rng.randbytes(8)
    return request
