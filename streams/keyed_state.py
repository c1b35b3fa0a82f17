"""Per-partition key → bytes state, changelogged to a compacted topic, restored on demand.

The stateful stages (series budgets) keep their state for the keys routed to a partition of a
routed topic. ``ChangelogState`` holds that state for the partitions this worker owns:

- ``await restore(partitions)`` reads each partition of the changelog topic from its beginning to
  its current end (a compacted topic: the latest value per key, tombstones delete) before the
  first batch of that partition is processed, and again after a rebalance took it away;
- ``get(key)`` reads the local copy (any thread; values are replaced, never mutated);
- ``await put(sets, deletes)`` writes changes to the changelog (acks=all, idempotent producer)
  and waits until the broker has them, then updates the local copy. The worker calls it after the
  batch's rows are in ClickHouse and before it acks the batch's offsets.

The changelog partition of a key is the routed partition of its routing key
(``partition_of``), so the worker that owns routed partition P restores exactly the state of the
keys routed to P. Restoring reads the partition directly (no consumer group), so it does not
depend on faust's table recovery.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

log = logging.getLogger("otelpipe.state")

STATE_MAX_BYTES = 16 * 1024 * 1024  # one value (a metric's series in one window)
TOPIC_CONFIGS = {"cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)}


class ChangelogState:
    def __init__(self, bootstrap: str, topic: str, partition_of: Callable[[str], int]):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition_of = partition_of
        self._data: dict[int, dict[str, bytes]] = {}
        self.end_offsets: dict[int, int] = {}  # where each restore stopped reading
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ reads

    def get(self, key: str) -> bytes | None:
        part = self._data.get(self.partition_of(key))
        return None if part is None else part.get(key)

    def restored(self) -> set[int]:
        return set(self._data)

    def keys(self, partition: int | None = None) -> list[str]:
        if partition is not None:
            return list(self._data.get(partition, {}))
        return [k for part in list(self._data.values()) for k in list(part)]

    def apply_local(self, partition: int, key: str, value: bytes | None) -> None:
        """A record read from the topic by the partition's consumer (already durable there)."""
        part = self._data.get(partition)
        if part is None:
            return
        if value is None:
            part.pop(key, None)
        else:
            part[key] = value

    # ------------------------------------------------------------ restore and forget

    async def restore(self, partitions: set[int]) -> None:
        """Load the partitions not loaded yet (or forgotten since)."""
        missing = sorted(p for p in partitions if p not in self._data)
        if not missing:
            return
        async with self._lock:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        fetch_max_bytes=4 * STATE_MAX_BYTES, max_partition_fetch_bytes=STATE_MAX_BYTES)
            await consumer.start()
            try:
                tps = [TopicPartition(self.topic, p) for p in missing]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                loaded: dict[int, dict[str, bytes]] = {p: {} for p in missing}
                todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
                while todo:
                    batches = await consumer.getmany(*todo, timeout_ms=1000)
                    for tp, records in batches.items():
                        part = loaded[tp.partition]
                        for rec in records:
                            if rec.offset >= ends[tp]:
                                continue
                            key = rec.key.decode("utf-8", "surrogateescape")
                            if rec.value is None:
                                part.pop(key, None)
                            else:
                                part[key] = rec.value
                    for tp in list(todo):
                        if await consumer.position(tp) >= ends[tp]:
                            todo.discard(tp)
            finally:
                await consumer.stop()
            self._data.update(loaded)
            self.end_offsets.update({tp.partition: ends[tp] for tp in tps})
            log.info("restored state of %s partitions %s: %d keys", self.topic, missing,
                     sum(len(v) for v in loaded.values()))

    def forget(self, partitions: set[int] | None = None) -> None:
        """Drop the local copy (after a rebalance another worker may have changed it)."""
        if partitions is None:
            self._data = {}
        else:
            self._data = {p: v for p, v in self._data.items() if p not in partitions}

    # ------------------------------------------------------------ writes

    async def put(self, sets: dict[str, bytes], deletes: list[str] | tuple[str, ...] = ()) -> None:
        if not sets and not deletes:
            return
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                              max_request_size=STATE_MAX_BYTES, compression_type="lz4",
                                              linger_ms=0)
            await self._producer.start()
        futures = []
        for key, value in sets.items():
            futures.append(await self._producer.send(self.topic, value, key=key.encode("utf-8", "surrogateescape"),
                                                     partition=self.partition_of(key)))
        for key in deletes:
            futures.append(await self._producer.send(self.topic, None, key=key.encode("utf-8", "surrogateescape"),
                                                     partition=self.partition_of(key)))
        await asyncio.gather(*futures)
        for key, value in sets.items():  # a partition forgotten meanwhile is restored with these
            part = self._data.get(self.partition_of(key))
            if part is not None:
                part[key] = value
        for key in deletes:
            part = self._data.get(self.partition_of(key))
            if part is not None:
                part.pop(key, None)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
