"""Signed control records: who may change a running worker through a control topic.

Input: a record of a control topic (the label policy, head-sampling and catalog topics) with its
key, value (None for a tombstone) and headers. Output: nothing, or ``ControlAuthError(reason)``.

The writer (``otelpipe policy push``, ``sampling set/clear``, ``catalog push``) adds two headers::

    otelpipe.sig        v1:<hex HMAC-SHA256>
    otelpipe.signed_at  <milliseconds since the epoch, decimal>

The MAC covers a length-prefixed encoding of the version, topic, record key, signed_at, a
tombstone flag and the value, so a signed record cannot be moved to another topic or key, have
its value swapped, or be turned into a tombstone (or back). Reasons a record is refused:

- ``unsigned``: a header is missing;
- ``too_large``: the key is over ``MAX_KEY_BYTES`` or the value over the topic's bound (checked
  before any hashing);
- ``bad_signature``: the MAC does not match, or a header is malformed or repeated;
- ``stale``: signed_at is not newer than that of the newest record already accepted for the same
  key (a replayed old record, a rollback). ``RecordGuard`` keeps that per key for one topic.

Pure: no I/O, no clock (the writer passes signed_at, see ``next_signed_at``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

VERSION = b"v1"
SIG_HEADER = "otelpipe.sig"
SIGNED_AT_HEADER = "otelpipe.signed_at"
REASONS = ("unsigned", "bad_signature", "stale", "too_large")

MAX_KEY_BYTES = 256
MAX_POLICY_BYTES = 1024 * 1024  # a label policy (TOML)
MAX_ENTRY_BYTES = 64 * 1024  # a sampling rate or a catalog entry

_DOMAIN = b"otelpipe.control"
_SIG = re.compile(rb"v1:[0-9a-f]{64}")
_MS = re.compile(rb"0|[1-9][0-9]{0,18}")  # canonical: one spelling per number, so the header is what was signed


class ControlAuthError(ValueError):
    """A control record that must not be applied; ``reason`` is one of ``REASONS`` (or a
    follower's own, such as ``weaker_policy``). The message never quotes the record."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def signed_bytes(topic: str, record_key: bytes, value: bytes | None, signed_at_ms: int) -> bytes:
    """What the MAC covers: each field prefixed by its length (8 bytes, big endian), so no two
    different records encode the same."""
    fields = (_DOMAIN, VERSION, topic.encode("utf-8"), record_key, str(signed_at_ms).encode(),
              b"\x01" if value is None else b"\x00", value or b"")
    return b"".join(len(field).to_bytes(8, "big") + field for field in fields)


def _mac(key: bytes, topic: str, record_key: bytes, value: bytes | None, signed_at_ms: int) -> bytes:
    digest = hmac.new(key, signed_bytes(topic, record_key, value, signed_at_ms), hashlib.sha256).hexdigest()
    return VERSION + b":" + digest.encode()


def sign(key: bytes, topic: str, record_key: bytes, value: bytes | None, signed_at_ms: int) -> list[tuple[str, bytes]]:
    """The headers that make this record verify on ``topic`` (and nowhere else)."""
    if not key:
        raise ValueError("an empty control key signs nothing")
    if signed_at_ms < 0:
        raise ValueError(f"signed_at_ms must be >= 0, got {signed_at_ms!r}")
    return [(SIG_HEADER, _mac(key, topic, record_key, value, signed_at_ms)),
            (SIGNED_AT_HEADER, str(signed_at_ms).encode())]


def next_signed_at(now_ms: int, newest_ms: int | None) -> int:
    """The signed_at of a new record: now, but always after the newest one already on the topic
    for its key (a writer whose clock is behind is still applied)."""
    return now_ms if newest_ms is None else max(now_ms, newest_ms + 1)


def check_size(record_key: bytes | None, value: bytes | None, max_value_bytes: int = MAX_ENTRY_BYTES) -> None:
    if record_key is not None and len(record_key) > MAX_KEY_BYTES:
        raise ControlAuthError("too_large", f"the key has {len(record_key)} bytes, at most {MAX_KEY_BYTES}")
    if value is not None and len(value) > max_value_bytes:
        raise ControlAuthError("too_large", f"the value has {len(value)} bytes, at most {max_value_bytes}")


def _header(record: Any, name: str) -> bytes | None:
    """The one header ``name`` (None when absent); a repeated header is ambiguous: refused."""
    found = [value for key, value in (getattr(record, "headers", None) or ()) if key == name]
    if len(found) > 1:
        raise ControlAuthError("bad_signature", f"header {name} appears {len(found)} times")
    if found and not isinstance(found[0], (bytes, bytearray)):
        raise ControlAuthError("bad_signature", f"header {name} has no bytes")
    return bytes(found[0]) if found else None


def signed_at(record: Any) -> int:
    """The record's signed_at in ms (``bad_signature`` unless canonical decimal; ``unsigned`` if absent)."""
    raw = _header(record, SIGNED_AT_HEADER)
    if raw is None:
        raise ControlAuthError("unsigned", f"no {SIGNED_AT_HEADER} header")
    if not _MS.fullmatch(raw):
        raise ControlAuthError("bad_signature", f"{SIGNED_AT_HEADER} is not a number of milliseconds")
    return int(raw)


def verify(key: bytes, topic: str, record: Any, *, newer_than: int | None = None,
           max_value_bytes: int = MAX_ENTRY_BYTES) -> None:
    """Return when ``record`` was signed with ``key`` for ``topic``, as it is (key, value or
    tombstone, signed_at), within the size bounds, and (given ``newer_than``, the signed_at of the
    newest record already accepted for its key) newer. Raise ``ControlAuthError`` otherwise."""
    sig = _header(record, SIG_HEADER)
    if sig is None:
        raise ControlAuthError("unsigned", f"no {SIG_HEADER} header")
    at = signed_at(record)
    record_key, value = record.key, record.value
    check_size(record_key, value, max_value_bytes)
    if record_key is None:
        raise ControlAuthError("bad_signature", "a signed control record has a key")
    if not key or not _SIG.fullmatch(sig):
        raise ControlAuthError("bad_signature", f"{SIG_HEADER} is not v1:<64 hex digits>")
    if not hmac.compare_digest(sig, _mac(key, topic, bytes(record_key), value, at)):
        raise ControlAuthError("bad_signature", "the MAC does not match (another key, topic or content)")
    _check_fresh(at, newer_than)


def _check_fresh(at: int, newer_than: int | None) -> None:
    if newer_than is not None and at <= newer_than:
        raise ControlAuthError("stale", f"signed at {at}, not after {newer_than} already applied for this key")


class RecordGuard:
    """The records of one control topic a follower may apply: verified, and each key's signed_at
    only moving forward. A record read again at the offset where it was accepted (the follower
    re-reads the topic from the start after reconnecting) is neither refused nor applied again;
    the same record produced once more (at another offset) is ``stale``."""

    def __init__(self, key: bytes, topic: str, max_value_bytes: int = MAX_ENTRY_BYTES):
        self.key, self.topic, self.max_value_bytes = key, topic, max_value_bytes
        self.newest: dict[bytes, int] = {}  # record key → signed_at of the newest record accepted
        self._accepted: set[tuple[int, bytes]] = set()  # (offset, signature) of the records accepted

    def admit(self, record: Any) -> bool:
        """True: apply it (it is recorded as the newest of its key). False: it was accepted
        before, at this offset. Raises ``ControlAuthError`` when it must be refused."""
        verify(self.key, self.topic, record, max_value_bytes=self.max_value_bytes)
        mark = (getattr(record, "offset", -1), _header(record, SIG_HEADER) or b"")
        if mark in self._accepted:
            return False
        record_key, at = bytes(record.key), signed_at(record)
        _check_fresh(at, self.newest.get(record_key))
        self.newest[record_key] = at
        self._accepted.add(mark)
        return True
