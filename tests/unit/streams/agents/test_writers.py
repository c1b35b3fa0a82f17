"""The writer agents' loop (streams.agents.writers.consume_signal) around a stand-in writer.

Messages the writer holds back are planned again while the stream is quiet: after a crash, an
insert recorded over several partitions that a rebalance split between two workers is held by each
for a grace period, and if no new message came the loop never asked again (both workers sat on
their messages until the next rebalance). Nothing here is a broker: the stream yields what the test
gives it and acks are recorded.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.agents import writers
from streams.agents.signal_writer import WriteOutcome


class Stream:
    """noack_take yields the given batches, then waits as a quiet topic does."""

    def __init__(self, batches: list[list]):
        self.batches = batches
        self.acked: list = []

    async def noack_take(self, max_, within):
        for batch in self.batches:
            yield batch
        await asyncio.Event().wait()

    async def ack(self, event) -> None:
        self.acked.append(event)


def event(offset: int):
    message = SimpleNamespace(topic="spans", partition=0, offset=offset, value=b"x", key=None, headers=[],
                              timestamp=1.0)
    return SimpleNamespace(message=message)


class HoldingWriter:
    """Holds everything it is given for its first ``holds`` calls, then writes what it holds."""

    def __init__(self, holds: int):
        self.holds = holds
        self.held: list = []
        self.calls: list[int] = []

    def held_count(self) -> int:
        return len(self.held)

    def write(self, messages: list) -> WriteOutcome:
        self.calls.append(len(messages))
        self.held += messages
        if len(self.calls) <= self.holds:
            return WriteOutcome(held=len(self.held))
        done, self.held = self.held, []
        return WriteOutcome(done=done)


def runtime() -> SimpleNamespace:
    async def until_done(signal, what, fn, *args):
        return fn(*args)

    async def sink(signal):
        return None

    async def publish(signal, letters):
        raise AssertionError("no dead letters expected")

    worker = SimpleNamespace(batch_max_messages=10, batch_within_s=0.01, max_message_bytes=1 << 20)
    settings = SimpleNamespace(worker=worker, kafka=SimpleNamespace(encoding_for=lambda topic: "otlp_proto"))
    return SimpleNamespace(settings=settings, until_done=until_done, sink_when_reachable=sink,
                           publish_dead_letters=publish, owns=lambda topic, partition: True,
                           end_offset=lambda topic, partition: None, stages=None)


async def drive(stream: Stream, writer: HoldingWriter, seconds: float, monkeypatch) -> None:
    monkeypatch.setattr(writers, "SignalWriter", lambda *args, **kwargs: writer)
    task = asyncio.create_task(writers.consume_signal(runtime(), "traces", stream, held_retry_s=0.02))
    await asyncio.sleep(seconds)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def test_held_messages_are_written_and_acked_while_the_stream_is_quiet(monkeypatch):
    events = [event(1), event(2)]
    stream, writer = Stream([events]), HoldingWriter(holds=3)
    asyncio.run(drive(stream, writer, 0.5, monkeypatch))
    assert writer.calls[0] == 2 and set(writer.calls[1:]) == {0}  # the batch, then retries without new messages
    assert stream.acked == events and writer.held_count() == 0
    assert len(writer.calls) == 4  # no retry once nothing is held


def test_nothing_held_nothing_retried(monkeypatch):
    stream, writer = Stream([[event(1)]]), HoldingWriter(holds=0)
    asyncio.run(drive(stream, writer, 0.2, monkeypatch))
    assert writer.calls == [1] and len(stream.acked) == 1
