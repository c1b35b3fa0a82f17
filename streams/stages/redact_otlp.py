"""The label policy's redaction over an OTLP request, before it is kept anywhere as OTLP.

The tail sampler buffers parts of requests on a compacted topic until their trace is decided; the
router redacts each request first (``redact_request``), so the buffer never holds what the tables
may not. It applies the same decisions as the label stage (``LabelStage.key_drop`` and
``LabelStage.scrub``, memoised there), walking the schema rather than a list of fields: every
string field of every message is scrubbed, every attribute list (at any level, kvlist values
included) loses the keys the policy drops, and every string value passes the detectors. Cardinality
rules and templating are left to the label stage, which runs again on the decided rows (redaction
is idempotent: what it wrote, it leaves alone). Mutates the request; returns how many values changed.

``redact_payload`` is what the router uses. The native core walks the request as
``redact_request`` does, by the schema, without building rows (``_native.redaction_inputs``):
every attribute key at any depth goes through the policy's key rules (``LabelStage.key_drop``),
every other string field (AnyValue strings and entity references included) through the same
``LabelStage.scrub``; strings no detector can match are passed over natively
(``_native.maybe_sensitive``, exact when it says no). With those decisions (once per distinct key
and string) the core rewrites the request at the wire level (``_native.redact_request``:
attributes whose key is dropped leave their lists, strings take their scrubbed value, and a
dropped string leaves its attribute list or array or is masked, exactly where ``redact_request``
does those). It gives the request itself when nothing is to change (most requests hold no
secret), and None when the caller must walk the parsed request: no native core, JSON, a request
the core refuses, query-secret names it cannot match, an attribute or AnyValue sent with two
values (protobuf merges those), or one nested more than 32 messages deep. The tests compare both
ways byte for byte.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from streams.stages.labels import MASK, LabelStage

_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
_ANY_VALUE = "opentelemetry.proto.common.v1.AnyValue"


def _decisions(labels: LabelStage, signal: str, payload: bytes, max_message_bytes: int
               ) -> tuple[list[str], dict[str, str | None]] | None:
    """The policy's decisions for what the protobuf request ``payload`` holds: (attribute keys it
    drops, {string: new value or None}) of the keys and strings the native core found; None when
    they cannot be known that way."""
    from streams.otlp import native

    secrets = labels.ascii_query_secrets()
    if signal not in ("traces", "logs") or secrets is None or not native.available() or len(payload) > max_message_bytes:
        return None
    found = native.redaction_inputs(signal, payload, secrets)
    if found is None:
        return None  # refused: the protobuf library's parse says why
    keys, texts = found
    drops = [key for key in dict.fromkeys((*keys, "")) if labels.key_drop(key)]  # "": an attribute without its key
    replace = {}
    for text in texts:
        new, reason = labels.scrub(text)
        if reason:
            replace[text] = new
    return drops, replace


def redact_payload(labels: LabelStage, signal: str, payload: bytes, max_message_bytes: int) -> bytes | None:
    """The protobuf request ``payload`` as ``redact_request`` would leave it, rewritten natively
    (``payload`` itself when nothing changes), or None when the parsed request must be walked."""
    decisions = _decisions(labels, signal, payload, max_message_bytes)
    if decisions is None:
        return None
    drops, replace = decisions
    if not drops and not replace:
        return payload
    from streams.otlp import native

    done = native.redact_request(signal, payload, drops, replace)
    if done is None:
        return None
    return payload if done[1] == 0 else done[0]


def redact_request(labels: LabelStage, request: Any) -> int:
    return _message(labels, request)


def _message(labels: LabelStage, message: Any) -> int:
    if message.DESCRIPTOR.full_name == _ANY_VALUE:
        return _any_value(labels, message)
    changed = 0
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, text in enumerate(value):
                    new, reason = labels.scrub(text)
                    if reason:
                        value[i] = MASK if new is None else new
                        changed += 1
            else:
                new, reason = labels.scrub(value)
                if reason:
                    setattr(message, field.name, MASK if new is None else new)
                    changed += 1
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated and field.message_type.full_name == _KEY_VALUE:
                changed += _key_values(labels, value)
            elif field.is_repeated:
                for item in value:
                    changed += _message(labels, item)
            else:
                changed += _message(labels, value)
    return changed


def _key_values(labels: LabelStage, entries: Any) -> int:
    """Drop the keys the policy never stores and the values the detectors drop; scrub the rest."""
    changed = 0
    for i in range(len(entries) - 1, -1, -1):
        entry = entries[i]
        if labels.key_drop(entry.key):
            del entries[i]
            changed += 1
            continue
        if entry.value.WhichOneof("value") == "string_value":
            new, reason = labels.scrub(entry.value.string_value)
            if reason:
                changed += 1
                if new is None:
                    del entries[i]
                else:
                    entry.value.string_value = new
        else:
            changed += _any_value(labels, entry.value)
    return changed


def _any_value(labels: LabelStage, value: Any) -> int:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        new, reason = labels.scrub(value.string_value)
        if reason:
            value.string_value = MASK if new is None else new
            return 1
        return 0
    if kind == "kvlist_value":
        return _key_values(labels, value.kvlist_value.values)
    if kind == "array_value":
        return _array_items(labels, value.array_value.values)
    return 0


def _array_items(labels: LabelStage, items: Any) -> int:
    """Scrub an array's items; a string the detectors drop leaves the array, as the label stage
    drops it from the array's JSON."""
    changed = 0
    for i in range(len(items) - 1, -1, -1):
        item = items[i]
        if item.WhichOneof("value") == "string_value":
            new, reason = labels.scrub(item.string_value)
            if reason:
                changed += 1
                if new is None:
                    del items[i]
                else:
                    item.string_value = new
        else:
            changed += _any_value(labels, item)
    return changed
