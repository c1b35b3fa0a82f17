"""ChangelogState on the real broker: a transaction's records are restored all together or not at
all, and a restore does not wait for a transaction left open by an instance that died."""

import asyncio
import uuid

from aiokafka import AIOKafkaProducer

from streams.agents.keyed_state import STATE_MAX_BYTES, TOPIC_CONFIGS, ChangelogState, NoTransaction
from streams.tools.kafka_admin import delete_topics, ensure_topics


def _partition_of(key: str) -> int:
    return int(key.split("/")[1])


async def _topic(bootstrap: str) -> str:
    name = f"otelpipe-test-state-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [name], 3, configs=TOPIC_CONFIGS)
    return name


def test_a_transaction_is_restored_whole_and_an_aborted_one_not_at_all(kafka_bootstrap):
    """Three records in one transaction are restored together; a transaction whose last record the
    producer refuses (larger than a state value may be, after two records were sent) fails with
    ``NoTransaction`` and none of it is read; the next transaction takes a new producer."""

    async def run() -> None:
        topic = await _topic(kafka_bootstrap)
        try:
            writer = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await writer.put({"x/0/plain": b"before"})
            await writer.put_atomic({"b/0/r1": b"round", "d/1/r1": b"one", "d/2/r1": b"two"})
            try:
                await writer.put_atomic({"b/0/r2": b"round", "d/1/r2": b"one",
                                         "d/2/r2": b"x" * (STATE_MAX_BYTES + 1)})
            except NoTransaction as exc:
                assert "MessageSizeTooLarge" in str(exc)
            else:
                raise AssertionError("a record over the limit was taken")
            await writer.put_atomic({"d/1/r3": b"after"})  # a new producer after the failure
            await writer.put({"x/2/plain": b"after"})
            await writer.close()

            reader = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await asyncio.wait_for(reader.restore({0, 1, 2}), 60)
            assert sorted(reader.keys()) == ["b/0/r1", "d/1/r1", "d/1/r3", "d/2/r1", "x/0/plain", "x/2/plain"]
            assert reader.get("d/2/r1") == b"two"
            await reader.close()
        finally:
            await delete_topics(kafka_bootstrap, [topic])

    asyncio.run(run())


def test_a_restore_reads_up_to_a_transaction_left_open_and_not_past_it(kafka_bootstrap):
    async def run() -> None:
        topic = await _topic(kafka_bootstrap)
        try:
            writer = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await writer.put({"x/1/first": b"1"})
            dead = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"dead-{uuid.uuid4().hex}",
                                    enable_idempotence=True, acks="all", transaction_timeout_ms=10_000)
            await dead.start()
            await dead.begin_transaction()
            await (await dead.send(topic, b"open", key=b"b/1/open", partition=1))  # never committed
            await writer.put({"x/1/later": b"2"})  # behind the open transaction

            reader = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await asyncio.wait_for(reader.restore({0, 1, 2}), 30)  # does not wait for the transaction
            assert reader.keys(1) == ["x/1/first"]
            await reader.close()
            await dead.abort_transaction()
            await dead.stop()

            again = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await asyncio.wait_for(again.restore({1}), 30)
            assert sorted(again.keys(1)) == ["x/1/first", "x/1/later"]
            await again.close()
            await writer.close()
        finally:
            await delete_topics(kafka_bootstrap, [topic])

    asyncio.run(run())
