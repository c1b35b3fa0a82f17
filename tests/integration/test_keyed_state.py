"""ChangelogState on the real broker: a transaction's records are restored all together or not at
all, and a restore does not wait for a transaction left open by an instance that died."""

import asyncio
import uuid

from aiokafka import AIOKafkaProducer

from streams.agents.keyed_state import TOPIC_CONFIGS, ChangelogState, NoTransaction
from streams.tools.kafka_admin import delete_topics, ensure_topics


def _partition_of(key: str) -> int:
    return int(key.split("/")[1])


async def _topic(bootstrap: str) -> str:
    name = f"otelpipe-test-state-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [name], 3, configs=TOPIC_CONFIGS)
    return name


class Boom(Exception):
    pass


def test_a_transaction_is_restored_whole_and_an_aborted_one_not_at_all(kafka_bootstrap, monkeypatch):
    async def run() -> None:
        topic = await _topic(kafka_bootstrap)
        try:
            writer = ChangelogState(kafka_bootstrap, topic, _partition_of)
            await writer.put({"x/0/plain": b"before"})
            await writer.put_atomic({"b/0/r1": b"round", "d/1/r1": b"one", "d/2/r1": b"two"})

            original = AIOKafkaProducer.send

            async def failing_send(self, topic_, value=None, key=None, **kw):
                if key == b"d/2/r2":
                    raise Boom()
                return await original(self, topic_, value, key=key, **kw)

            monkeypatch.setattr(AIOKafkaProducer, "send", failing_send)
            try:
                await writer.put_atomic({"b/0/r2": b"round", "d/1/r2": b"one", "d/2/r2": b"two"})
            except NoTransaction as exc:
                assert isinstance(exc.__cause__, Boom)
            else:
                raise AssertionError("the failing send did not fail the transaction")
            monkeypatch.undo()
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


async def _only_the_next_is_read(kafka_bootstrap: str, topic: str, writer: ChangelogState) -> None:
    """After a failed transaction: the writer's next one works, and a restore reads it alone."""
    await writer.put_atomic({"d/2/next": b"ok"})
    await writer.close()
    reader = ChangelogState(kafka_bootstrap, topic, _partition_of)
    await asyncio.wait_for(reader.restore({0, 1, 2}), 60)
    assert reader.keys() == ["d/2/next"]
    await reader.close()


def test_a_transaction_refused_before_its_commit_says_so_and_leaves_nothing(kafka_bootstrap):
    """A record the producer refuses (larger than a state value may be) fails the transaction before
    its commit: ``NoTransaction``, none of its records is read, and the next transaction works."""
    from streams.agents.keyed_state import STATE_MAX_BYTES

    async def run() -> None:
        topic = await _topic(kafka_bootstrap)
        try:
            writer = ChangelogState(kafka_bootstrap, topic, _partition_of)
            try:
                await writer.put_atomic({"b/0/r": b"round", "d/1/r": b"x" * (STATE_MAX_BYTES + 1)})
            except NoTransaction as exc:
                assert "MessageSizeTooLarge" in str(exc)
            else:
                raise AssertionError("a record over the limit was taken")
            await _only_the_next_is_read(kafka_bootstrap, topic, writer)
        finally:
            await delete_topics(kafka_bootstrap, [topic])

    asyncio.run(run())


def test_a_transaction_whose_coordinator_never_answers_is_given_up(kafka_bootstrap, monkeypatch):
    """A broker whose transaction log cannot be made (it needs more replicas than there are brokers)
    never answers a transactional producer's start: the transaction is given up, not waited for."""

    async def run() -> None:
        topic = await _topic(kafka_bootstrap)
        try:
            writer = ChangelogState(kafka_bootstrap, topic, _partition_of)
            writer.prepare_s = 1.0

            async def never(self):
                await asyncio.sleep(3600)

            monkeypatch.setattr(AIOKafkaProducer, "start", never)
            try:
                await asyncio.wait_for(writer.put_atomic({"b/0/r": b"round"}), 30)
            except NoTransaction as exc:
                assert "no transaction coordinator answered in 1 s" in str(exc)
            else:
                raise AssertionError("a producer that never started took a transaction")
            monkeypatch.undo()
            await _only_the_next_is_read(kafka_bootstrap, topic, writer)
        finally:
            await delete_topics(kafka_bootstrap, [topic])

    asyncio.run(run())
