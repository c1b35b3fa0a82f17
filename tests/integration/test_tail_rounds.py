"""Tail rounds over several partitions on the real broker: the round's records are one transaction,
restores read committed records only, and a round interrupted after its first insert is redone by
its home partition's next owner with the same token and rows, while the other partitions' owners
clear their parts as written, whichever worker restores which partition first."""

import asyncio
import uuid

import pytest

from streams.agents.keyed_state import TOPIC_CONFIGS, ChangelogState
from streams.agents.tail_worker import part_partition, state_partition
from streams.otlp.batch import RawMessage
from streams.tools.kafka_admin import delete_topics, ensure_topics
from tests.unit.streams.agents.test_tail_worker import (Crash, _request_with_traces, _traces_routed_to, bulk_records,
                                                         worker_over)

PARTITIONS = 3  # as worker_over's


def _worker(bootstrap, parts_topic, state_topic, written, crash_after=None):
    return worker_over(ChangelogState(bootstrap, parts_topic, part_partition(PARTITIONS)),
                       ChangelogState(bootstrap, state_topic, state_partition(PARTITIONS)), written, crash_after)


async def _close(worker):
    await worker.parts.close()
    await worker.state.close()


async def _left(bootstrap, topic, partition_of, prefix=""):
    reader = ChangelogState(bootstrap, topic, partition_of)
    await asyncio.wait_for(reader.restore(set(range(PARTITIONS))), 60)
    keys = sorted(k for k in reader.keys() if k.startswith(prefix))
    await reader.close()
    return keys


@pytest.mark.parametrize("restorers", [((0, 1, 2),), ((1, 2), (0,)), ((0,), (2,), (1,))])
def test_a_round_over_three_partitions_killed_after_its_first_insert_is_redone_once(kafka_bootstrap, restorers):
    async def run() -> None:
        tag = uuid.uuid4().hex[:8]
        parts_topic, state_topic = f"otelpipe-test-parts-{tag}", f"otelpipe-test-tail-state-{tag}"
        await ensure_topics(kafka_bootstrap, [parts_topic, state_topic], PARTITIONS, configs=TOPIC_CONFIGS)
        try:
            traces = [t for p in range(PARTITIONS) for t in _traces_routed_to(p, 3, salt=31 + p)]
            source = RawMessage("otlp_spans", 0, 5, _request_with_traces(traces, 2).SerializeToString())
            records = bulk_records(source)
            assert sorted(p for p, _, _ in records) == [0, 1, 2]
            router = ChangelogState(kafka_bootstrap, parts_topic, part_partition(PARTITIONS))
            await router.put({key: value for _, key, value in records})  # what the router sends
            await router.close()

            first_written: list = []
            first = _worker(kafka_bootstrap, parts_topic, state_topic, first_written, crash_after=1)
            await first.ensure({0, 1, 2}, now_ms=0)
            with pytest.raises(Crash):
                await first.tick(now_ms=5000)
            await _close(first)
            assert [t for _, t, _ in first_written] == ["otel_traces"]
            assert first_written[0][2] == 2 * len(traces)  # one insert for all three partitions
            [round_key] = await _left(kafka_bootstrap, state_topic, state_partition(PARTITIONS), "b/")
            assert round_key.startswith("b/0/")
            decided = await _left(kafka_bootstrap, state_topic, state_partition(PARTITIONS), "d/")
            assert [k.split("/")[1] for k in decided] == ["0", "1", "2"]  # committed with the round

            outs = []
            for partitions in restorers:
                written: list = []
                worker = _worker(kafka_bootstrap, parts_topic, state_topic, written)
                await worker.ensure(set(partitions), now_ms=6000)
                outs.append((partitions, worker, written))
            for partitions, worker, written in outs:
                if 0 in partitions:
                    assert written[0] == first_written[0]  # the same token and rows: ClickHouse drops the copy
                    assert {t for _, t, _ in written} == {"otel_traces", "otel_trace_summary"}
                else:
                    assert written == []
                await worker.tick(now_ms=30_000)
                await _close(worker)
            assert sum(len(w) for _, _, w in outs) == 2  # nothing decided again
            assert await _left(kafka_bootstrap, parts_topic, part_partition(PARTITIONS)) == []  # all cleared
            assert await _left(kafka_bootstrap, state_topic, state_partition(PARTITIONS), "b/") == []
        finally:
            await delete_topics(kafka_bootstrap, [parts_topic, state_topic])

    asyncio.run(run())
