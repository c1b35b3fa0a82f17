"""OTLP requests with a secret planted in every field, built by walking the protobuf schema.

``requests_with_secrets(signal)`` walks the request's descriptor: every string field gets
``SECRET_TEXT`` (one detectable secret of each kind), every attribute list gets a blocked key with a
plain secret value, a free-text value, a kvlist value holding blocked keys and an array holding
secrets, and every ``AnyValue`` (a log body) a kvlist like that. A field added to the OTLP schema
is filled without a change here. One request is built per branch of each oneof (gauge, sum,
histogram...), so every branch is covered. ``leaks(cell)`` lists the secrets found in a stored value.
"""

from __future__ import annotations

from typing import Any, Iterator

from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

# What a secret looks like in each field, and the part of it that must never be stored.
SECRETS = {
    "email": ("owner.k7q@example.com", "k7q@example.com"),
    "card": ("4111 1111 1111 1111", "4111 1111 1111 1111"),
    "bearer": ("BEARER eyJhbGciOiJub25lIn0.c2VjcmV0", "eyJhbGciOiJub25lIn0"),
    "basic": ("basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
    "url_credentials": ("postgres://app:pw-9kq2@db.internal/x", "pw-9kq2"),
    "assignment": ("password=hunter2-x8", "hunter2-x8"),
    "query": ("/cb?access_token=qz81tok", "qz81tok"),
}
SECRET_TEXT = "note " + " | ".join(text for text, _ in SECRETS.values())
BLOCKED_VALUE = "blocked-value-r4z"  # stored only under keys the default policy blocks
NESTED_VALUE = "nested-value-m2w"  # only under blocked keys inside kvlist values
MARKERS = [found for _, found in SECRETS.values()] + [BLOCKED_VALUE, NESTED_VALUE]

REQUESTS = {"traces": ExportTraceServiceRequest, "logs": ExportLogsServiceRequest,
            "metrics": ExportMetricsServiceRequest}
_ID_SIZES = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}
T0 = 1_700_000_000_000_000_000


def _fill_any_value(value: Any, depth: int) -> None:
    """A kvlist with blocked keys (also nested), a free-text value and an array of secrets."""
    kvlist = value.kvlist_value
    for key in ("password", "Authorization", "session_token"):
        entry = kvlist.values.add(key=key)
        entry.value.string_value = NESTED_VALUE
    kvlist.values.add(key="text").value.string_value = SECRET_TEXT
    array = kvlist.values.add(key="list").value.array_value
    array.values.add().string_value = SECRET_TEXT
    if depth < 2:
        _fill_any_value(kvlist.values.add(key="inner").value, depth + 1)


def _fill_attributes(entries: Any) -> None:
    for key in ("db.password", "http.request.header.authorization", "cookie", "api_key"):
        entries.add(key=key).value.string_value = BLOCKED_VALUE
    entries.add(key="note").value.string_value = SECRET_TEXT
    entries.add(key="service.name").value.string_value = SECRET_TEXT  # becomes the ServiceName column
    _fill_any_value(entries.add(key="payload").value, 0)
    entries.add(key="tags").value.array_value.values.add().string_value = SECRET_TEXT


def _fill(message: Any, choices: dict[str, str], depth: int = 0) -> None:
    """Every field of ``message``; a oneof takes the branch ``choices`` names (else its first)."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "opentelemetry.proto.common.v1.AnyValue":
        _fill_any_value(message, 0)
        return
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and choices.get(oneof.full_name, oneof.fields[0].name) != field.name:
            continue
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "opentelemetry.proto.common.v1.KeyValue" and repeated:
                _fill_attributes(getattr(message, field.name))
            elif repeated:
                if field.message_type.GetOptions().map_entry:
                    continue
                _fill(getattr(message, field.name).add(), choices, depth + 1)
            else:
                _fill(getattr(message, field.name), choices, depth + 1)
        elif field.type == FieldDescriptor.TYPE_STRING:
            if repeated:
                getattr(message, field.name).append(SECRET_TEXT)
            else:
                setattr(message, field.name, SECRET_TEXT)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            size = _ID_SIZES.get(field.name)
            if size is not None:
                setattr(message, field.name, bytes(range(1, size + 1)))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            setattr(message, field.name, field.enum_type.values[-1].number)
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(message, field.name, True)
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if repeated:
                getattr(message, field.name).extend([1.0, 2.0])
            else:
                setattr(message, field.name, 1.5)
        elif field.name.endswith("time_unix_nano"):
            setattr(message, field.name, T0 + (1_000_000 if field.name.startswith("end") else 0))
        elif repeated:
            getattr(message, field.name).extend([1, 2, 3])
        elif field.name in ("count", "zero_count"):
            setattr(message, field.name, 3)
        elif field.name == "severity_number":
            setattr(message, field.name, 9)
        elif field.name in ("flags", "dropped_attributes_count"):
            setattr(message, field.name, 1)
        else:
            setattr(message, field.name, 1)


def _oneofs(descriptor: Any, seen: set[str] | None = None) -> dict[str, list[str]]:
    """Every oneof reachable from ``descriptor`` (AnyValue's excepted) → its branches."""
    seen = seen if seen is not None else set()
    if descriptor.full_name in seen or descriptor.full_name == "opentelemetry.proto.common.v1.AnyValue":
        return {}
    seen.add(descriptor.full_name)
    found = {o.full_name: [f.name for f in o.fields] for o in descriptor.oneofs}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            found.update(_oneofs(field.message_type, seen))
    return found


def requests_with_secrets(signal: str) -> Iterator[Any]:
    """One request per branch of every oneof of the signal's schema, every field planted."""
    request_type = REQUESTS[signal]
    oneofs = _oneofs(request_type.DESCRIPTOR)
    rounds = max((len(branches) for branches in oneofs.values()), default=1)
    for i in range(rounds):
        choices = {name: branches[min(i, len(branches) - 1)] for name, branches in oneofs.items()}
        request = request_type()
        _fill(request, choices)
        yield request


def strings_of(cell: Any) -> Iterator[str]:
    """Every string a stored value holds: map keys and values, array items, at any depth."""
    if isinstance(cell, str):
        yield cell
    elif isinstance(cell, dict):
        for key, value in cell.items():
            yield from strings_of(key)
            yield from strings_of(value)
    elif isinstance(cell, (list, tuple)):
        for item in cell:
            yield from strings_of(item)


def leaks(cell: Any) -> list[str]:
    return [marker for text in strings_of(cell) for marker in MARKERS if marker in text]
