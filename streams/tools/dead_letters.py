"""The dead-letter topics: list what is there and why, and feed letters back once fixed.

``read_dead_letters`` reads a ``<topic>.dlq`` from the start to its current end (no consumer group).
``refeed_dead_letters`` sends every letter not yet re-fed back to its source topic with its
original key and headers (the ``otelpipe.dlq.*`` headers removed), under the consumer group
``<app_id>.dlq-replay``, whose committed offsets remember what was re-fed: running it twice re-feeds
nothing twice. A letter that still fails lands in the dead-letter topic again, as a new letter.

Letters of a routed topic (``otelpipe.otlp_metrics.routed.dlq``) hold a routed part, an Avro envelope
around a piece of a source request: they are shown with the source message they came from, and
re-fed as that piece (a request of their own) to the source topic, where they are routed again.
A routed letter whose envelope cannot be read is counted and left where it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.agents.routing import PROTOBUF_HEADER, decode_envelope
from streams.otlp.values import BadMessage
from streams.tools.kafka_admin import topic_partitions
from streams.tools.kafka_clients import Target, check_connection, connect_args

DLQ_PREFIX = "otelpipe.dlq."


@dataclass(frozen=True)
class Letter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return ""

    @property
    def reason(self) -> str:
        return self.header(DLQ_PREFIX + "reason")

    @property
    def source_topic(self) -> str:
        return self.header(DLQ_PREFIX + "source_topic")

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]

    def source(self) -> str:
        """Where the refused message came from: ``topic[partition]@offset``."""
        return (f"{self.source_topic}[{self.header(DLQ_PREFIX + 'source_partition')}]"
                f"@{self.header(DLQ_PREFIX + 'source_offset')}")

    def routed_part(self, routed_suffix: str = ".routed") -> dict | None:
        """The envelope, for a letter of a routed part (None when this letter is not one)."""
        if not self.header(DLQ_PREFIX + "truncated_from") and self.source_topic.endswith(routed_suffix):
            try:
                return decode_envelope(self.value)
            except BadMessage:
                return None
        return None


def refeed(letter: Letter, dlq_topic: str, routed_suffix: str = ".routed"
           ) -> tuple[str, bytes, list[tuple[str, bytes]]] | None:
    """(topic, value, headers) to send a letter back to, or None when it cannot be re-fed (a
    routed letter whose envelope is unreadable, or a letter stored cut)."""
    if letter.header(DLQ_PREFIX + "truncated_from"):
        return None
    source = letter.source_topic or dlq_topic.rsplit(".dlq", 1)[0]
    if source.endswith(routed_suffix):
        try:
            env = decode_envelope(letter.value)
        except BadMessage:
            return None
        return env["source_topic"], env["payload"], [PROTOBUF_HEADER]
    return source, letter.value, letter.original_headers()


def _letter(record) -> Letter:
    return Letter(record.topic, record.partition, record.offset, record.timestamp, record.key,
                  record.value or b"", tuple(record.headers or ()))


async def read_dead_letters(bootstrap: Target, topic: str, limit: int | None = None) -> list[Letter]:
    await check_connection(bootstrap)  # refused settings: a clear error, not a retry loop
    consumer = AIOKafkaConsumer(**connect_args(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        letters: list[Letter] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            if not batch:
                # nothing more to fetch: check positions, a compacted or empty range may end early
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                continue
            for tp, records in batch.items():
                letters.extend(_letter(r) for r in records if r.offset < ends[tp])
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        letters.sort(key=lambda letter: (letter.timestamp_ms, letter.partition, letter.offset))
        return letters[-limit:] if limit else letters
    finally:
        await consumer.stop()


async def refeed_dead_letters(bootstrap: Target, topic: str, group: str, routed_suffix: str = ".routed",
                              max_request_size: int = 16 * 1024 * 1024 + 64 * 1024) -> dict[str, int]:
    """Send each dead letter not re-fed before back to its source topic. Returns counts per source
    (letters that cannot be re-fed are counted under ``"(not re-fed)"``)."""
    await check_connection(bootstrap)
    consumer = AIOKafkaConsumer(topic, **connect_args(bootstrap), group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(**connect_args(bootstrap), acks="all", enable_idempotence=True,
                                max_request_size=max_request_size)
    await consumer.start()
    await producer.start()
    counts: dict[str, int] = {}
    ends: dict | None = None
    try:
        for _ in range(100_000):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                futures = []
                for record in records:
                    letter = _letter(record)
                    target = refeed(letter, topic, routed_suffix)
                    if target is None:
                        counts["(not re-fed)"] = counts.get("(not re-fed)", 0) + 1
                        continue
                    source, value, headers = target
                    futures.append(await producer.send(source, value, key=letter.key, headers=headers))
                    counts[source] = counts.get(source, 0) + 1
                for fut in futures:
                    await fut
                if records:
                    await consumer.commit({tp: records[-1].offset + 1})  # only after the broker has them
            tps = list(consumer.assignment())
            if not tps:
                continue
            if ends is None:  # what was there when we joined: letters added later wait for the next run
                ends = await consumer.end_offsets(tps)
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends.get(tp, 0) for tp, pos in zip(tps, positions)):
                break
        return counts
    finally:
        await consumer.stop()
        await producer.stop()
