"""A running worker, tail sampling on, given requests with a secret planted in every field of every
signal (tests/planted_secrets.py): no stored row, no buffered part and no dead-letter header holds
any of them."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.otlp.batch import RawMessage
from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.tools.kafka_admin import topic_partitions
from tests.integration.test_faults import _send
from tests.planted_secrets import MARKERS, requests_with_secrets

TAIL = {"OTELPIPE_SAMPLING_TAIL": "true", "OTELPIPE_SAMPLING_DECISION_WAIT_S": "2"}


async def _all_records(bootstrap: str, topic: str) -> list:
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    assert partitions, f"no topic {topic}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _found(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [m for m in MARKERS if m in text]


def test_no_planted_secret_is_stored_buffered_or_put_in_a_letter(worker_factory):
    worker = worker_factory(**TAIL).start()
    s = worker.settings
    planted = {signal: [r.SerializeToString() for r in requests_with_secrets(signal)]
               for signal in ("traces", "logs", "metrics")}
    expected: dict[str, int] = {}  # rows per table, as the stages make them
    local = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, LabelStage(parse_policy({})))
    for signal, values in planted.items():
        for value in values:
            for table, batch in local.run(signal, [RawMessage("t", 0, 0, value)]).batches.items():
                expected[table] = expected.get(table, 0) + len(batch)
    poison = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + MARKERS[0].encode() + b'"}]}]}]}'
    topics = {"traces": s.kafka.spans_topic, "logs": s.kafka.logs_topic, "metrics": s.kafka.metrics_topic}
    for signal, values in planted.items():
        asyncio.run(_send(s.kafka.bootstrap_servers, topics[signal], values + [poison]))

    for table, rows in sorted(expected.items(), key=lambda kv: not kv[0].startswith("otel_")):
        if table.startswith("otel_"):  # the others (naming violations) are counted per batch
            worker.wait_for(f"SELECT count() FROM {{db}}.{table}", rows, timeout_s=90)
        stored = worker.query(f"SELECT * FROM {{db}}.{table}")
        assert stored and not _found(repr(stored)), (table, _found(repr(stored)))
    bootstrap = s.kafka.bootstrap_servers
    buffered = asyncio.run(_all_records(bootstrap, s.tail_topic()))
    assert buffered and not [m for r in buffered if r.value for m in _found(r.value)]
    for topic in topics.values():
        letters = asyncio.run(_all_records(bootstrap, s.dlq_topic(topic)))
        assert letters, topic
        for letter in letters:
            ours = " ".join(v.decode("utf-8", "replace") for k, v in letter.headers if k.startswith("otelpipe."))
            assert "otelpipe.dlq.reason" in [k for k, _ in letter.headers] and not _found(ours)
