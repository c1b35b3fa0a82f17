"""Signed control records: a record verifies only as it was signed, for its topic and key, and
only when newer than the one already applied for its key."""

import random
from types import SimpleNamespace

import pytest

from streams.control_auth import (MAX_ENTRY_BYTES, MAX_KEY_BYTES, MAX_POLICY_BYTES, SIG_HEADER, SIGNED_AT_HEADER,
                                  ControlAuthError, RecordGuard, next_signed_at, sign, signed_bytes, verify)
from tests.standins import CONTROL_KEY, control_record

TOPIC = "otelpipe.sampling"


def reason(key, topic, record, **kwargs):
    with pytest.raises(ControlAuthError) as err:
        verify(key, topic, record, **kwargs)
    return err.value.reason


def with_(record, **changes):
    return SimpleNamespace(**{**vars(record), **changes})


def test_a_signed_record_verifies_and_the_headers_say_how():
    record = control_record(TOPIC, b"checkout", b"0.25", signed_at_ms=1_700_000_000_123)
    verify(CONTROL_KEY, TOPIC, record)
    headers = dict(record.headers)
    assert headers[SIGNED_AT_HEADER] == b"1700000000123"
    assert headers[SIG_HEADER].startswith(b"v1:") and len(headers[SIG_HEADER]) == 3 + 64
    verify(CONTROL_KEY, TOPIC, control_record(TOPIC, b"checkout", None))  # a signed tombstone
    verify(CONTROL_KEY, TOPIC, control_record(TOPIC, b"", b""))


@pytest.mark.parametrize("tamper", [
    lambda r: with_(r, value=b"0.26"),
    lambda r: with_(r, value=b"0.25 "),
    lambda r: with_(r, key=b"cart"),
    lambda r: with_(r, key=None),
    lambda r: with_(r, value=None),  # a value turned into a tombstone
    lambda r: with_(r, value=b""),
    lambda r: with_(r, headers=((SIG_HEADER, dict(r.headers)[SIG_HEADER]), (SIGNED_AT_HEADER, b"1001"))),
    lambda r: with_(r, headers=((SIG_HEADER, dict(r.headers)[SIG_HEADER]), (SIGNED_AT_HEADER, b"01000"))),
    lambda r: with_(r, headers=((SIG_HEADER, dict(r.headers)[SIG_HEADER].upper()), (SIGNED_AT_HEADER, b"1000"))),
    lambda r: with_(r, headers=r.headers + ((SIG_HEADER, dict(r.headers)[SIG_HEADER]),)),
    lambda r: with_(r, headers=((SIG_HEADER, b"v2:" + dict(r.headers)[SIG_HEADER][3:]), (SIGNED_AT_HEADER, b"1000"))),
], ids=["value", "value-suffix", "key", "no-key", "value-to-tombstone", "value-to-empty", "signed_at",
        "signed_at-spelling", "sig-case", "sig-twice", "version"])
def test_every_change_to_a_signed_record_is_a_bad_signature(tamper):
    record = control_record(TOPIC, b"checkout", b"0.25", signed_at_ms=1000)
    verify(CONTROL_KEY, TOPIC, record)
    assert reason(CONTROL_KEY, TOPIC, tamper(record)) == "bad_signature"


def test_a_tombstone_cannot_become_a_value_nor_move_topic_and_another_key_refuses_all():
    tombstone = control_record(TOPIC, b"checkout", None, signed_at_ms=5)
    assert reason(CONTROL_KEY, TOPIC, with_(tombstone, value=b"")) == "bad_signature"
    assert reason(CONTROL_KEY, TOPIC, with_(tombstone, value=b"1")) == "bad_signature"
    record = control_record(TOPIC, b"checkout", b"0.25")
    assert reason(CONTROL_KEY, "otelpipe.catalog", record) == "bad_signature"
    assert reason(CONTROL_KEY, TOPIC + "x", record) == "bad_signature"
    assert reason(b"another-key-0123456789abcdef", TOPIC, record) == "bad_signature"
    assert reason(b"", TOPIC, record) == "bad_signature"


def test_headers_of_one_record_do_not_sign_another():
    one = control_record(TOPIC, b"a", b"0.5", signed_at_ms=7)
    other = control_record(TOPIC, b"b", b"0.5", signed_at_ms=7)
    assert reason(CONTROL_KEY, TOPIC, with_(other, headers=one.headers)) == "bad_signature"


def test_missing_headers_are_unsigned():
    record = control_record(TOPIC, b"checkout", b"0.25")
    sig, at = record.headers
    assert reason(CONTROL_KEY, TOPIC, with_(record, headers=())) == "unsigned"
    assert reason(CONTROL_KEY, TOPIC, with_(record, headers=(sig,))) == "unsigned"
    assert reason(CONTROL_KEY, TOPIC, with_(record, headers=(at,))) == "unsigned"
    assert reason(CONTROL_KEY, TOPIC, SimpleNamespace(key=b"k", value=b"1")) == "unsigned"  # no headers at all
    assert reason(CONTROL_KEY, TOPIC, with_(record, headers=None)) == "unsigned"
    assert reason(CONTROL_KEY, TOPIC, control_record(TOPIC, b"checkout", b"0.25", signed=False)) == "unsigned"


def test_stale_when_not_newer_than_the_one_applied():
    record = control_record(TOPIC, b"checkout", b"0.25", signed_at_ms=1000)
    verify(CONTROL_KEY, TOPIC, record, newer_than=999)
    assert reason(CONTROL_KEY, TOPIC, record, newer_than=1000) == "stale"
    assert reason(CONTROL_KEY, TOPIC, record, newer_than=5000) == "stale"


def test_oversized_keys_and_values_are_refused_before_anything_else():
    assert reason(CONTROL_KEY, TOPIC, control_record(TOPIC, b"k" * (MAX_KEY_BYTES + 1), b"1")) == "too_large"
    verify(CONTROL_KEY, TOPIC, control_record(TOPIC, b"k" * MAX_KEY_BYTES, b"1"))
    big = control_record(TOPIC, b"k", b"x" * (MAX_ENTRY_BYTES + 1))
    assert reason(CONTROL_KEY, TOPIC, big) == "too_large"
    verify(CONTROL_KEY, TOPIC, big, max_value_bytes=MAX_POLICY_BYTES)
    assert reason(CONTROL_KEY, TOPIC, control_record(TOPIC, b"policy", b"x" * (MAX_POLICY_BYTES + 1)),
                  max_value_bytes=MAX_POLICY_BYTES) == "too_large"


def test_the_encoding_is_unambiguous():
    # the same bytes split differently between fields never encode the same
    assert signed_bytes("ab", b"c", b"d", 1) != signed_bytes("a", b"bc", b"d", 1)
    assert signed_bytes("a", b"bc", b"d", 1) != signed_bytes("a", b"b", b"cd", 1)
    assert signed_bytes("a", b"b", None, 1) != signed_bytes("a", b"b", b"", 1)
    assert signed_bytes("a", b"b", b"1", 12) != signed_bytes("a", b"b", b"21", 1)


def _mutations(record, rng):
    """One random change to the bytes of a signed record (its key, value, either header), or to
    the topic it is verified for; yields (topic, record)."""
    fields = ["key", "value", SIG_HEADER, SIGNED_AT_HEADER, "topic", "headers"]
    field = rng.choice(fields)
    if field == "headers":
        kind = rng.choice(["drop", "duplicate", "swap"])
        headers = list(record.headers)
        if kind == "drop":
            headers.pop(rng.randrange(len(headers)))
        elif kind == "duplicate":
            headers.append(rng.choice(headers))
        else:
            headers = [(name, value) for (name, _), (_, value) in zip(headers, reversed(headers))]
        return TOPIC, with_(record, headers=tuple(headers))
    if field == "topic":
        return _mutate_bytes(TOPIC.encode(), rng).decode("latin-1"), record
    if field in ("key", "value"):
        current = getattr(record, field)
        if field == "value" and current is not None and rng.random() < 0.1:
            return TOPIC, with_(record, value=None)
        if current is None:
            return TOPIC, with_(record, **{field: bytes(rng.randrange(256) for _ in range(rng.randrange(3)))})
        return TOPIC, with_(record, **{field: _mutate_bytes(current, rng)})
    headers = dict(record.headers)
    headers[field] = _mutate_bytes(headers[field], rng)
    return TOPIC, with_(record, headers=tuple(headers.items()))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["flip", "insert", "delete", "truncate", "append"] if data else ["insert"])
    if kind == "flip":
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    elif kind == "delete":
        del data[rng.randrange(len(data))]
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    else:
        data.extend(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))))
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_every_random_mutation_of_a_signed_record_is_refused(seed):
    rng = random.Random(seed)
    refused = 0
    for _ in range(500):
        value = rng.choice([None, b"", b"0.5", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))])
        record = control_record(TOPIC, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))), value,
                                signed_at_ms=rng.randrange(10**13))
        verify(CONTROL_KEY, TOPIC, record)
        topic, mutated = _mutations(record, rng)
        if topic == TOPIC and vars(mutated) == vars(record):
            continue  # the change undid itself (a swap of equal headers): nothing to refuse
        with pytest.raises(ControlAuthError) as err:
            verify(CONTROL_KEY, topic, mutated)
        assert err.value.reason in ("bad_signature", "unsigned")
        refused += 1
    assert refused > 450


def test_the_guard_applies_each_key_forward_only_and_knows_a_record_read_again():
    guard = RecordGuard(CONTROL_KEY, TOPIC)
    first = control_record(TOPIC, b"checkout", b"0.5", signed_at_ms=100, offset=0)
    second = control_record(TOPIC, b"checkout", b"0.1", signed_at_ms=200, offset=1)
    other = control_record(TOPIC, b"cart", b"0.3", signed_at_ms=50, offset=2)  # another key: its own clock
    assert guard.admit(first) and guard.admit(second) and guard.admit(other)
    # the follower reads the topic from the start again: nothing is refused, nothing applied twice
    assert not guard.admit(first) and not guard.admit(second) and not guard.admit(other)
    # the first record produced again (a replay) is a rollback
    with pytest.raises(ControlAuthError, match="stale"):
        guard.admit(with_(first, offset=3))
    with pytest.raises(ControlAuthError, match="stale"):
        guard.admit(control_record(TOPIC, b"checkout", b"1", signed_at_ms=200, offset=4))
    clear = control_record(TOPIC, b"checkout", None, signed_at_ms=300, offset=5)
    assert guard.admit(clear)
    with pytest.raises(ControlAuthError, match="stale"):  # what was cleared does not come back
        guard.admit(with_(second, offset=6))
    with pytest.raises(ControlAuthError, match="unsigned"):
        guard.admit(control_record(TOPIC, b"checkout", b"1", signed_at_ms=400, offset=7, signed=False))
    assert guard.newest == {b"checkout": 300, b"cart": 50}


def test_a_writer_signs_after_the_newest_record_even_with_a_clock_behind():
    assert next_signed_at(1000, None) == 1000
    assert next_signed_at(1000, 400) == 1000
    assert next_signed_at(1000, 5000) == 5001
    with pytest.raises(ValueError):
        sign(b"", TOPIC, b"k", b"v", 1)
