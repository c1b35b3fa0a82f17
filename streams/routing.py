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
from collections import defaultdict
from typing import Any

import fastavro
import orjson
import xxhash

from streams.batch import RawMessage
from streams.config import PROJECT_ROOT
from streams.otlp_decode import BadMessage, choose_encoding, parse_request

ROUTED_SCHEMA_PATH = PROJECT_ROOT / "schemas" / "avro" / "routed_otlp.avsc"
ROUTED_SCHEMA = fastavro.parse_schema(orjson.loads(ROUTED_SCHEMA_PATH.read_bytes()))
_ROUTE_SEED = 0x6F74_6C70  # fixed forever: changing it moves keys between partitions
PROTOBUF_HEADER = ("content-type", b"application/x-protobuf")


def route_partition(key: str, partitions: int) -> int:
    return xxhash.xxh64_intdigest(key.encode("utf-8", "surrogatepass"), seed=_ROUTE_SEED) % partitions


def split_metrics(message: RawMessage, default_encoding: str, partitions: int) -> dict[int, bytes]:
    """Partition → protobuf request with the metrics routed there. Raises BadMessage."""
    request = parse_request("metrics", message.value, choose_encoding(message, default_encoding))
    routes: dict[str, int] = {}
    targets: set[int] = set()
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name not in routes:
                    routes[metric.name] = route_partition(metric.name, partitions)
                targets.add(routes[metric.name])
    if len(targets) <= 1:
        if not targets:
            return {}
        (only,) = targets
        if choose_encoding(message, default_encoding) == "otlp_proto":
            return {only: message.value}  # already the request to send
        return {only: request.SerializeToString()}
    parts: dict[int, Any] = {}
    for rm in request.resource_metrics:
        resource_out: dict[int, Any] = {}
        for sm in rm.scope_metrics:
            groups: dict[int, list[Any]] = defaultdict(list)
            for metric in sm.metrics:
                groups[routes[metric.name]].append(metric)
            for partition, metrics in groups.items():
                rm_out = resource_out.get(partition)
                if rm_out is None:
                    out = parts.get(partition)
                    if out is None:
                        out = parts[partition] = type(request)()
                    rm_out = resource_out[partition] = out.resource_metrics.add()
                    rm_out.resource.CopyFrom(rm.resource)
                    rm_out.schema_url = rm.schema_url
                sm_out = rm_out.scope_metrics.add()
                sm_out.scope.CopyFrom(sm.scope)
                sm_out.schema_url = sm.schema_url
                sm_out.metrics.extend(metrics)
    return {partition: part.SerializeToString() for partition, part in parts.items()}


def encode_envelope(signal: str, message: RawMessage, route: int, payload: bytes, records: int = 0,
                    trace_id: str = "") -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, ROUTED_SCHEMA, {
        "signal": signal,
        "source_topic": message.topic,
        "source_partition": message.partition,
        "source_offset": message.offset,
        "source_timestamp_ms": message.timestamp_ms,
        "route": route,
        "payload": payload,
        "records": records,
        "trace_id": trace_id,
    })
    return buf.getvalue()


def split_by_trace(signal: str, message: RawMessage, default_encoding: str) -> dict[str, tuple[bytes, int]]:
    """Trace id (hex; "" for logs without one) → (protobuf request with only that trace's spans or
    logs, how many). Raises BadMessage."""
    request = parse_request(signal, message.value, choose_encoding(message, default_encoding))
    if signal == "traces":
        resource_field, scope_field, record_field = "resource_spans", "scope_spans", "spans"
    elif signal == "logs":
        resource_field, scope_field, record_field = "resource_logs", "scope_logs", "log_records"
    else:
        raise ValueError(f"split_by_trace handles traces and logs, not {signal!r}")
    parts: dict[str, Any] = {}
    counts: dict[str, int] = defaultdict(int)
    for resource in getattr(request, resource_field):
        resource_out: dict[str, Any] = {}
        for scope in getattr(resource, scope_field):
            groups: dict[str, list[Any]] = defaultdict(list)
            for record in getattr(scope, record_field):
                groups[record.trace_id.hex()].append(record)
            for trace_id, records in groups.items():
                out_resource = resource_out.get(trace_id)
                if out_resource is None:
                    out = parts.get(trace_id)
                    if out is None:
                        out = parts[trace_id] = type(request)()
                    out_resource = resource_out[trace_id] = getattr(out, resource_field).add()
                    out_resource.resource.CopyFrom(resource.resource)
                    out_resource.schema_url = resource.schema_url
                out_scope = getattr(out_resource, scope_field).add()
                out_scope.scope.CopyFrom(scope.scope)
                out_scope.schema_url = scope.schema_url
                getattr(out_scope, record_field).extend(records)
                counts[trace_id] += len(records)
    return {trace_id: (part.SerializeToString(), counts[trace_id]) for trace_id, part in parts.items()}


def decode_envelope(value: bytes) -> dict[str, Any]:
    try:
        return fastavro.schemaless_reader(io.BytesIO(value), ROUTED_SCHEMA)
    except Exception as exc:  # truncated or foreign bytes
        raise BadMessage("undecodable", f"not a routed record envelope: {type(exc).__name__}: {exc}") from None


def virtual_message(envelope: dict[str, Any], routed: RawMessage) -> RawMessage:
    """The part as the writer sees it: at its source coordinates, in a lane of its routed partition.

    The lane (``<source topic>@<routed topic>/<partition>``) keeps the ledger ranges of parts of
    one source partition that went to different routed partitions apart.
    """
    return RawMessage(
        topic=f"{envelope['source_topic']}@{routed.topic}/{routed.partition}",
        partition=envelope["source_partition"],
        offset=envelope["source_offset"],
        value=envelope["payload"],
        key=routed.key,
        headers=(PROTOBUF_HEADER,),
        timestamp_ms=envelope["source_timestamp_ms"],
    )
