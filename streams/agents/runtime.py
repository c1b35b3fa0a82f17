"""What every agent of one worker shares: settings, topics, the ClickHouse thread and sink, the stages.

A ``Runtime`` is built by ``streams.agents.app.create_app`` from a settings object; nothing here
runs at import. Agents are thin wiring around its helpers: ``until_done`` (retry a ClickHouse call
with backoff), ``publish_dead_letters`` (on the broker before the source is acked) and
``sink_when_reachable`` (open and migrate, retrying).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import faust
from faust.types import TP
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from sinks.clickhouse import ClickHouseSink, Refusal, is_retryable
from streams.agents import worker_metrics as m
from streams.agents.keyed_state import ChangelogState
from streams.agents.routing import assigned_partition, route_partition
from streams.config import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, RECORD_OVERHEAD_BYTES, Settings
from streams.otlp.batch import DeadLetter, RawMessage
from streams.stages.pipeline import Stages
from streams.stages.series_budget import SeriesBudgetStage, metric_of_key

# The broker (or the producer, before sending) refuses a record over the topic's max.message.bytes.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

log = logging.getLogger("otelpipe.worker")


_LIBC: Any = None


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    A router's batch holds its source messages and their parts at once (tens of MiB); once they
    are freed, glibc keeps the pages for reuse, and the worker's resident memory would stay at that
    high-water mark instead of following what it holds (the tail buffer)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


def raw_message(event: Any) -> RawMessage:
    """A faust event as the stages see it: bytes, coordinates, headers, timestamp in ms."""
    msg = event.message
    headers = msg.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    return RawMessage(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        value=msg.value if msg.value is not None else b"",
        key=msg.key,
        headers=tuple((k, bytes(v) if v is not None else b"") for k, v in headers),
        timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
    )


class Runtime:
    """One worker's shared parts. ``stages`` is built here, so an invalid policy stops the worker
    at start with every problem listed."""

    def __init__(self, settings: Settings, app: faust.App):
        self.settings = settings
        self.app = app
        # The partitions this worker holds, from the rebalance callbacks (``streams.agents.app``):
        # writers check it before every insert, so a worker that lost a partition stops writing it.
        self.assigned: set[tuple[str, int]] = set()
        k = settings.kafka
        self.dlq_topics = {name: self.topic(settings.dlq_topic(name))
                           for name in settings.source_topics() + settings.routed_topics()}
        self.alerts_topic = self.topic(settings.slo.alerts_topic)
        # Series budget state: (metric, window) → the series seen (streams.stages.series_budget),
        # changelogged to a compacted topic whose partition is the metric's routed partition.
        self.series_state = ChangelogState(k, settings.state_topic("series-budget"),
                                           lambda key: route_partition(metric_of_key(key), k.partitions))
        # chDB and clickhouse-connect block: every call runs on this one thread (calls serialise anyway).
        self.clickhouse_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._sink: ClickHouseSink | None = None
        self.stages = Stages.from_settings(settings)
        if self.stages.labels is not None:
            self.stages.budget = SeriesBudgetStage(self.stages.labels.policy.budgets, self.series_state.get,
                                                   clock_skew_s=settings.worker.max_clock_skew_s)

    def owns(self, topic: str, partition: int) -> bool:
        return assigned_partition(topic, partition) in self.assigned

    def end_offset(self, topic: str, partition: int) -> int | None:
        """The end offset the consumer last saw for a partition it reads (None for a writer's lanes,
        whose offsets are those of another topic, and before the first fetch)."""
        if "@" in topic:
            return None
        try:
            return self.app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned or not fetched yet
            return None

    def topic(self, name: str) -> faust.TopicT:
        return self.app.topic(name, value_type=bytes, key_type=bytes, partitions=self.settings.kafka.partitions,
                              internal=False)

    def open_sink(self) -> ClickHouseSink:
        """The sink, opened on first use (call it on the ClickHouse thread)."""
        if self._sink is None:
            self._sink = ClickHouseSink.open(self.settings.clickhouse, self.settings.worker.app_id)
        return self._sink

    async def on_clickhouse_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.clickhouse_thread, fn, *args)

    async def until_done(self, signal: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the ClickHouse thread until it succeeds: capped exponential backoff with
        jitter, never giving up (a write, opening the sink). Every failure is retried; its kind
        decides only the log level.

        While this waits the agent takes no new batch, its stream buffer fills and faust stops
        fetching: backpressure, with memory bounded by the buffer size.
        """
        w = self.settings.worker
        delay = w.retry_initial_s
        attempt = 0
        while True:
            try:
                result = await self.on_clickhouse_thread(fn, *args)
                m.WRITER_BLOCKED.labels(signal).set(0)
                return result
            except Exception as exc:
                attempt += 1
                m.WRITE_RETRIES.labels(signal).inc()
                m.WRITER_BLOCKED.labels(signal).set(1)
                level = logging.WARNING if is_retryable(exc) else logging.ERROR
                log.log(level, "%s failed (attempt %d, retrying in %.1fs): %s", what, attempt, delay, exc,
                        exc_info=level >= logging.ERROR)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, w.retry_max_s)

    async def publish_dead_letters(self, signal: str, dead: list[DeadLetter]) -> None:
        """Every letter on its dead-letter topic before the caller acks the sources. A letter larger
        than its topic accepts is stored cut, with ``otelpipe.dlq.truncated_from`` (the size it had):
        first to ``letter_max_bytes``; if the topic still refuses it (created elsewhere, with a
        smaller max.message.bytes), to what Kafka accepts by default, then to headers alone."""
        sent = []
        for letter in dead:
            topic = (self.dlq_topics.get(letter.message.topic)
                     or self.topic(self.settings.dlq_topic(letter.message.topic)))
            sent.append((letter, topic, await self._send_letter(signal, letter, topic, self.settings.letter_max_bytes())))
            m.DEAD_LETTERS.labels(signal, letter.reason).inc()
            log.warning(
                "dead letter %s[%d]@%d: %s: %s",
                letter.message.topic, letter.message.partition, letter.message.offset, letter.reason, letter.detail,
            )
        for letter, topic, fut in sent:
            for limit in (KAFKA_DEFAULT_MAX_MESSAGE_BYTES - RECORD_OVERHEAD_BYTES, 0, None):
                try:
                    await fut  # delivered to the broker before the source offset is acked
                    break
                except TOO_LARGE:
                    if limit is None:
                        raise
                    fut = await self._send_letter(signal, letter, topic, limit)

    async def _send_letter(self, signal: str, letter: DeadLetter, topic: Any, limit: int) -> Any:
        value, headers = letter.message.value, letter.headers()
        if len(value) > limit:
            headers.append(("otelpipe.dlq.truncated_from", str(len(value)).encode()))
            value = value[:limit]
            m.DEAD_LETTERS_TRUNCATED.labels(signal).inc()
        try:
            return await topic.send(key=letter.message.key, value=value, headers=headers)
        except TOO_LARGE as exc:  # refused by the producer before sending: the same as by the broker
            failed: asyncio.Future = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def sink_when_reachable(self, signal: str) -> ClickHouseSink:
        """Open the sink (and apply migrations), retrying while ClickHouse is unreachable.

        Until it succeeds this agent takes nothing from Kafka: its partitions wait, nothing is lost.
        """
        from sinks.clickhouse import use_database
        from sinks.migrations import migrate

        def open_and_migrate() -> ClickHouseSink:
            sink = self.open_sink()
            migrate(sink.client, self.settings.clickhouse)
            use_database(sink.client, self.settings.clickhouse.database)  # a server's, created just now
            return sink

        where = self.settings.clickhouse.dsn.split("@")[-1]
        return await self.until_done(signal, f"opening ClickHouse at {where}", open_and_migrate)

    async def write_with_token_until_done(self, batch: Any, token: str) -> list[Refusal]:
        """Insert one batch under a given token (tail sampling's rounds), retrying until it lands;
        returns the messages (``ORIGIN`` indices) whose rows ClickHouse refused."""
        started = time.perf_counter()
        refused = await self.until_done("traces", f"writing {len(batch)} rows of {batch.table}",
                                        lambda: self.open_sink().write_isolating(batch, token))  # on the ClickHouse thread
        m.INSERT_SECONDS.labels(batch.table).observe(time.perf_counter() - started)
        m.ROWS_WRITTEN.labels(batch.table).inc(len(batch.without_origins(r.origin for r in refused)))
        return refused
