"""The tail sampler's rounds over in-memory stand-ins of its two compacted topics: a crash between
recording a round and finishing it is redone by the next owner with the same parts, decisions and
tokens, so ClickHouse drops what had landed and nothing is decided twice."""

import asyncio

import pytest

from streams.agents.routing import encode_envelope, split_by_trace
from streams.agents.tail_worker import TailWorker, part_partition, state_partition
from streams.otlp.batch import RawMessage
from streams.stages.pipeline import Stages
from streams.stages.tail import part_key
from streams.stages.tail_policies import parse_policies
from tests.otlp_builders import traces_request
from tests.standins import StateStandIn, TopicStandIn


class Crash(Exception):
    pass


def make_worker(parts_topic, state_topic, written, crash_after=None):
    async def run_blocking(fn, *args):
        return fn(*args)

    async def write(batch, token):
        if crash_after is not None and len(written) >= crash_after:
            raise Crash()
        written.append((token, batch.table, len(batch)))
        return []  # nothing refused

    async def dead(letters):
        raise AssertionError(letters)

    return TailWorker(
        stages=Stages(lambda t: "otlp_proto", 1 << 24, None),
        policies=parse_policies({"policies": [{"type": "always"}]}),
        parts=StateStandIn(parts_topic, part_partition(3)), state=StateStandIn(state_topic, state_partition(3)),
        decision_wait_s=1, max_traces=100, max_spans_per_trace=1000, decision_cache_s=60, keep_log_severity=13,
        run_blocking=run_blocking, write=write, dead_letters=dead)


def parts():
    source = RawMessage("otlp_spans", 0, 7, traces_request(4).SerializeToString())
    out = []
    for trace_id, (payload, n, _) in split_by_trace("traces", source, "otlp_proto").items():
        key = part_key(trace_id, "traces", source.topic, source.partition, source.offset)
        out.append((part_partition(3)(key), key, encode_envelope("traces", source, 0, payload, n, trace_id)))
    return out


def test_a_round_interrupted_by_a_crash_is_redone_with_the_same_tokens():
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    records = parts()
    for p, key, value in records:  # what the router put on the routed topic
        parts_topic.records.setdefault(p, {})[key] = value
    first_written: list = []
    first = make_worker(parts_topic, state_topic, first_written, crash_after=1)
    with pytest.raises(Crash):  # the spans are inserted, then the worker dies before the summary
        asyncio.run(first.take([(p, i + 1, key, value) for i, (p, key, value) in enumerate(records)], now_ms=0))
        asyncio.run(first.tick(now_ms=5000))
    assert [t for _, t, _ in first_written] == ["otel_traces"]
    [(p, round_keys)] = [(p, [k for k in recs if k.startswith("b/")]) for p, recs in state_topic.records.items()
                         if any(k.startswith("b/") for k in recs)]
    assert len(round_keys) == 1 and parts_topic.records[p]  # the round and its parts are still there

    again_written: list = []
    again = make_worker(parts_topic, state_topic, again_written)
    asyncio.run(again.ensure({0, 1, 2}, now_ms=6000))
    assert again_written[0][0] == first_written[0][0]  # the same token: ClickHouse drops the copy
    assert {t for _, t, _ in again_written} == {"otel_traces", "otel_trace_summary"}
    assert not any(k.startswith("b/") for recs in state_topic.records.values() for k in recs)
    assert not any(recs for recs in parts_topic.records.values())  # every part is done
    decided = [k for recs in state_topic.records.values() for k in recs if k.startswith("d/")]
    assert len(decided) == 1  # the trace's decision is cached for late parts
    asyncio.run(again.tick(now_ms=20_000))
    assert len(again_written) == 2  # nothing decided twice
    # the router crashed before its ack and sends the same parts again: they are not written twice
    asyncio.run(again.take([(p, 100 + i, key, value) for i, (p, key, value) in enumerate(records)], now_ms=21_000))
    asyncio.run(again.tick(now_ms=40_000))
    assert len(again_written) == 2 and not any(recs for recs in parts_topic.records.values())


def test_late_parts_get_the_configured_default_and_no_second_summary():
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    source = RawMessage("otlp_spans", 0, 9, traces_request(3).SerializeToString(), timestamp_ms=10**13)
    records = []
    for trace_id, (payload, n, end_ms) in split_by_trace("traces", source, "otlp_proto").items():
        key = part_key(trace_id, "traces", source.topic, source.partition, source.offset)
        value = encode_envelope("traces", source, 0, payload, n, trace_id, end_ms)  # reached Kafka years later
        records.append((part_partition(3)(key), 1, key, value))
        parts_topic.records.setdefault(part_partition(3)(key), {})
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    worker.late_default = "drop"
    asyncio.run(worker.take(records, now_ms=0))
    asyncio.run(worker.tick(now_ms=1))
    assert written == []  # decided at the next tick, by the default (drop), without waiting
    [decision] = [v for recs in state_topic.records.values() for k, v in recs.items() if k.startswith("d/")]
    assert b'"policy":"late_default"' in decision and b'"keep":false' in decision
