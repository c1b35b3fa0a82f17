"""The redaction of requests the tail buffer holds: no planted secret survives in the buffered
bytes, and the rows made from a redacted request are those made from the original."""

import pytest

from streams.agents.routing import split_by_trace
from streams.otlp.batch import RawMessage
from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.redact_otlp import redact_request
from tests.planted_secrets import MARKERS, requests_with_secrets


def _rows(signal, payload):
    result = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, LabelStage(parse_policy({}))).run(
        signal, [RawMessage("t", 0, 0, payload)])
    assert not result.dead_letters
    return {t: b.columns for t, b in result.batches.items()}


@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_redacted_requests_hold_no_planted_secret_and_make_the_same_rows(signal):
    labels = LabelStage(parse_policy({}))
    for request in requests_with_secrets(signal):
        original = request.SerializeToString()
        assert all(m.encode() in original for m in MARKERS)  # planted everywhere
        assert redact_request(labels, request) > 0
        redacted = request.SerializeToString()
        assert [m for m in MARKERS if m.encode() in redacted] == []
        assert _rows(signal, redacted) == _rows(signal, original)


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_buffered_parts_are_redacted(signal):
    labels = LabelStage(parse_policy({}))
    request = next(requests_with_secrets(signal))
    message = RawMessage("t", 0, 0, request.SerializeToString())
    parts = split_by_trace(signal, message, "otlp_proto", lambda r: redact_request(labels, r))
    assert parts
    for payload, _, _ in parts.values():
        assert [m for m in MARKERS if m.encode() in payload] == []
    unredacted = split_by_trace(signal, message, "otlp_proto")
    assert any(m.encode() in p for p, _, _ in unredacted.values() for m in MARKERS)


# ------------------------------------------------- redaction_needed: the router's check before the walk

from google.protobuf.descriptor import FieldDescriptor  # noqa: E402

from streams.otlp import native  # noqa: E402
from streams.stages.redact_otlp import redaction_needed  # noqa: E402
from tests.planted_secrets import SECRET_TEXT  # noqa: E402

# The check answers from the native core, built with the package wherever cargo is (pip install -e .):
# without it every request is "needed" and the tests below fail, not skip.
NATIVE_MISSING = "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."


def _places(message, path=()):
    """Every place a producer can put a string: each string field (set or not) of every message
    present, and every attribute list (a blocked key, or a secret value)."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield path + ((field.name, None),), "string"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                if field.message_type.full_name == "opentelemetry.proto.common.v1.KeyValue":
                    yield path + ((field.name, None),), "blocked_key"
                    yield path + ((field.name, None),), "secret_value"
                for i, item in enumerate(getattr(message, field.name)):
                    yield from _places(item, path + ((field.name, i),))
            elif message.HasField(field.name):
                yield from _places(getattr(message, field.name), path + ((field.name, None),))


def _plant(request, path, how):
    copy = type(request).FromString(request.SerializeToString())
    target = copy
    for name, index in path[:-1]:
        target = getattr(target, name) if index is None else getattr(target, name)[index]
    name = path[-1][0]
    field = target.DESCRIPTOR.fields_by_name[name]
    if how == "string" and field.is_repeated:
        getattr(target, name).append(SECRET_TEXT)
    elif how == "string":
        setattr(target, name, SECRET_TEXT)
    elif how == "blocked_key":
        getattr(target, name).add(key="password").value.string_value = "plain"
    else:
        getattr(target, name).add(key="note").value.string_value = SECRET_TEXT
    return copy.SerializeToString()


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_redaction_is_needed_wherever_one_secret_is_and_not_once_redacted(signal):
    assert native.available(), NATIVE_MISSING
    labels = LabelStage(parse_policy({}))
    clean = next(requests_with_secrets(signal))
    redact_request(labels, clean)  # every field still set, no secret left
    payload = clean.SerializeToString()
    assert redact_request(labels, type(clean).FromString(payload)) == 0
    assert not redaction_needed(labels, signal, payload, 1 << 24)
    places = list(_places(clean))
    assert len(places) > 40
    missed = []
    for path, how in places:
        planted = _plant(clean, path, how)
        if redact_request(labels, type(clean).FromString(planted)) and not redaction_needed(labels, signal, planted,
                                                                                               1 << 24):
            missed.append((".".join(name for name, _ in path), how))
    assert missed == []


@pytest.mark.parametrize("policy", [{}, {"redaction": {"value_action": "hash"}},
                                    {"redaction": {"allow_keys": ["service.*", "http.*"], "mode": "allow"}}])
def test_when_no_redaction_is_needed_the_walk_changes_nothing_on_the_workload(policy):
    assert native.available(), NATIVE_MISSING
    from streams.tools.workload import Workload

    labels = LabelStage(parse_policy(policy))
    skipped = 0
    for distinct in (False, True):
        workload = Workload(seed=5, extra_attributes=3, distinct_values=distinct)
        for _ in range(6):
            request, logs = workload.trace_requests(10)
            for signal, message in (("traces", request), ("logs", logs)):
                payload = message.SerializeToString()
                if not redaction_needed(labels, signal, payload, 1 << 24):
                    skipped += 1
                    assert redact_request(labels, type(message).FromString(payload)) == 0
    if "mode" not in policy.get("redaction", {}):  # in allow mode keys go in every request
        assert skipped


def test_json_and_refused_requests_need_the_walk():
    labels = LabelStage(parse_policy({}))
    assert redaction_needed(labels, "traces", b"\xff\xff", 1 << 24)
    assert redaction_needed(labels, "metrics", b"", 1 << 24)
