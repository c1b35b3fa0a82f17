"""Control-topic followers: records folded over the current entries; a follower that fails reconnects."""

import asyncio
from types import SimpleNamespace

from streams.agents import worker_metrics as m
from streams.agents.followers import fold_keyed_records, follow_compacted_topic


def record(key, value):
    return SimpleNamespace(key=key.encode(), value=value)


def test_fold_applies_in_order_tombstones_remove_and_bad_records_are_refused():
    def parse(key, value):
        if value is None:
            return None
        if value == b"bad":
            raise ValueError("not a rate")
        return float(value)

    entries = fold_keyed_records([record("a", b"0.5"), record("b", b"bad"), record("c", b"1"), record("a", None)],
                                 {"z": 0.1}, parse, ValueError, m.SAMPLING_UPDATES, "sampling rate")
    assert entries == {"z": 0.1, "c": 1.0}


class FlakyConsumer:
    """Fails on its first getmany for the first two connections, then serves one batch."""

    made = 0

    def __init__(self, **kwargs):
        FlakyConsumer.made += 1
        self.number = FlakyConsumer.made

    async def start(self):
        if self.number == 1:
            raise ConnectionError("broker away")

    def assign(self, tps):
        pass

    async def seek_to_beginning(self, tp):
        pass

    async def getmany(self, tp, timeout_ms):
        if self.number == 2:
            raise RuntimeError("topic deleted")
        await asyncio.sleep(0.01)
        return {tp: [record("k", b"v")]}

    async def stop(self):
        pass


def test_a_follower_reconnects_after_any_failure_and_reads_again():
    seen = []

    async def run():
        task = asyncio.create_task(follow_compacted_topic(
            "127.0.0.1:1", "otelpipe.test-follower", seen.extend, retry_initial_s=0.01, retry_max_s=0.02,
            consumer_factory=FlakyConsumer))
        while not seen:
            await asyncio.sleep(0.01)
        up = m.FOLLOWER_UP.labels("otelpipe.test-follower")._value.get()
        task.cancel()
        return up

    up = asyncio.run(asyncio.wait_for(run(), 10))
    assert FlakyConsumer.made == 3 and seen and up == 1
    assert m.FOLLOWER_RESTARTS.labels("otelpipe.test-follower")._value.get() == 2
