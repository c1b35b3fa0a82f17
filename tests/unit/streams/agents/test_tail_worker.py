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
from tests.otlp_builders import mixed_spans_request, traces_request
from tests.standins import StateStandIn, TopicStandIn


class Crash(Exception):
    pass


def make_worker(parts_topic, state_topic, written, crash_after=None):
    return worker_over(StateStandIn(parts_topic, part_partition(3)), StateStandIn(state_topic, state_partition(3)),
                       written, crash_after)


def worker_over(parts_state, state, written, crash_after=None):
    """A tail worker over three partitions, keeping every trace, whose inserts are recorded in
    ``written`` as (token, table, rows); with ``crash_after``, inserts past that many raise Crash."""

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
        parts=parts_state, state=state,
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


# ---------------------------------------------------------------- bulk records (one per message and route)

from streams.agents.routing import encode_traces_envelope  # noqa: E402
from streams.stages.tail import bulk_key  # noqa: E402


def _request_with_traces(trace_ids, spans_each=2):
    request = traces_request(spans_each * len(trace_ids))
    spans = request.resource_spans[0].scope_spans[0].spans
    for i, span in enumerate(spans):
        span.trace_id = trace_ids[i // spans_each]
    return request


def _traces_routed_to(partition, n, partitions=3, salt=0):
    out, i = [], 0
    while len(out) < n:
        trace = (i + salt * 1_000_003).to_bytes(16, "big")
        if part_partition(partitions)(part_key(trace.hex(), "traces", "otlp_spans", 0, 0)) == partition:
            out.append(trace)
        i += 1
    return out


def bulk_records(source, partitions=3):
    """What the router puts on the tail topic for one source message: one record per route."""
    routes = {}
    for trace_id, (payload, n, end_ms) in split_by_trace("traces", source, "otlp_proto").items():
        route = part_partition(partitions)(part_key(trace_id, "traces", source.topic, source.partition, source.offset))
        routes.setdefault(route, []).append((trace_id, payload, n, end_ms))
    return [(route, bulk_key(route, "traces", source.topic, source.partition, source.offset),
             encode_traces_envelope("traces", source, route, traces)) for route, traces in sorted(routes.items())]


def _put(topic, records):
    for p, key, value in records:
        topic.records.setdefault(p, {})[key] = value


def _spans_written(written):
    return sum(n for _, table, n in written if table == "otel_traces")


def test_a_bulk_record_stays_until_every_trace_in_it_is_written_and_nothing_is_written_twice():
    a, b = _traces_routed_to(1, 2)
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    first_msg = RawMessage("otlp_spans", 0, 7, _request_with_traces([a, b]).SerializeToString())
    records = bulk_records(first_msg)
    assert [p for p, _, _ in records] == [1]  # both traces in one record
    _put(parts_topic, records)
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    # trace b gets another part from a later message before a is due: b is decided later than a
    later = RawMessage("otlp_spans", 0, 8, _request_with_traces([b]).SerializeToString())
    later_records = bulk_records(later)
    _put(parts_topic, later_records)
    asyncio.run(worker.take([(p, 2, key, value) for p, key, value in later_records], now_ms=900))
    asyncio.run(worker.tick(now_ms=1500))  # a is due, b is not
    assert _spans_written(written) == 2
    assert records[0][1] in parts_topic.records[1]  # b still needs the record: no tombstone
    assert not any(k.startswith("b/") for recs in state_topic.records.values() for k in recs)

    restarted_written: list = []
    restarted = make_worker(parts_topic, state_topic, restarted_written)
    asyncio.run(restarted.ensure({0, 1, 2}, now_ms=2000))
    assert set(restarted.indexes[1].traces) == {b.hex()}  # a is known as written
    asyncio.run(restarted.tick(now_ms=5000))
    assert _spans_written(restarted_written) == 4  # b's two messages, once
    assert not parts_topic.records[1]  # every record done
    asyncio.run(restarted.tick(now_ms=5000 + 61_000))  # past the cache: the round records go
    assert not any(recs for recs in state_topic.records.values())


def test_a_decision_stays_cached_while_a_record_with_its_part_lives():
    a, b = _traces_routed_to(2, 2, salt=1)
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    first = RawMessage("otlp_spans", 0, 7, _request_with_traces([a, b]).SerializeToString())
    records = bulk_records(first)
    _put(parts_topic, records)
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    # b keeps receiving parts, so it is never due; a is decided at once
    for i in range(70):
        more = RawMessage("otlp_spans", 0, 100 + i, _request_with_traces([b], spans_each=1).SerializeToString())
        more_records = bulk_records(more)
        _put(parts_topic, more_records)
        asyncio.run(worker.take([(p, 10 + i, key, value) for p, key, value in more_records], now_ms=1000 * i + 500))
        asyncio.run(worker.tick(now_ms=1000 * i + 1000))
    index = worker.indexes[2]
    assert a.hex() in index.decisions  # 70 s later, past the 60 s cache: still known, the record lives
    again: list = []
    restarted = make_worker(parts_topic, state_topic, again)
    asyncio.run(restarted.ensure({0, 1, 2}, now_ms=71_000))
    assert a.hex() not in restarted.indexes[2].traces
    asyncio.run(restarted.tick(now_ms=200_000))  # b decided at last (overflow of max_spans is 1000)
    assert _spans_written(written) + _spans_written(again) == 2 + 2 + 70
    asyncio.run(restarted.tick(now_ms=400_000))
    assert not parts_topic.records[2] and not any(recs for recs in state_topic.records.values())


def test_a_record_sent_again_after_it_was_written_is_dropped_and_one_part_in_two_forms_is_written_once():
    [a] = _traces_routed_to(0, 1, salt=2)
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    source = RawMessage("otlp_spans", 0, 7, _request_with_traces([a]).SerializeToString())
    records = bulk_records(source)
    # the same part as a single-part record (what a router sends when the bulk record is too large)
    [(trace_id, (payload, n, end_ms))] = split_by_trace("traces", source, "otlp_proto").items()
    single = (0, part_key(trace_id, "traces", "otlp_spans", 0, 7),
              encode_envelope("traces", source, 0, payload, n, trace_id, end_ms))
    _put(parts_topic, records + [single])
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(p, i, key, value) for i, (p, key, value) in enumerate(records + [single])], now_ms=0))
    assert single[1] not in parts_topic.records[0]  # the second form is a copy: cleared at once
    asyncio.run(worker.tick(now_ms=2000))
    assert _spans_written(written) == 2 and not parts_topic.records[0]
    _put(parts_topic, records)  # the router crashed before its ack and routes the message again
    asyncio.run(worker.take([(p, 50, key, value) for p, key, value in records], now_ms=3000))
    asyncio.run(worker.tick(now_ms=6000))
    assert _spans_written(written) == 2 and not parts_topic.records[0]


def test_a_crash_inside_a_round_of_bulk_records_is_redone_with_the_same_tokens():
    traces = _traces_routed_to(1, 3, salt=3)
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    records = bulk_records(RawMessage("otlp_spans", 0, 7, _request_with_traces(traces).SerializeToString()))
    _put(parts_topic, records)
    first_written: list = []
    first = make_worker(parts_topic, state_topic, first_written, crash_after=1)
    asyncio.run(first.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    with pytest.raises(Crash):
        asyncio.run(first.tick(now_ms=5000))
    again_written: list = []
    again = make_worker(parts_topic, state_topic, again_written)
    asyncio.run(again.ensure({0, 1, 2}, now_ms=6000))
    assert again_written[0] == first_written[0]  # same token, same rows: ClickHouse drops the copy
    assert {t for _, t, _ in again_written} == {"otel_traces", "otel_trace_summary"}
    assert not parts_topic.records[1]
    asyncio.run(again.tick(now_ms=20_000))
    assert len(again_written) == 2


@pytest.mark.parametrize("mangle", ["route", "trace_elsewhere", "not_hex", "coordinates", "garbage", "bad_key"])
def test_records_that_are_not_ours_on_the_tail_topic_are_skipped(mangle):
    [a] = _traces_routed_to(1, 1, salt=4)
    [elsewhere] = _traces_routed_to(0, 1, salt=4)
    source = RawMessage("otlp_spans", 0, 7, _request_with_traces([a]).SerializeToString())
    [(route, key, value)] = bulk_records(source)
    payload, n, end_ms = split_by_trace("traces", source, "otlp_proto")[a.hex()]
    if mangle == "route":
        key = bulk_key(2, "traces", "otlp_spans", 0, 7)
    elif mangle == "trace_elsewhere":
        value = encode_traces_envelope("traces", source, 1, [(elsewhere.hex(), payload, n, end_ms)])
    elif mangle == "not_hex":
        value = encode_traces_envelope("traces", source, 1, [("a/b/" + "0" * 28, payload, n, end_ms)])
    elif mangle == "coordinates":
        value = encode_traces_envelope("traces", RawMessage("otlp_spans", 0, 8, b""), 1, [(a.hex(), payload, n, 0)])
    elif mangle == "garbage":
        value = b"\xff" * 40
    else:
        key = "m/1/t/otlp_spans/0"
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(1, 1, key, value)], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert written == [] and not worker.indexes[1].traces
    # and a restore that finds it clears it
    parts_topic.records.setdefault(1, {})[key] = value
    restored = make_worker(parts_topic, state_topic, written)
    asyncio.run(restored.ensure({1}, now_ms=0))
    assert written == [] and not restored.indexes[1].traces


def test_records_of_a_partition_this_worker_no_longer_owns_are_left_to_its_owner():
    """Events fetched before a rebalance can be delivered after it: restoring their partition here
    would decide its traces from a copy missing what comes after."""
    [a] = _traces_routed_to(2, 1, salt=5)
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    records = bulk_records(RawMessage("otlp_spans", 0, 7, _request_with_traces([a]).SerializeToString()))
    _put(parts_topic, records)
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    owned = {0, 1}  # partition 2 went to another worker
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0, owned=owned))
    asyncio.run(worker.tick(now_ms=5000, owned=owned))
    assert 2 not in worker.indexes and written == [] and records[0][1] in parts_topic.records[2]
    owned.add(2)  # assigned back: restored from the topic and decided
    asyncio.run(worker.tick(now_ms=6000, owned=owned))
    asyncio.run(worker.tick(now_ms=10_000, owned=owned))
    assert _spans_written(written) == 2 and not parts_topic.records[2]


# ---------------------------------------------------------------- triage: traces no policy can keep are not decoded

import random  # noqa: E402

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402

from streams.stages.sampling import HeadRates, HeadSampler  # noqa: E402

TRIAGED_POLICIES = {"policies": [
    {"type": "status_code", "status_codes": ["Error"]}, {"type": "latency", "threshold_ms": 800},
    {"type": "latency", "threshold_ms": 4000, "scope": "any"}, {"type": "probabilistic", "rate": 0.2},
    {"type": "and", "policies": [{"type": "span_count", "min_spans": 7}, {"type": "status_code", "status_codes": ["Ok"]}]}]}


def _hostile_spans(rng, trace_ids, offset, suspicious=False):
    """Spans of some of ``trace_ids`` under two services (one head-sampled at 50%): any number of
    roots, every status (and codes no enum has), long and short, events and links."""
    request = mixed_spans_request(rng, trace_ids, ["front", "back"], (1, 8), 1_760_000_000_000_000_000 + offset * 10**9,
                                  refused=suspicious)
    return RawMessage("otlp_spans", 0, offset, request.SerializeToString())


def _logs_of(rng, trace_ids, offset):
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add()
    for trace_id in rng.sample(trace_ids, 3):
        record = records.log_records.add()
        record.trace_id, record.span_id = trace_id, rng.randbytes(8)
        record.severity_number = rng.choice([9, 13, 17])
        record.time_unix_nano = 1_760_000_000_000_000_000 + offset * 10**9
        record.body.string_value = "hello"
    return RawMessage("otlp_logs", 0, offset, request.SerializeToString())


def _records(source, signal):
    out = []
    for trace_id, (payload, n, end_ms) in split_by_trace(signal, source, "otlp_proto").items():
        if not trace_id:
            continue
        route = part_partition(3)(part_key(trace_id, signal, source.topic, source.partition, source.offset))
        out.append((route, trace_id, payload, n, end_ms))
    by_route = {}
    for route, *trace in out:
        by_route.setdefault(route, []).append(tuple(trace))
    return [(route, bulk_key(route, signal, source.topic, source.partition, source.offset),
             encode_traces_envelope(signal, source, route, traces)) for route, traces in sorted(by_route.items())]


def _triage_run(seed, triage, suspicious=0.0, blank=()):
    """Rows written (without the columns ``blank``), decisions, dead letters and the routed topic
    of one run over a seeded mix; ``suspicious``: the share of messages with a span the decoder
    refuses."""
    rng = random.Random(seed)
    trace_ids = [rng.randbytes(16) for _ in range(12)]
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    written, dead = [], []

    async def run_blocking(fn, *args):
        return fn(*args)

    async def write(batch, token):
        columns = {k: v for k, v in batch.columns.items() if k != "_origin" and k not in blank}
        written.append((batch.table, sorted(repr(row) for row in zip(*(columns[k] for k in sorted(columns))))))
        return []

    async def dead_letters(letters):
        dead.extend((d.message.topic, d.message.offset, d.reason, d.detail) for d in letters)

    head = HeadSampler(HeadRates(services={"back": 0.5}))
    worker = TailWorker(
        stages=Stages(lambda t: "otlp_proto", 1 << 24, None, head=head),
        policies=parse_policies(TRIAGED_POLICIES),
        parts=StateStandIn(parts_topic, part_partition(3)), state=StateStandIn(state_topic, state_partition(3)),
        decision_wait_s=1, max_traces=100, max_spans_per_trace=1000, decision_cache_s=60, keep_log_severity=13,
        run_blocking=run_blocking, write=write, dead_letters=dead_letters)
    assert worker.triage
    worker.triage = triage
    offset = 0
    for step in range(6):  # parts arrive over time; some traces are decided, then get late parts
        batch = []
        for _ in range(3):
            offset += 1
            batch += _records(_hostile_spans(rng, trace_ids, offset, suspicious=rng.random() < suspicious), "traces")
        if step % 2:
            offset += 1
            batch += _records(_logs_of(rng, trace_ids, offset), "logs")
        _put(parts_topic, batch)
        asyncio.run(worker.take([(p, offset * 10 + i, key, value) for i, (p, key, value) in enumerate(batch)],
                                now_ms=step * 1500))
        asyncio.run(worker.tick(now_ms=step * 1500 + 1200))
    asyncio.run(worker.tick(now_ms=60_000))
    decisions = {t: d for index in worker.indexes.values() for t, d in index.decisions.items()}
    return sorted(written, key=repr), decisions, sorted(dead), parts_topic


@pytest.mark.parametrize("seed", range(12))
def test_triage_writes_and_decides_what_decoding_every_trace_does(seed):
    with_triage, without = _triage_run(seed, True), _triage_run(seed, False)
    assert with_triage[0] == without[0]  # the same rows in every table
    assert with_triage[1] == without[1]  # the same decisions, root service and span name included
    assert with_triage[2] == without[2] == []
    assert not any(recs for recs in with_triage[3].records.values())  # every part done


@pytest.mark.parametrize("seed", range(12))
def test_triage_with_parts_the_decoder_refuses(seed):
    """A refused part takes the other parts decoded with it (one request per record) to the dead
    letters in both ways; a trace dropped on its triage beside it still has its root's names (read
    apart), where decoding every trace left them empty: only those names may differ."""
    blank = ("RootServiceName", "RootSpanName")
    with_triage, without = _triage_run(seed, True, 0.3, blank), _triage_run(seed, False, 0.3, blank)
    assert with_triage[0] == without[0]
    assert with_triage[2] == without[2] and (seed > 3 or with_triage[2])  # the same refusals
    def strip(decisions):
        return {t: (d.keep, d.weight, d.policy, d.parts) for t, d in decisions.items()}
    assert strip(with_triage[1]) == strip(without[1])
    for t, d in without[1].items():
        if d.keep or d.root_service:
            assert (with_triage[1][t].root_service, with_triage[1][t].root_span) == (d.root_service, d.root_span)


def test_triage_skips_the_traces_no_policy_can_keep():
    rng = random.Random(5)
    trace_ids = [rng.randbytes(16) for _ in range(40)]
    worker = make_worker(TopicStandIn(), TopicStandIn(), [])
    worker.policies = parse_policies(TRIAGED_POLICIES)
    source = _hostile_spans(rng, trace_ids, 1)
    [(_, _, value)] = [r for r in _records(source, "traces")][:1]
    from streams.agents.routing import decode_traces_envelope
    payloads = {e["trace_id"]: e["payload"] for e in decode_traces_envelope(value)["traces"]}
    span_parts = {t: [(0, p)] for t, p in payloads.items()}
    worker.triage = True
    full, roots, skipped = worker._plan(span_parts, set(), {}, set(payloads))
    assert skipped and full  # some traces read only, some decoded
    assert set(skipped) | full == set(payloads) and not set(skipped) & full
    assert {t for _, t in roots} <= set(skipped)


# ---------------------------------------------------------------- rounds over several partitions (a group)


def _group_setup(spans_each=2):
    """Traces in all three partitions, one source message: (parts topic, state topic, records, traces)."""
    traces = [t for p in (0, 1, 2) for t in _traces_routed_to(p, 2, salt=7 + p)]
    parts_topic, state_topic = TopicStandIn(), TopicStandIn()
    request = _request_with_traces(traces, spans_each)
    records = bulk_records(RawMessage("otlp_spans", 0, 11, request.SerializeToString()))
    assert sorted(p for p, _, _ in records) == [0, 1, 2]
    _put(parts_topic, records)
    return parts_topic, state_topic, records, traces


def _state_keys(state_topic, prefix):
    return sorted(k for recs in state_topic.records.values() for k in recs if k.startswith(prefix))


def test_the_due_traces_of_every_partition_are_one_round_one_insert_per_table():
    parts_topic, state_topic, records, traces = _group_setup()
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert sorted(t for _, t, _ in written) == ["otel_trace_summary", "otel_traces"]
    assert _spans_written(written) == 2 * len(traces)
    [token] = {tok.rsplit(":", 1)[0] for tok, _, _ in written}
    home, gid = token.split(":")[1].split("/")
    assert home == "0"
    assert _state_keys(state_topic, "b/") == []  # the round is done
    assert _state_keys(state_topic, "d/") == [f"d/{p}/{gid}" for p in (0, 1, 2)]  # each partition's decisions
    assert not any(recs for recs in parts_topic.records.values())
    asyncio.run(worker.take([(p, 5, key, value) for p, key, value in records], now_ms=6000))  # sent again
    asyncio.run(worker.tick(now_ms=9000))
    assert len(written) == 2  # recognised as written, in every partition


@pytest.mark.parametrize("restorers", [((0, 1, 2),), ((0,), (1, 2)), ((1, 2), (0,)), ((2,), (0,), (1,))])
def test_a_group_round_interrupted_by_a_crash_is_redone_by_its_home_whoever_holds_the_rest(restorers):
    """The round's record is at home (its lowest partition) and holds the parts its rows are made of;
    each partition's decisions are committed with it. After a crash, whichever workers restore the
    partitions, in whichever order: the home's owner redoes the round with the same tokens and the
    same rows, the others clear their parts as written, and nothing is decided or written twice."""
    parts_topic, state_topic, records, traces = _group_setup()
    first_written: list = []
    first = make_worker(parts_topic, state_topic, first_written, crash_after=1)
    asyncio.run(first.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    with pytest.raises(Crash):  # the spans are inserted, then the worker dies before the summary
        asyncio.run(first.tick(now_ms=5000))
    assert [t for _, t, _ in first_written] == ["otel_traces"]
    assert len(_state_keys(state_topic, "b/")) == 1 and all(parts_topic.records[p] for p in (0, 1, 2))

    outs = []
    for partitions in restorers:
        written: list = []
        worker = make_worker(parts_topic, state_topic, written)
        asyncio.run(worker.ensure(set(partitions), now_ms=6000))
        outs.append((partitions, worker, written))
    for partitions, worker, written in outs:
        if 0 in partitions:
            assert written[0] == first_written[0]  # same token, same rows: ClickHouse drops the copy
            assert {t for _, t, _ in written} == {"otel_traces", "otel_trace_summary"}
        else:
            assert written == []  # its decisions came with the round: nothing to decide
    assert _state_keys(state_topic, "b/") == []
    assert not any(recs for recs in parts_topic.records.values())
    for partitions, worker, written in outs:
        asyncio.run(worker.tick(now_ms=20_000))
        asyncio.run(worker.take([(p, 9, key, value) for p, key, value in records if p in partitions], now_ms=21_000))
        asyncio.run(worker.tick(now_ms=40_000))
    assert sum(len(w) for _, _, w in outs) == 2  # nothing decided twice, copies recognised


def test_a_crash_while_a_group_round_is_recorded_leaves_nothing_and_the_traces_are_decided_once():
    parts_topic, state_topic, records, traces = _group_setup()
    first = make_worker(parts_topic, state_topic, [])

    async def dies(sets):
        raise Crash()  # the transaction is never committed: a restore reads none of it

    first.state.put_atomic = dies
    asyncio.run(first.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    with pytest.raises(Crash):
        asyncio.run(first.tick(now_ms=5000))
    assert not any(recs for recs in state_topic.records.values())
    written: list = []
    again = make_worker(parts_topic, state_topic, written)
    asyncio.run(again.ensure({0, 1, 2}, now_ms=6000))
    asyncio.run(again.tick(now_ms=9000))
    assert _spans_written(written) == 2 * len(traces) and len(written) == 2


def test_a_group_whose_record_would_be_too_large_is_decided_partition_by_partition(monkeypatch):
    from streams.agents import tail_worker

    monkeypatch.setattr(tail_worker, "GROUP_HELD_MAX_BYTES", 10)
    parts_topic, state_topic, records, traces = _group_setup()
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    runs = []
    run = worker.stages.run
    worker.stages.run = lambda signal, messages: runs.append(signal) or run(signal, messages)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert len({tok.rsplit(":", 1)[0] for tok, _, _ in written}) == 3  # a round per partition
    assert runs == ["traces"] * 3  # the group's parts were not decoded before it was given up
    assert _spans_written(written) == 2 * len(traces)
    assert not any(recs for recs in parts_topic.records.values())


_GOOD_DECISION = {"keep": True, "weight": 1.0, "policy": "always", "decided_ms": 1}


@pytest.mark.parametrize("record", [
    b"not json", b"[1, 2]", b'{"parts": [], "new": []}', b'{"parts": [], "new": [], "decisions": []}',
    b'{"parts": [7], "new": [], "decisions": {}}', b'{"parts": ["no-slashes"], "new": [], "decisions": {}}',
    b'{"parts": [], "new": [], "decisions": {"a": {"keep": true}}}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"x": []}, "held": []}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": "ab"}, "held": []}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": []}}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": []}, "held": [["t", 0, 0]]}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": []}, "held": [["t", 0, 0, 0, [["a", "traces", "%%%"]]]]}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": []}, "held": [["t", 0, 0, 0, [["a", "metrics", ""]]]]}',
    b'{"parts": [], "new": [], "decisions": {}, "group": {"1": []}, "held": [["t", "0", 0, 0, []]]}',
])
def test_a_round_record_that_is_not_ours_is_skipped_and_the_partition_goes_on(record):
    """Anyone can produce to the state topic: a round record of the wrong shape is skipped on
    restore (a redo that fails on it every time would stop the partition)."""
    parts_topic, state_topic, records, traces = _group_setup()
    state_topic.records.setdefault(1, {})["b/1/hostile"] = record
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert _spans_written(written) == 2 * len(traces)
    assert not any(recs for recs in parts_topic.records.values())


def test_a_well_formed_group_record_is_accepted_by_the_check():
    from streams.agents.tail_worker import round_spec

    spec = {"parts": ["c/ab/t/otlp_spans/0/1"], "new": ["ab"], "decisions": {"ab": _GOOD_DECISION},
            "group": {"0": ["c/ab/t/otlp_spans/0/1"], "2": []},
            "held": [["otlp_spans", 0, 1, 5, [["ab", "traces", "AAEC"]]]]}
    import orjson

    assert round_spec(orjson.dumps(spec)) == spec


def test_a_transaction_refused_before_its_commit_sends_rounds_partition_by_partition_for_a_while():
    from streams.agents.keyed_state import NoTransaction
    from streams.agents.tail_worker import GROUP_RETRY_MS

    parts_topic, state_topic, records, traces = _group_setup()
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    calls = []

    async def refused(sets):
        calls.append(sorted(sets))
        raise NoTransaction("KafkaError: transactions are not allowed here")

    worker.state.put_atomic = refused
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert len(calls) == 1
    assert len({tok.rsplit(":", 1)[0] for tok, _, _ in written}) == 3  # a round per partition
    assert _spans_written(written) == 2 * len(traces)
    assert not any(recs for recs in parts_topic.records.values())
    assert worker.groups_after_ms == 5000 + GROUP_RETRY_MS

    more = bulk_records(RawMessage("otlp_spans", 0, 12, _request_with_traces(traces, 1).SerializeToString()))
    _put(parts_topic, more)
    asyncio.run(worker.take([(p, 2, key, value) for p, key, value in more], now_ms=6000))
    asyncio.run(worker.tick(now_ms=9000))
    assert len(calls) == 1  # not tried again yet
    del worker.state.put_atomic  # the stand-in's own: transactions work again
    again = bulk_records(RawMessage("otlp_spans", 0, 13, _request_with_traces(traces, 1).SerializeToString()))
    _put(parts_topic, again)
    asyncio.run(worker.take([(p, 3, key, value) for p, key, value in again], now_ms=5000 + GROUP_RETRY_MS))
    before = len(written)
    asyncio.run(worker.tick(now_ms=10_000 + GROUP_RETRY_MS))
    assert len({tok.rsplit(":", 1)[0] for tok, _, _ in written[before:]}) == 1  # then one round again
    assert len(calls) == 1 and _spans_written(written) == 4 * len(traces)
    assert worker.group_failures == 0


def test_transactions_failing_in_a_row_are_tried_again_less_and_less_often():
    from streams.agents.keyed_state import NoTransaction
    from streams.agents.tail_worker import GROUP_RETRY_MAX_MS, GROUP_RETRY_MS

    parts_topic, state_topic, records, traces = _group_setup()
    worker = make_worker(parts_topic, state_topic, [])

    async def refused(sets):
        raise NoTransaction("no transaction coordinator answered in 30 s")

    worker.state.put_atomic = refused
    now, waits = 0, []
    for offset in range(8):
        request = _request_with_traces(traces, 1).SerializeToString()
        more = bulk_records(RawMessage("otlp_spans", 0, 20 + offset, request))
        _put(parts_topic, more)
        now = max(now, worker.groups_after_ms)
        asyncio.run(worker.take([(p, offset + 1, key, value) for p, key, value in more], now_ms=now))
        asyncio.run(worker.tick(now_ms=now + 5000))
        waits.append(worker.groups_after_ms - (now + 5000))
    assert waits == [min(GROUP_RETRY_MS << i, GROUP_RETRY_MAX_MS) for i in range(8)]


def test_with_group_rounds_off_each_partition_has_its_own_round():
    parts_topic, state_topic, records, traces = _group_setup()
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    worker.group_rounds = False  # sampling.tail_group_rounds = false

    async def no_transactions(sets):
        raise AssertionError("a transaction with group rounds off")

    worker.state.put_atomic = no_transactions
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    asyncio.run(worker.tick(now_ms=5000))
    assert len({tok.rsplit(":", 1)[0] for tok, _, _ in written}) == 3
    assert _spans_written(written) == 2 * len(traces)


def _mutations(value, rng, depth=0):
    """Copies of a JSON value with one place replaced by a value of another kind."""
    hostile = [None, True, -1, 2**70, 1.5, "", "x/y", "c/ab/t/otlp_spans/0/1", [], {}, [1, "a"], {"a": None}]
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        inner = rng.random() < 0.6 and depth < 6
        return {**value, key: _mutations(value[key], rng, depth + 1) if inner else rng.choice(hostile)}
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        inner = rng.random() < 0.6 and depth < 6
        return [*value[:i], _mutations(value[i], rng, depth + 1) if inner else rng.choice(hostile), *value[i + 1:]]
    return rng.choice(hostile)


@pytest.mark.parametrize("seed", range(6))
def test_a_mutated_group_record_is_skipped_or_redone_and_never_stops_the_restore(seed):
    """Round records of every shape near a real one: the check refuses it (skipped) or the redo runs
    to its end; no exception leaves ``ensure``, which would be retried forever."""
    import json
    import random

    import orjson

    parts_topic, state_topic, records, traces = _group_setup()
    first = make_worker(parts_topic, state_topic, [], crash_after=0)
    asyncio.run(first.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    with pytest.raises(Crash):
        asyncio.run(first.tick(now_ms=5000))
    [(key, raw)] = [(k, v) for recs in state_topic.records.values() for k, v in recs.items() if k.startswith("b/")]
    spec = orjson.loads(raw)
    rng = random.Random(seed)
    for _ in range(150):
        mutated = _mutations(spec, rng)
        state = TopicStandIn()
        state.records = {p: dict(recs) for p, recs in state_topic.records.items()}
        state.records[0][key] = json.dumps(mutated).encode()
        worker = make_worker(TopicStandIn(), state, [])
        worker.parts.topic.records = {p: dict(recs) for p, recs in parts_topic.records.items()}
        asyncio.run(worker.ensure({0, 1, 2}, now_ms=6000))
        asyncio.run(worker.tick(now_ms=9000))


@pytest.mark.parametrize("group", [True, False])
def test_a_round_whose_records_may_have_been_written_is_deleted_before_its_traces_are_decided_again(group):
    """The write of a round's records fails after the broker took them (a commit or an ack whose
    answer was lost): the round is not written; before the next round its records are deleted, so
    that no restore redoes it after its traces were written under the next round's tokens."""
    if group:
        parts_topic, state_topic, records, traces = _group_setup()
    else:
        traces = _traces_routed_to(1, 3, salt=5)
        parts_topic, state_topic = TopicStandIn(), TopicStandIn()
        records = bulk_records(RawMessage("otlp_spans", 0, 7, _request_with_traces(traces).SerializeToString()))
        _put(parts_topic, records)
    written: list = []
    worker = make_worker(parts_topic, state_topic, written)
    name = "put_atomic" if group else "put"
    wrote = getattr(worker.state, name)
    failed = []

    async def lost_answer(sets, *deletes):
        await wrote(sets, *deletes)
        if sets and not failed:
            failed.append(sorted(sets))
            raise ConnectionError("the broker's answer was lost")

    setattr(worker.state, name, lost_answer)
    asyncio.run(worker.take([(p, 1, key, value) for p, key, value in records], now_ms=0))
    with pytest.raises(ConnectionError):
        asyncio.run(worker.tick(now_ms=5000))
    assert written == [] and _state_keys(state_topic, "b/")  # on the topic, not written
    asyncio.run(worker.tick(now_ms=6000))
    assert _spans_written(written) == 2 * len(traces)
    assert not any(k in recs for recs in state_topic.records.values() for k in failed[0])  # deleted
    again: list = []
    restarted = make_worker(parts_topic, state_topic, again)
    asyncio.run(restarted.ensure({0, 1, 2}, now_ms=7000))
    asyncio.run(restarted.tick(now_ms=20_000))
    assert again == []  # nothing redone, nothing decided twice
