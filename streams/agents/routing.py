"""Route records by key onto an internal topic, so that everything with one key meets in one worker.

Series budgets need every point of a metric in one place: a source message holds many metrics and
a source partition is read by whichever worker owns it. ``split_metrics`` cuts one OTLP metrics
request into one request per partition of the routed topic, by a seeded hash of the metric name
(``route_partition``, the same in every process), keeping resource and scope. Each part travels
in an Avro envelope (``schemas/avro/routed_otlp.avsc``) with the source coordinates.

The worker that owns routed partition P holds the state of every metric routed to P. It writes
the rows under the *source* coordinates (``virtual_message``): a part re-routed after a crash of
the router has the same coordinates, lands in the same ledger range and reuses its insert token,
so it is not written twice.
"""

from __future__ import annotations

import io
import itertools
import re
from collections import defaultdict
from typing import Any, Callable

import fastavro
import orjson
import xxhash

from streams.otlp.batch import RawMessage
from streams.config import PROJECT_ROOT
from streams.otlp import native
from streams.otlp.decode import choose_encoding, parse_request
from streams.otlp.values import BadMessage

ROUTED_SCHEMA_PATH = PROJECT_ROOT / "schemas" / "avro" / "routed_otlp.avsc"
ROUTED_SCHEMA = fastavro.parse_schema(orjson.loads(ROUTED_SCHEMA_PATH.read_bytes()))
TRACES_SCHEMA_PATH = PROJECT_ROOT / "schemas" / "avro" / "routed_traces.avsc"
TRACES_SCHEMA = fastavro.parse_schema(orjson.loads(TRACES_SCHEMA_PATH.read_bytes()))
_ROUTE_SEED = 0x6F74_6C70  # fixed forever: changing it moves keys between partitions
PROTOBUF_HEADER = ("content-type", b"application/x-protobuf")


def route_partition(key: str, partitions: int) -> int:
    return xxhash.xxh64_intdigest(key.encode("utf-8", "surrogatepass"), seed=_ROUTE_SEED) % partitions


_FIELDS = {  # request → resources → scopes → records
    "traces": ("resource_spans", "scope_spans", "spans"),
    "logs": ("resource_logs", "scope_logs", "log_records"),
    "metrics": ("resource_metrics", "scope_metrics", "metrics"),
}


def split_request(signal: str, request: Any, key_of: Callable[[Any], Any]) -> tuple[dict[Any, Any], dict[Any, int]]:
    """Cut a request into one request per key of its records (``key_of(record)``), each keeping its
    records' resource and scope. Returns (key → request, key → record count)."""
    resource_field, scope_field, record_field = _FIELDS[signal]
    parts: dict[Any, Any] = {}
    counts: dict[Any, int] = defaultdict(int)
    for resource in getattr(request, resource_field):
        resource_out: dict[Any, Any] = {}
        for scope in getattr(resource, scope_field):
            groups: dict[Any, list[Any]] = defaultdict(list)
            for record in getattr(scope, record_field):
                groups[key_of(record)].append(record)
            for key, records in groups.items():
                out_resource = resource_out.get(key)
                if out_resource is None:
                    out = parts.get(key)
                    if out is None:
                        out = parts[key] = type(request)()
                    out_resource = resource_out[key] = getattr(out, resource_field).add()
                    out_resource.resource.CopyFrom(resource.resource)
                    out_resource.schema_url = resource.schema_url
                out_scope = getattr(out_resource, scope_field).add()
                out_scope.scope.CopyFrom(scope.scope)
                out_scope.schema_url = scope.schema_url
                getattr(out_scope, record_field).extend(records)
                counts[key] += len(records)
    return parts, counts


def split_metrics(message: RawMessage, default_encoding: str, partitions: int) -> dict[int, bytes]:
    """Partition → protobuf request with the metrics routed there. Raises BadMessage."""
    encoding = choose_encoding(message, default_encoding)
    request = parse_request("metrics", message.value, encoding)
    routes: dict[str, int] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name not in routes:
                    routes[metric.name] = route_partition(metric.name, partitions)
    targets = set(routes.values())
    if len(targets) == 1 and encoding == "otlp_proto":
        return {targets.pop(): message.value}  # already the request to send
    parts, _ = split_request("metrics", request, lambda metric: routes[metric.name])
    return {partition: part.SerializeToString() for partition, part in parts.items()}


PIECE_HEADER = "otelpipe.piece"
_PIECE = re.compile(rb"[0-9]+(\.[0-9]+){0,31}")


def halve_metrics(payload: bytes) -> list[bytes] | None:
    """A routed metrics part cut in two requests of about half its metrics each (in order), or
    None when it holds a single metric. For a part its topic refuses as too large."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest.FromString(payload)
    total = sum(len(sm.metrics) for rm in request.resource_metrics for sm in rm.scope_metrics)
    if total < 2:
        return None
    half, position = total // 2, itertools.count()  # split_request visits the metrics in order
    parts, _ = split_request("metrics", request, lambda metric: next(position) >= half)
    return [parts[False].SerializeToString(), parts[True].SerializeToString()]


def _avro(schema: Any, signal: str, message: RawMessage, route: int, **fields: Any) -> bytes:
    """An envelope: the source coordinates every routed record carries, and ``fields``."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {
        "signal": signal,
        "source_topic": message.topic,
        "source_partition": message.partition,
        "source_offset": message.offset,
        "source_timestamp_ms": message.timestamp_ms,
        "route": route,
        **fields,
    })
    return buf.getvalue()


def encode_envelope(signal: str, message: RawMessage, route: int, payload: bytes, records: int = 0,
                    trace_id: str = "", records_end_ms: int = 0) -> bytes:
    return _avro(ROUTED_SCHEMA, signal, message, route, payload=payload, records=records, trace_id=trace_id,
                 records_end_ms=records_end_ms)


SPLIT_MAX_TOTAL_BYTES = 64 * 1024 * 1024  # what cutting one message by trace may make at most


def split_by_trace(signal: str, message: RawMessage, default_encoding: str,
                   redact: Callable[[Any], Any] | None = None,
                   max_total: int = SPLIT_MAX_TOTAL_BYTES, validated: bool = False,
                   native_cut: bool = True) -> dict[str, tuple[bytes, int, int]]:
    """Trace id (hex; "" for logs without one) → (protobuf request with only that trace's spans or
    logs, how many, when the latest of them ended in Unix ms). ``redact`` changes the request in
    place before it is cut (the label policy's redaction: parts are buffered). Raises BadMessage,
    with reason ``too_large`` when the parts would add up to more than ``max_total`` bytes (each
    part repeats its resource and scope: a large resource over many traces multiplies).

    A protobuf request with nothing to redact is cut by the native core at the wire level where it
    is built (``streams.otlp.native.split_by_trace``: the same records, resources and scopes in
    each part; it declines what protobuf would not parse, which the protobuf library then refuses
    with its reason). A request in JSON or one redacted is parsed by the protobuf library and, once
    redacted, serialized and cut by the native core the same way. ``validated``: the native core
    read the payload already (``redact_payload`` found nothing to change), so the cut does not
    validate it again. ``native_cut=False``: the protobuf library cuts (the reference the
    native cut is tested against)."""
    if signal not in ("traces", "logs"):
        raise ValueError(f"split_by_trace handles traces and logs, not {signal!r}")
    encoding = choose_encoding(message, default_encoding)
    native_cut = native_cut and native.available()
    if redact is None and encoding == "otlp_proto" and native_cut:
        cut = _native_cut(signal, message.value, max_total, validated)
        if cut is not None:
            return cut
    request = parse_request(signal, message.value, encoding)
    if redact is not None:
        redact(request)
    if native_cut:
        cut = _native_cut(signal, request.SerializeToString(), max_total, False)
        if cut is not None:
            return cut
    ends: dict[str, int] = defaultdict(int)

    def key_of(record: Any) -> str:
        trace_id = record.trace_id.hex()
        end = record.end_time_unix_nano if signal == "traces" else (record.time_unix_nano or
                                                                     record.observed_time_unix_nano)
        if end > ends[trace_id]:
            ends[trace_id] = end
        return trace_id

    _check_split_size(signal, request, max_total)
    parts, counts = split_request(signal, request, key_of)
    return {trace_id: (part.SerializeToString(), counts[trace_id], ends[trace_id] // 1_000_000)
            for trace_id, part in parts.items()}


def _native_cut(signal: str, payload: bytes, max_total: int, validated: bool) -> dict[str, tuple[bytes, int, int]] | None:
    try:
        cut = native.split_by_trace(signal, payload, max_total, validated)
    except ValueError as exc:
        raise BadMessage("too_large", f"cut by trace it makes {exc.args[1]} bytes, over the limit of "
                                      f"{max_total}") from None
    if cut is None:
        return None
    return {trace_id: (part, records, end_ns // 1_000_000) for trace_id, part, records, end_ns in cut}


def _check_split_size(signal: str, request: Any, max_total: int) -> None:
    """BadMessage(too_large) when the parts would add up to more than ``max_total`` bytes: each
    repeats its resource (and scope) per trace, counted before a copy is made."""
    resource_field, scope_field, record_field = _FIELDS[signal]
    total = request.ByteSize()
    for resource in getattr(request, resource_field):
        resource_size = resource.resource.ByteSize() + len(resource.schema_url)
        for scope in getattr(resource, scope_field):
            traces = {record.trace_id for record in getattr(scope, record_field)}
            total += len(traces) * (resource_size + scope.scope.ByteSize() + len(scope.schema_url) + 16)
        if total > max_total:
            raise BadMessage("too_large", f"cut by trace it makes over {max_total} bytes")


def encode_traces_envelope(signal: str, message: RawMessage, route: int,
                           traces: list[tuple[str, bytes, int, int]]) -> bytes:
    """The tail topic's record of one source message and one route: (trace id, payload, records,
    records end ms) per trace, in order (``schemas/avro/routed_traces.avsc``)."""
    return _avro(TRACES_SCHEMA, signal, message, route,
                 traces=[{"trace_id": t, "records": n, "records_end_ms": end_ms, "payload": payload}
                         for t, payload, n, end_ms in traces])


def decode_traces_envelope(value: bytes) -> dict[str, Any]:
    try:
        return fastavro.schemaless_reader(io.BytesIO(value), TRACES_SCHEMA)
    except Exception as exc:  # truncated or foreign bytes
        raise BadMessage("undecodable", f"not a routed traces envelope ({type(exc).__name__})") from None


def decode_envelope(value: bytes) -> dict[str, Any]:
    try:
        return fastavro.schemaless_reader(io.BytesIO(value), ROUTED_SCHEMA)
    except Exception as exc:  # truncated or foreign bytes
        raise BadMessage("undecodable", f"not a routed record envelope ({type(exc).__name__})") from None


def virtual_message(envelope: dict[str, Any], routed: RawMessage) -> RawMessage:
    """The part as the writer sees it: at its source coordinates, in a lane of its routed partition.

    The lane (``<source topic>@<routed topic>/<partition>``) keeps the ledger ranges of parts of
    one source partition that went to different routed partitions apart.
    """
    piece = routed.header(PIECE_HEADER)  # a part cut in pieces because its topic refused it whole
    if piece and not _PIECE.fullmatch(piece):  # anyone can produce to the topic: only paths like 0.1
        raise BadMessage("undecodable", "otelpipe.piece is not a piece path (digits and dots, at most 32 levels)")
    suffix = f"#{piece.decode('ascii')}" if piece else ""
    return RawMessage(
        topic=f"{envelope['source_topic']}@{routed.topic}/{routed.partition}{suffix}",
        partition=envelope["source_partition"],
        offset=envelope["source_offset"],
        value=envelope["payload"],
        key=routed.key,
        headers=(PROTOBUF_HEADER,),
        timestamp_ms=envelope["source_timestamp_ms"],
    )


def assigned_partition(topic: str, partition: int) -> tuple[str, int]:
    """The Kafka partition a writer's message belongs to: a routed part's lane
    (``<source>@<routed topic>/<partition>``) is its routed partition; an untraced part
    (``<source>@untraced``) and a source message are their own."""
    if "@" in topic:
        lane = topic.split("@", 1)[1]
        if "/" in lane:
            routed, routed_partition = lane.rsplit("/", 1)
            routed_partition = routed_partition.split("#", 1)[0]  # a piece of a part: its partition
            if routed_partition.isdigit():
                return routed, int(routed_partition)
        return topic.split("@", 1)[0], partition
    return topic, partition
