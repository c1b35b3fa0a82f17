"""The stages every record passes through, in order, shared by the worker and by replays.

``run_stages(signal, messages, encoding_for, max_message_bytes)`` turns a run of Kafka messages of
one signal into table batches and dead letters. Today that is decoding; enrichment, redaction,
cardinality control and sampling join here, so a replay makes the same decisions as the worker
(they must be deterministic: seeded hashes, no wall clock, no process state that differs).
"""

from __future__ import annotations

from typing import Callable, Sequence

from streams.batch import DecodeResult, RawMessage
from streams.otlp_decode import decode_messages


def run_stages(signal: str, messages: Sequence[RawMessage], encoding_for: Callable[[str], str],
               max_message_bytes: int) -> DecodeResult:
    if not messages:
        return DecodeResult()
    return decode_messages(signal, messages, encoding_for(messages[0].topic), max_message_bytes)
