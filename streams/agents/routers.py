"""Router agents: cut source requests into parts and produce them onto routed topics.

- ``route_metrics``: each metrics request by metric name onto ``<metrics topic>.routed``
  (streams.agents.routing), so every point of a metric meets one series-budget owner.
- ``route_by_trace``: with tail sampling, spans and logs requests into one part per trace onto
  the tail topic (the durable buffer); logs without a trace id are written directly.

A source message is acked only once every part of it is on the broker (and its untraced part is
written): a router crash re-routes it, and the copies carry the same source coordinates.
"""

from __future__ import annotations

from typing import Any, Callable

import faust

from streams.agents import worker_metrics as m
from streams.agents.routing import PROTOBUF_HEADER, encode_envelope, split_by_trace, split_metrics
from streams.agents.runtime import Runtime, raw_message
from streams.agents.signal_writer import SignalWriter
from streams.otlp.batch import DeadLetter, RawMessage
from streams.otlp.values import BadMessage
from streams.stages.tail import part_key


def _refusal(raw: RawMessage, max_bytes: int, split: Callable[[], Any]) -> tuple[Any, DeadLetter | None]:
    """Split one message, or say why it cannot be: (parts, None) or (None, dead letter)."""
    if len(raw.value) > max_bytes:
        return None, DeadLetter(raw, "too_large", f"{len(raw.value)} bytes is over the limit of {max_bytes}")
    try:
        return split(), None
    except BadMessage as exc:
        return None, DeadLetter(raw, exc.reason, exc.detail)
    except (ValueError, TypeError, OverflowError) as exc:
        return None, DeadLetter(raw, "invalid_value", f"{type(exc).__name__}: {exc}")


async def route_metrics(rt: Runtime, routed_topic: faust.TopicT, stream: Any) -> None:
    k, w = rt.settings.kafka, rt.settings.worker
    async for events in stream.noack_take(w.batch_max_messages, within=w.batch_within_s):
        futures, dead = [], []
        for event in events:
            raw = raw_message(event)
            parts, letter = _refusal(raw, w.max_message_bytes,
                                     lambda: split_metrics(raw, k.encoding_for(raw.topic), k.partitions))
            if letter is not None:
                dead.append(letter)
                continue
            for route, payload in sorted(parts.items()):
                futures.append(await routed_topic.send(
                    key=raw.key, value=encode_envelope("metrics", raw, route, payload), partition=route))
        m.MESSAGES_CONSUMED.labels("metrics").inc(len(events))
        m.MESSAGES_ROUTED.labels("metrics").inc(len(futures))
        for fut in futures:
            await fut  # every part is on the broker before its source message is acked
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
        futures, dead, direct, ack_now = [], [], [], []
        for event in events:
            raw = raw_message(event)
            parts, letter = _refusal(raw, w.max_message_bytes,
                                     lambda: split_by_trace(signal, raw, k.encoding_for(raw.topic)))
            if letter is not None:
                dead.append(letter)
                ack_now.append(event)
                continue
            untraced = parts.pop("", None)
            for trace_id, (payload, records, end_ms) in parts.items():
                key = part_key(trace_id, signal, raw.topic, raw.partition, raw.offset)
                route = partition_of_part(key)
                futures.append(await tail_topic.send(
                    key=key.encode(), partition=route,
                    value=encode_envelope(signal, raw, route, payload, records, trace_id, end_ms)))
            if untraced is None:
                ack_now.append(event)
            else:
                part = RawMessage(f"{raw.topic}@untraced", raw.partition, raw.offset, untraced[0], raw.key,
                                  (PROTOBUF_HEADER,), raw.timestamp_ms)
                waiting[(part.topic, part.partition, part.offset)] = (event, raw)
                direct.append(part)
        m.MESSAGES_CONSUMED.labels(signal).inc(len(events))
        m.MESSAGES_ROUTED.labels(signal).inc(len(futures))
        for fut in futures:
            await fut  # every part is on the broker (the durable buffer) before its source is acked
        if direct or (writer is not None and writer.held_count()):
            if writer is None:
                writer = SignalWriter(signal, await rt.sink_when_reachable(signal), k.encoding_for,
                                      w.max_message_bytes, rt.stages)
            outcome = await rt.until_done(signal, f"writing {len(direct)} untraced {signal} parts", writer.write,
                                          direct)
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
