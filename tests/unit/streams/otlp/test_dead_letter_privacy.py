"""Dead letters' otelpipe.* headers never carry what the message says: a marker planted anywhere in
a refused message (a value, a key, an id, a number, an enum, raw bytes) is never in them. The
letter's value is the message itself, for a replay; its headers say why and where from."""

import random

import orjson
import pytest

from streams.agents.routing import decode_envelope, split_by_trace, split_metrics
from streams.otlp.batch import DeadLetter, RawMessage
from streams.otlp.decode import decode_messages
from streams.otlp.values import BadMessage
from tests.otlp_builders import logs_request, metrics_request, mutate_bytes, traces_request
from tests.unit.streams.stages.test_redaction_coverage import _as_otlp_json

MARKER = "zq9MARKERq7"
REQUESTS = {"traces": traces_request(3), "logs": logs_request(), "metrics": metrics_request()}


def _plant(rng: random.Random, node, depth: int = 0):
    """The JSON with the marker put in one place: as a leaf value of any type, in a key, in a
    string, as an id, or in place of an object or a list."""
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.15:
            node[MARKER] = node.pop(key)  # a key
        elif roll < 0.3 or not isinstance(node[key], (dict, list)):
            node[key] = rng.choice([MARKER, f"{MARKER} x", {MARKER: 1}, [MARKER], f"12{MARKER}"])
        else:
            _plant(rng, node[key], depth + 1)
    elif isinstance(node, list) and node:
        i = rng.randrange(len(node))
        if isinstance(node[i], (dict, list)) and rng.random() < 0.8:
            _plant(rng, node[i], depth + 1)
        else:
            node[i] = MARKER
    return node


def _headers_text(letters: list[DeadLetter]) -> str:
    return " ".join(v.decode("utf-8", "replace") for d in letters for k, v in d.headers() if k.startswith("otelpipe."))


def _letters_of(signal: str, message: RawMessage, encoding: str) -> list[DeadLetter]:
    letters = decode_messages(signal, [message], encoding).dead_letters
    splitters = [lambda: split_metrics(message, encoding, 4)] if signal == "metrics" else \
        [lambda: split_by_trace(signal, message, encoding)]
    for split in splitters:
        try:
            split()
        except BadMessage as exc:
            letters.append(DeadLetter(message, exc.reason, exc.detail))
        except (ValueError, TypeError, OverflowError):
            pass  # the routers turn these into letters naming the class only
    return letters


@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_json_with_a_marker_anywhere_never_puts_it_in_headers(signal):
    rng = random.Random(f"json-{signal}")
    base = orjson.loads(_as_otlp_json(REQUESTS[signal]))
    refused = 0
    for _ in range(400):
        planted = orjson.dumps(_plant(rng, orjson.loads(orjson.dumps(base))))
        for payload in (planted, planted[: rng.randrange(len(planted))]):
            letters = _letters_of(signal, RawMessage("t", 0, 0, payload), "otlp_json")
            refused += bool(letters)
            assert MARKER not in _headers_text(letters), [(d.reason, d.detail) for d in letters]
    assert refused > 200  # most plantings are refused: the check looked at real letters


@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_damaged_protobuf_carrying_the_marker_never_puts_it_in_headers(signal):
    rng = random.Random(f"proto-{signal}")
    source = REQUESTS[signal].SerializeToString()
    marker = MARKER.encode()
    donors = [source, marker * 3, b"\x0a\x10" + marker + b"\x12\x05", b'{"' + marker + b'":1}']
    refused = 0
    for _ in range(600):
        payload = source
        for _ in range(rng.randrange(1, 4)):
            payload = mutate_bytes(rng, payload, donors)
        if MARKER.encode() not in payload:
            payload += MARKER.encode()
        for encoding in ("otlp_proto", "otlp_json"):
            letters = _letters_of(signal, RawMessage("t", 0, 0, payload), encoding)
            refused += bool(letters)
            assert MARKER not in _headers_text(letters), [(d.reason, d.detail) for d in letters]
    assert refused > 300


def test_foreign_envelopes_never_put_the_marker_in_headers():
    rng = random.Random("envelope")
    for _ in range(300):
        value = rng.randbytes(rng.randrange(0, 40)) + MARKER.encode() + rng.randbytes(rng.randrange(0, 40))
        try:
            decode_envelope(value)
        except BadMessage as exc:
            assert MARKER not in exc.detail
