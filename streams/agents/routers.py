"""Router agents: cut source requests into parts and produce them onto routed topics.

- ``route_metrics``: each metrics request by metric name onto ``<metrics topic>.routed``
  (streams.agents.routing), so every point of a metric meets one series-budget owner.
- ``route_by_trace``: with tail sampling, spans and logs requests into one part per trace onto
  the tail topic (the durable buffer), redacted by the label policy first
  (``streams.stages.redact_otlp``); the parts of one message bound for one tail partition travel
  as one record (``bulk_key``), or one record per part when the topic refuses that as too large;
  logs without a trace id are written directly.

A source message is acked only once every part of it is on the broker (and its untraced part is
written): a router crash re-routes it, and the copies carry the same source coordinates.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Awaitable, Callable

import faust

from streams.agents import worker_metrics as m
from streams.agents.routing import (PIECE_HEADER, PROTOBUF_HEADER, encode_envelope, encode_traces_envelope,
                                    halve_metrics, split_by_trace, split_metrics)
from streams.agents.runtime import TOO_LARGE, Runtime, raw_message, trim_heap
from streams.agents.signal_writer import SignalWriter
from streams.otlp.batch import DeadLetter, RawMessage
from streams.otlp.values import BadMessage
from streams.otlp.decode import choose_encoding
from streams.stages.redact_otlp import redact_payload, redact_request
from streams.stages.tail import bulk_key, part_key


def _refusal(raw: RawMessage, max_bytes: int, split: Callable[[], Any]) -> tuple[Any, DeadLetter | None]:
    """Split one message, or say why it cannot be: (parts, None) or (None, dead letter)."""
    if len(raw.value) > max_bytes:
        return None, DeadLetter(raw, "too_large", f"{len(raw.value)} bytes is over the limit of {max_bytes}")
    try:
        return split(), None
    except BadMessage as exc:
        return None, DeadLetter(raw, exc.reason, exc.detail)
    except (ValueError, TypeError, OverflowError) as exc:
        return None, DeadLetter(raw, "invalid_value", f"{type(exc).__name__} while splitting")
    except Exception as exc:  # the class only: its text may quote the message
        return None, DeadLetter(raw, "internal", f"{type(exc).__name__} while splitting")



ROUTE_IN_FLIGHT_BYTES = 32 * 1024 * 1024  # source bytes a router routes before it waits for the broker


class Parts:
    """Routed parts in flight, by the index of the source event they came from."""

    def __init__(self) -> None:
        # (event index, future, pieces: called when the topic refuses the part as too large, it
        # returns the sends of smaller pieces, or None when the part cannot be cut)
        self.futures: list[tuple[int, Any, Callable[[], list] | None]] = []
        self.refused: dict[int, str] = {}  # event index → why the topic refused one of its parts
        self.pieces = 0
        self.awaited = 0  # futures before this one were waited for by an earlier delivered()
        self.on_broker = 0  # parts those waits found on the broker
        self.in_flight = 0  # source bytes routed since the last wait

    async def send(self, index: int, send: Callable[[], Awaitable[Any]],
                   pieces: Callable[[], list] | None = None) -> None:
        if index in self.refused:
            return
        try:
            self.futures.append((index, await send(), pieces))
        except TOO_LARGE as exc:
            if not await self._cut(index, pieces):
                self.refused[index] = type(exc).__name__

    async def _cut(self, index: int, pieces: Callable[[], list] | None) -> bool:
        cut = pieces() if pieces is not None else None
        if not cut:
            return False
        self.pieces += len(cut)
        for send, smaller in cut:
            await self.send(index, send, smaller)
        return True

    async def delivered(self) -> int:
        """Wait for every part sent since the last call (and the pieces of those refused as too
        large); returns how many of them are on the broker."""
        sent = 0
        i = self.awaited
        while i < len(self.futures):  # pieces are appended as they are sent
            index, fut, pieces = self.futures[i]
            i += 1
            try:
                await fut
                sent += 1
            except TOO_LARGE as exc:
                if index not in self.refused and not await self._cut(index, pieces):
                    self.refused[index] = type(exc).__name__
        self.awaited = i
        return sent

    async def routed(self, size: int) -> None:
        """A source message of ``size`` bytes was routed: past ``ROUTE_IN_FLIGHT_BYTES`` since the last
        wait, wait for the broker (the producer holds every part in flight, and a batch of large
        messages would hold all its parts at once)."""
        self.in_flight += size
        if self.in_flight >= ROUTE_IN_FLIGHT_BYTES:
            self.on_broker += await self.delivered()
            self.in_flight = 0

    async def all_delivered(self) -> int:
        """Wait for the rest; returns how many parts of the batch are on the broker."""
        self.on_broker += await self.delivered()
        return self.on_broker

    def letters(self, raws: list[RawMessage], topic: str) -> list[DeadLetter]:
        return [DeadLetter(raws[i], "too_large_for_topic",
                           f"a routed part was refused by {topic} ({why}); raise its max.message.bytes to "
                           "worker.max_message_bytes (otelpipe creates its topics so)") for i, why in
                sorted(self.refused.items())]


def _metrics_part(routed_topic: faust.TopicT, raw: RawMessage, route: int, payload: bytes, piece: str
                  ) -> tuple[Callable[[], Awaitable[Any]], Callable[[], list]]:
    """The send of a routed metrics part, and how to cut it in two pieces if its topic refuses it.
    A piece carries ``otelpipe.piece`` (its path: ``0``, ``1``, ``0.1``, ...), which puts it in a
    writer lane of its own; the cut depends only on the part, so a re-routed message makes the
    same pieces."""
    headers = [(PIECE_HEADER, piece.encode())] if piece else []

    def send() -> Awaitable[Any]:
        return routed_topic.send(key=raw.key, value=encode_envelope("metrics", raw, route, payload),
                                 partition=route, headers=headers)

    def pieces() -> list:
        halves = halve_metrics(payload)
        if halves is None:
            return []
        return [_metrics_part(routed_topic, raw, route, half, f"{piece}.{i}" if piece else str(i))
                for i, half in enumerate(halves)]

    return send, pieces


def _cut(signal: str, raw: RawMessage, redact: Callable[[Any], Any] | None, labels: Any, k: Any, w: Any
         ) -> dict[str, tuple[bytes, int, int]]:
    """``split_by_trace`` of one message, redacted first. A protobuf request is redacted by the
    native core where it can (``redact_payload``); one it shows holds nothing to redact is cut
    as it came, without validating it again (that reading validated it). Else the parsed request
    is walked (``redact``)."""
    encoding = k.encoding_for(raw.topic)
    if redact is not None and choose_encoding(raw, encoding) == "otlp_proto":
        redacted = redact_payload(labels, signal, raw.value, w.max_message_bytes)
        if redacted is raw.value:
            return split_by_trace(signal, raw, encoding, None, validated=True)
        if redacted is not None:
            return split_by_trace(signal, dataclasses.replace(raw, value=redacted), encoding, None)
    return split_by_trace(signal, raw, encoding, redact)


def _tail_record(tail_topic: faust.TopicT, signal: str, raw: RawMessage, route: int,
                 traces: list[tuple[str, bytes, int, int]]) -> tuple[Callable[[], Awaitable[Any]], Callable[[], list]]:
    """The send of one tail record (the parts of ``raw``'s traces routed to ``route``), and, if the
    topic refuses it as too large, the sends of one record per part instead (each keyed by its part:
    a part is named alike in either form, so a decision recognises it whichever way it came)."""

    def send() -> Awaitable[Any]:
        key = bulk_key(route, signal, raw.topic, raw.partition, raw.offset)
        return tail_topic.send(key=key.encode(), partition=route,
                               value=encode_traces_envelope(signal, raw, route, traces))

    def one(trace_id: str, payload: bytes, records: int, end_ms: int) -> Callable[[], Awaitable[Any]]:
        key = part_key(trace_id, signal, raw.topic, raw.partition, raw.offset)
        return lambda: tail_topic.send(key=key.encode(), partition=route,
                                       value=encode_envelope(signal, raw, route, payload, records, trace_id, end_ms))

    def pieces() -> list:
        return [(one(*trace), None) for trace in traces]

    return send, pieces


async def route_metrics(rt: Runtime, routed_topic: faust.TopicT, stream: Any) -> None:
    k, w = rt.settings.kafka, rt.settings.worker
    async for events in stream.noack_take(w.batch_max_messages, within=w.batch_within_s):
        sending, dead, raws = Parts(), [], []
        for index, event in enumerate(events):
            raw = raw_message(event)
            raws.append(raw)
            parts, letter = _refusal(raw, w.max_message_bytes,
                                     lambda: split_metrics(raw, k.encoding_for(raw.topic), k.partitions))
            if letter is not None:
                dead.append(letter)
                continue
            for route, payload in sorted(parts.items()):
                await sending.send(index, *_metrics_part(routed_topic, raw, route, payload, ""))
            await sending.routed(len(raw.value))
        m.MESSAGES_CONSUMED.labels("metrics").inc(len(events))
        m.MESSAGES_ROUTED.labels("metrics").inc(await sending.all_delivered())  # on the broker before the ack
        if sending.pieces:
            m.ROUTED_PIECES.labels("metrics").inc(sending.pieces)
        dead.extend(sending.letters(raws, routed_topic.get_topic_name()))
        if dead:
            await rt.publish_dead_letters("metrics", dead)
        for event in events:
            await stream.ack(event)


async def route_by_trace(rt: Runtime, tail_topic: faust.TopicT, partition_of_part: Callable[[str], int],
                         signal: str, stream: Any) -> None:
    """Logs without a trace id have nothing to wait for: they are written here, exactly once,
    through a ``SignalWriter`` lane of their own (``<topic>@untraced``)."""
    k, w = rt.settings.kafka, rt.settings.worker
    writer = None
    waiting: dict[tuple[str, int, int], tuple[Any, RawMessage]] = {}  # untraced part → (event, source)
    async for events in stream.noack_take(w.batch_max_messages, within=w.batch_within_s):
        labels = rt.stages.labels  # read once a batch: a policy swap applies to the next one
        redact = None if labels is None else functools.partial(redact_request, labels)
        sending, dead, ack_now, raws = Parts(), [], [], []
        direct: dict[int, RawMessage] = {}  # event index → its untraced part
        for index, event in enumerate(events):
            raw = raw_message(event)
            raws.append(raw)
            parts, letter = _refusal(raw, w.max_message_bytes, lambda: _cut(signal, raw, redact, labels, k, w))
            if letter is not None:
                dead.append(letter)
                ack_now.append(event)
                continue
            untraced = parts.pop("", None)
            routes: dict[int, list[tuple[str, bytes, int, int]]] = {}
            for trace_id, (payload, records, end_ms) in parts.items():
                route = partition_of_part(part_key(trace_id, signal, raw.topic, raw.partition, raw.offset))
                routes.setdefault(route, []).append((trace_id, payload, records, end_ms))
            for route, traces in sorted(routes.items()):
                send, singles = _tail_record(tail_topic, signal, raw, route, traces)
                if rt.settings.sampling.tail_bulk:
                    await sending.send(index, send, singles)
                else:  # one record per trace, as releases before bulk records read them
                    for one, _ in singles():
                        await sending.send(index, one)
            await sending.routed(len(raw.value))
            if untraced is None:
                ack_now.append(event)
            else:
                direct[index] = RawMessage(f"{raw.topic}@untraced", raw.partition, raw.offset, untraced[0], raw.key,
                                           (PROTOBUF_HEADER,), raw.timestamp_ms)
        m.MESSAGES_CONSUMED.labels(signal).inc(len(events))
        # every part is on the broker (the durable buffer) before its source is acked
        m.MESSAGES_ROUTED.labels(signal).inc(await sending.all_delivered())
        for index in sending.refused:  # dead-lettered whole: its untraced part is not written either
            if index in direct:
                del direct[index]
                ack_now.append(events[index])
        dead.extend(sending.letters(raws, tail_topic.get_topic_name()))
        for index, part in direct.items():
            waiting[(part.topic, part.partition, part.offset)] = (events[index], raws[index])
        if direct or (writer is not None and writer.held_count()):
            if writer is None:
                writer = SignalWriter(signal, await rt.sink_when_reachable(signal), k.encoding_for,
                                      w.max_message_bytes, rt.stages, owns=rt.owns)
            outcome = await rt.until_done(signal, f"writing {len(direct)} untraced {signal} parts", writer.write,
                                          list(direct.values()))
            for letter in outcome.dead_letters:  # name the source message, which is what the DLQ holds
                source = waiting.get((letter.message.topic, letter.message.partition, letter.message.offset))
                if source is not None:
                    dead.append(DeadLetter(source[1], letter.reason, letter.detail))
            for part in outcome.done:
                done = waiting.pop((part.topic, part.partition, part.offset), None)
                if done is not None:
                    ack_now.append(done[0])
        if dead:
            await rt.publish_dead_letters(signal, dead)
        for event in ack_now:
            await stream.ack(event)
        for key in [key for key in waiting if not rt.owns(key[0], key[1])]:
            del waiting[key]  # revoked: never acked here, read again by the next owner
        del events, raws, sending, direct  # the batch's messages and parts, before the heap is trimmed
        trim_heap()
