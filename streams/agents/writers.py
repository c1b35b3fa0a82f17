"""Writer agents' loop: take batches, write them (``SignalWriter``), publish dead letters, ack.

Input: a faust stream of source messages (or routed parts, with ``unwrap``). Output: rows in
ClickHouse, dead letters on ``<topic>.dlq``. A message is acked only after all its rows are
inserted and its dead letter is on the broker, so faust never commits an offset ahead of the data.
``take``/``take_events`` are not used: they ack even when the body raised.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from streams.agents import worker_metrics as m
from streams.agents.runtime import Runtime, raw_message
from streams.agents.signal_writer import SignalWriter
from streams.otlp.batch import DeadLetter, RawMessage
from streams.otlp.values import BadMessage
from streams.stages.alerts import encode_avro

log = logging.getLogger("otelpipe.worker")

# How often a writer holding messages back plans them again when no new message comes.
HELD_RETRY_S = 5.0


async def consume_signal(rt: Runtime, signal: str, stream: Any,
                         unwrap: Callable[[RawMessage], RawMessage] | None = None,
                         before_write: Callable[[list], Awaitable[None]] | None = None,
                         after_write: Callable[[], Awaitable[None]] | None = None,
                         held_retry_s: float = HELD_RETRY_S) -> None:
    """``unwrap`` turns a record into the message the writer sees (routed parts: the part at its
    source coordinates) or raises BadMessage; records that unwrap to the same coordinates (a part
    routed again after a crash) are acked together, and dead letters name the record as read.

    Messages the writer holds back (a recorded insert whose other ranges another worker may still
    be inserting, or a range whose end has not arrived) are planned again every ``held_retry_s``
    while it holds any, even when no new message comes: a stream that has gone quiet must not
    leave them unwritten and unacked until the next message or rebalance."""
    w = rt.settings.worker
    writer = SignalWriter(signal, await rt.sink_when_reachable(signal), rt.settings.kafka.encoding_for,
                          w.max_message_bytes, rt.stages, owns=rt.owns,
                          end_offset=rt.end_offset)
    pending: dict[tuple[str, int, int], list[tuple[Any, RawMessage]]] = {}
    one_at_a_time = asyncio.Lock()  # the batch loop and the retries of held messages

    async def write(events: list) -> None:
        msgs, dead, ack_now = [], [], []
        for event in events:
            raw = raw_message(event)
            try:
                msg = unwrap(raw) if unwrap is not None else raw
            except BadMessage as exc:
                dead.append(DeadLetter(raw, exc.reason, exc.detail))
                ack_now.append(event)
                continue
            pending.setdefault((msg.topic, msg.partition, msg.offset), []).append((event, raw))
            msgs.append(msg)
        if events:
            if unwrap is None:
                m.MESSAGES_CONSUMED.labels(signal).inc(len(msgs))
            m.BATCH_MESSAGES.labels(signal).observe(len(msgs))
            if before_write is not None:
                await before_write(events)
        outcome = await rt.until_done(signal, f"writing {len(msgs)} {signal} messages", writer.write, msgs)
        if after_write is not None:
            await after_write()
        for letter in outcome.dead_letters:
            sources = pending.get((letter.message.topic, letter.message.partition, letter.message.offset), [])
            if unwrap is None or not sources:
                dead.append(letter)
            else:  # the routed record is what the dead-letter topic can hold; name the source too
                msg = letter.message
                dead.append(DeadLetter(sources[0][1], letter.reason, f"{letter.detail} (source "
                                       f"{msg.topic.split('@')[0]}[{msg.partition}]@{msg.offset})"))
        if dead:
            await rt.publish_dead_letters(signal, dead)
        for event in ack_now:
            await stream.ack(event)
        for msg in outcome.done:
            for event, _ in pending.pop((msg.topic, msg.partition, msg.offset), []):
                await stream.ack(event)
        for key in [key for key in pending if not rt.owns(key[0], key[1])]:
            del pending[key]  # revoked: never acked here, read again by the next owner

    async def retry_held() -> None:
        while True:
            await asyncio.sleep(held_retry_s)
            if writer.held_count() and not one_at_a_time.locked():
                async with one_at_a_time:
                    if writer.held_count():
                        await write([])

    retries = asyncio.create_task(retry_held(), name=f"otelpipe.{signal}.held")
    try:
        async for events in stream.noack_take(w.batch_max_messages, within=w.batch_within_s):
            async with one_at_a_time:
                await write(events)
    finally:
        retries.cancel()


async def commit_stage_state(rt: Runtime) -> None:
    """After a batch's rows are written: store the budget state changes, announce crossings."""
    if rt.stages.budget is None:
        return
    done = rt.stages.budget.commit()
    await rt.series_state.put(done.set, done.delete)  # on the broker before the offsets are acked
    for rec in done.alerts:  # at least once: a crash before the ack announces a crossing again
        fut = await rt.alerts_topic.send(key=f"{rec['Kind']}/{rec['Name']}".encode(), value=encode_avro(rec))
        await fut
        m.ALERTS_PUBLISHED.labels(rec["Kind"], rec["State"]).inc()
        log.warning("alert %s: %s %s (%s)", rec["State"], rec["Kind"], rec["Name"],
                    ", ".join(f"{k}={v}" for k, v in sorted(rec["Details"].items())))
