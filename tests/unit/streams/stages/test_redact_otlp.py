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
