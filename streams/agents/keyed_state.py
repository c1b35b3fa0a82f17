"""Per-partition key → bytes state, changelogged to a compacted topic, restored on demand.

The stateful stages (series budgets) keep their state for the keys routed to a partition of a
routed topic. ``ChangelogState`` holds that state for the partitions this worker owns:

- ``await restore(partitions)`` reads each partition of the changelog topic from its beginning to
  its current end (a compacted topic: the latest value per key, tombstones delete) before the
  first batch of that partition is processed, and again after a rebalance took it away;
- ``get(key)`` reads the local copy (any thread; values are replaced, never mutated);
- ``await put(sets, deletes)`` writes changes to the changelog (acks=all, idempotent producer)
  and waits until the broker has them, then updates the local copy. The worker calls it after the
  batch's rows are in ClickHouse and before it acks the batch's offsets;
- ``await put_atomic(sets)`` writes records of several partitions in one Kafka transaction (a
  producer of its own, a transactional id per instance): a restore, which reads committed records
  only, sees all of them or none. An instance that dies inside a transaction leaves it open until
  the broker aborts it (``TRANSACTION_TIMEOUT_MS``, well under any session timeout): a restore
  meanwhile reads up to the open transaction (the last stable offset) and no further.

The changelog partition of a key is the routed partition of its routing key
(``partition_of``), so the worker that owns routed partition P restores exactly the state of the
keys routed to P. Restoring reads the partition directly (no consumer group), so it does not
depend on faust's table recovery.

The local copy lives in a dict, or with ``store_dir`` in one RocksDB per partition (rocksdict): the
values then stay on disk, off the Python heap (the tail sampling buffer holds whole traces).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.tools.kafka_clients import Target, connect_args

log = logging.getLogger("otelpipe.state")

STATE_MAX_BYTES = 16 * 1024 * 1024  # one value (a metric's series in one window)
TOPIC_CONFIGS = {"cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)}
# zstd (level 3 in aiokafka): about 5x the speed of aiokafka's lz4 (level 9) on round records, and smaller
STATE_COMPRESSION = "zstd"
TRANSACTION_TIMEOUT_MS = 10_000  # an open transaction of a dead instance is aborted after this
# Starting a transactional producer waits for the broker's transaction coordinator; a broker that
# cannot host one (its transaction log needs more replicas than it has) never answers: give up then.
TRANSACTION_PREPARE_S = 30.0


class NoTransaction(Exception):
    """A transaction that failed before its commit was asked for: none of its records is read."""


class RocksPartition:
    """One partition's local copy in RocksDB, with the dict methods ``ChangelogState`` uses."""

    def __init__(self, path: Path):
        from rocksdict import Options, Rdict

        shutil.rmtree(path, ignore_errors=True)  # always rebuilt from the topic
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options()
        options.set_write_buffer_size(4 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        self.path = path
        self.db = Rdict(str(path), options)
        self.count = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.db.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        if key not in self.db:
            self.count += 1
        self.db[key] = value

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.db.get(key)
        if value is None:
            return default
        del self.db[key]
        self.count -= 1
        return value

    def __iter__(self) -> Any:
        return iter(list(self.db.keys()))

    def __len__(self) -> int:
        return self.count

    def update(self, other: dict[str, bytes]) -> None:
        for key, value in other.items():
            self[key] = value

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


class ChangelogState:
    def __init__(self, kafka: Target, topic: str, partition_of: Callable[[str], int], store_dir: Path | None = None):
        self.kafka = kafka
        self.topic = topic
        self.partition_of = partition_of
        self.store_dir = store_dir
        self._data: dict[int, Any] = {}
        self.end_offsets: dict[int, int] = {}  # where each restore stopped reading
        self._producer: AIOKafkaProducer | None = None
        self._transactional: AIOKafkaProducer | None = None
        self.prepare_s = TRANSACTION_PREPARE_S
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
            consumer = AIOKafkaConsumer(**connect_args(self.kafka), group_id=None, enable_auto_commit=False,
                                        fetch_max_bytes=4 * STATE_MAX_BYTES, max_partition_fetch_bytes=STATE_MAX_BYTES,
                                        isolation_level="read_committed")
            await consumer.start()
            try:
                tps = [TopicPartition(self.topic, p) for p in missing]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                loaded: dict[int, Any] = {p: self._new_partition(p) for p in missing}
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

    def _new_partition(self, partition: int) -> Any:
        if self.store_dir is None:
            return {}
        return RocksPartition(self.store_dir / f"{self.topic}-{partition}")

    def forget(self, partitions: set[int] | None = None) -> None:
        """Drop the local copy (after a rebalance another worker may have changed it)."""
        gone = set(self._data) if partitions is None else set(partitions) & set(self._data)
        kept = {p: v for p, v in self._data.items() if p not in gone}
        dropped = [self._data[p] for p in gone]
        self._data = kept
        for part in dropped:
            if isinstance(part, RocksPartition):
                part.close()

    # ------------------------------------------------------------ writes

    async def put(self, sets: dict[str, bytes], deletes: list[str] | tuple[str, ...] = ()) -> None:
        if not sets and not deletes:
            return
        if self._producer is None:
            self._producer = AIOKafkaProducer(**connect_args(self.kafka), acks="all", enable_idempotence=True,
                                              max_request_size=STATE_MAX_BYTES, compression_type=STATE_COMPRESSION,
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
        self._applied(sets, deletes)

    async def put_atomic(self, sets: dict[str, bytes]) -> None:
        """Write ``sets`` (keys of any partitions) in one transaction, and wait for its commit.

        ``NoTransaction`` when it failed before its commit was asked for (no producer, the broker
        refusing transactions, a record refused): nothing of it will ever be read. An error of the
        commit itself is raised as it is, since the broker may have committed."""
        if not sets:
            return
        try:
            producer = await asyncio.wait_for(self._begin(sets), self.prepare_s)
        except Exception as exc:
            await self._drop_transactional(abort=True)
            why = (f"no transaction coordinator answered in {self.prepare_s:g} s" if isinstance(exc, TimeoutError)
                   else f"{type(exc).__name__}: {str(exc)[:200]}")
            raise NoTransaction(f"{why} (transactional id {self.topic}.*)") from exc
        except BaseException:
            await self._drop_transactional(abort=True)
            raise
        try:
            await producer.commit_transaction()
        except BaseException:
            await self._drop_transactional(abort=False)
            raise
        self._applied(sets, ())

    async def _begin(self, sets: dict[str, bytes]) -> AIOKafkaProducer:
        """A transaction begun with ``sets`` sent (not committed), on the instance's producer."""
        if self._transactional is None:
            self._transactional = AIOKafkaProducer(
                **connect_args(self.kafka), acks="all", enable_idempotence=True,
                transactional_id=f"{self.topic}.{uuid.uuid4().hex}", transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                max_request_size=STATE_MAX_BYTES, compression_type=STATE_COMPRESSION, linger_ms=0)
            await self._transactional.start()
        producer = self._transactional
        await producer.begin_transaction()
        for key, value in sets.items():
            await producer.send(self.topic, value, key=key.encode("utf-8", "surrogateescape"),
                                partition=self.partition_of(key))
        return producer

    async def _drop_transactional(self, abort: bool) -> None:
        """The transactional producer goes (the next transaction starts a new one); an open
        transaction is aborted if it can be, else the broker aborts it after its timeout."""
        producer, self._transactional = self._transactional, None
        if producer is None:
            return
        try:
            if abort and producer._txn_manager is not None and producer._txn_manager.is_in_transaction():
                await asyncio.wait_for(producer.abort_transaction(), TRANSACTION_TIMEOUT_MS / 1000)
        except Exception as exc:  # the broker aborts it after the transaction timeout
            log.warning("a transaction of %s left to the broker to abort (%s)", self.topic, type(exc).__name__)
        finally:
            try:
                await asyncio.wait_for(producer.stop(), TRANSACTION_TIMEOUT_MS / 1000)
            except Exception as exc:
                log.warning("stopping a transactional producer of %s: %s", self.topic, type(exc).__name__)

    def _applied(self, sets: dict[str, bytes], deletes: list[str] | tuple[str, ...]) -> None:
        for key, value in sets.items():  # a partition forgotten meanwhile is restored with these
            part = self._data.get(self.partition_of(key))
            if part is not None:
                part[key] = value
        for key in deletes:
            part = self._data.get(self.partition_of(key))
            if part is not None:
                part.pop(key, None)

    async def close(self) -> None:
        self.forget()
        for producer in (self._producer, self._transactional):
            if producer is not None:
                await producer.stop()
        self._producer = self._transactional = None
