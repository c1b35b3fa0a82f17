"""Tail sampling in running workers: traces split across partitions and out of order are decided
once, errors and slow traces are kept under a 1% base rate, logs follow their traces, a kill -9
while traces are buffered loses and duplicates nothing, and one 100,000-span trace stays bounded."""

from __future__ import annotations

import asyncio

import pytest
import time
from collections import Counter, defaultdict

from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.stages.sampling import probability_to_threshold, trace_randomness
from streams.tools.workload import Workload

START_NS = 1_764_100_000_000_000_000
TAIL = {"OTELPIPE_SAMPLING_TAIL": "true", "OTELPIPE_SAMPLING_DECISION_WAIT_S": "2"}


def halves(request: ExportTraceServiceRequest) -> tuple[bytes, bytes]:
    """The request's spans cut in two (odd and even positions): every trace is split."""
    out = []
    for parity in (1, 0):
        part = ExportTraceServiceRequest()
        part.CopyFrom(request)
        for rs in part.resource_spans:
            for ss in rs.scope_spans:
                keep = [s for i, s in enumerate(ss.spans) if i % 2 == parity]
                del ss.spans[:]
                ss.spans.extend(keep)
        out.append(part.SerializeToString())
    return out[0], out[1]


class Produced:
    """A workload, sent split and out of order, and what tail sampling must make of it."""

    def __init__(self, seed: int, steps: int, traces_per_step: int):
        self.messages: list[tuple[str, int, bytes]] = []  # (signal, partition, value)
        self.spans: Counter = Counter()
        self.errors: set[str] = set()
        self.slow: set[str] = set()
        self.logs: dict[str, list[int]] = defaultdict(list)
        workload = Workload(seed=seed, start_ns=START_NS)
        for signal, _, request in workload.requests(steps, traces_per_step, metrics_every=10**9):
            value = request.SerializeToString()
            batch = decode_messages(signal, [RawMessage("x", 0, 0, value)]).batches
            if signal == "traces":
                cols = batch["otel_traces"].columns
                for t, parent, status, duration in zip(cols["TraceId"], cols["ParentSpanId"], cols["StatusCode"],
                                                       cols["Duration"]):
                    self.spans[t] += 1
                    if status == "Error":
                        self.errors.add(t)
                    if not parent and duration >= 1_000_000_000:
                        self.slow.add(t)
                odd, even = halves(request)
                self.messages += [("traces", 1, odd), ("traces", 0, even)]  # the later half first
            elif signal == "logs":
                cols = batch["otel_logs"].columns
                for t, severity in zip(cols["TraceId"], cols["SeverityNumber"]):
                    self.logs[t].append(severity)
                self.messages.insert(max(0, len(self.messages) - 2), ("logs", 2, value))  # logs before their spans
        threshold = probability_to_threshold(0.01)
        self.kept = self.errors | self.slow | {t for t in self.spans if trace_randomness(t) >= threshold}

    def expected_logs(self) -> int:
        return sum(len(sev) if (not t or t in self.kept) else sum(1 for s in sev if s >= 13)
                   for t, sev in self.logs.items())

    async def send(self, settings) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=5,
                                    max_request_size=16 * 1024 * 1024)
        await producer.start()
        try:
            topics = {"traces": settings.kafka.spans_topic, "logs": settings.kafka.logs_topic}
            futures = [await producer.send(topics[s], v, partition=p) for s, p, v in self.messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()


def wait_until_buffered(worker, traces: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (worker.metric("otelpipe_tail_buffered_traces") or 0) < traces:
        time.sleep(0.2)


def check_result(worker, produced: Produced) -> None:
    kept_spans = sum(produced.spans[t] for t in produced.kept)
    worker.wait_for("SELECT count() FROM {db}.otel_traces", kept_spans, timeout_s=180)
    stored = dict(worker.query("SELECT TraceId, count() FROM {db}.otel_traces GROUP BY TraceId"))
    assert set(stored) == produced.kept  # errors, slow traces, and the 1% the base rate picks
    assert all(stored[t] == produced.spans[t] for t in stored)  # whole traces
    assert worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces") == kept_spans  # no duplicate
    summary = worker.query("SELECT count(), uniqExact(TraceId), countIf(Policy = 'errors'), countIf(Policy = 'slow') "
                           "FROM {db}.otel_trace_summary")[0]
    assert summary[0] == summary[1] == len(produced.kept)  # one row per kept trace: decided once
    assert summary[2] == len(produced.errors)
    worker.wait_for("SELECT count() FROM {db}.otel_logs", produced.expected_logs(), timeout_s=60)
    assert worker.scalar("SELECT countIf(TraceDecision = 'keep' AND RootServiceName = '') FROM {db}.otel_logs") == 0


def test_split_out_of_order_traces_are_decided_once(worker_factory):
    produced = Produced(seed=12, steps=60, traces_per_step=5)
    worker = worker_factory(**TAIL).start()
    assert produced.errors and produced.slow and len(produced.kept) < len(produced.spans) / 2
    asyncio.run(produced.send(worker.settings))
    check_result(worker, produced)
    assert worker.metric('otelpipe_tail_decisions_total{decision="keep",reason="wait"}') == len(produced.kept)
    assert worker.metric("otelpipe_tail_buffered_traces") == 0


def test_kill_9_while_traces_are_buffered(worker_factory):
    produced = Produced(seed=13, steps=60, traces_per_step=5)
    worker = worker_factory(**{**TAIL, "OTELPIPE_SAMPLING_DECISION_WAIT_S": "8"}).start()
    asyncio.run(produced.send(worker.settings))
    wait_until_buffered(worker, len(produced.spans) / 2)
    assert worker.scalar("SELECT count() FROM {db}.otel_trace_summary") == 0, "nothing decided yet"
    worker.kill9()
    worker.start()
    check_result(worker, produced)


def test_an_upgrade_from_one_record_per_trace_to_bulk_records_writes_every_trace_once(worker_factory):
    """A buffer of one record per trace (``sampling.tail_bulk = false``, as releases before bulk
    records wrote it) is read by a worker routing in bulk after a kill -9: traces with parts in both
    forms are decided once and written once, whole."""
    produced = Produced(seed=15, steps=60, traces_per_step=5)
    worker = worker_factory(**{**TAIL, "OTELPIPE_SAMPLING_DECISION_WAIT_S": "20",
                               "OTELPIPE_SAMPLING_TAIL_BULK": "false"}).start()
    first, rest = produced.messages[: len(produced.messages) // 2], produced.messages[len(produced.messages) // 2:]
    produced.messages = first
    asyncio.run(produced.send(worker.settings))
    wait_until_buffered(worker, len(produced.spans) / 4)
    assert worker.scalar("SELECT count() FROM {db}.otel_trace_summary") == 0, "nothing decided yet"
    worker.kill9()
    worker.reconfigure(OTELPIPE_SAMPLING_TAIL_BULK="true", OTELPIPE_SAMPLING_DECISION_WAIT_S="2")
    worker.start()
    produced.messages = rest
    asyncio.run(produced.send(worker.settings))
    check_result(worker, produced)


def test_a_100000_span_trace_is_decided_early_and_stays_bounded(worker_factory):
    from tests.otlp_builders import traces_request

    worker = worker_factory(**TAIL, OTELPIPE_SAMPLING_MAX_SPANS_PER_TRACE="5000").start()
    template = traces_request(2000)
    trace_id = template.resource_spans[0].scope_spans[0].spans[0].trace_id
    messages = []
    for m in range(50):
        request = ExportTraceServiceRequest()
        request.CopyFrom(template)
        for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
            span.trace_id = trace_id
            span.span_id = (m * 2000 + i + 1).to_bytes(8, "big")
            span.parent_span_id = b"" if m == i == 0 else (1).to_bytes(8, "big")
            span.status.code = 2 if m == i == 0 else 0  # the root failed: the trace is kept
        messages.append(request.SerializeToString())
    from tests.integration.test_faults import _send

    asyncio.run(_send(worker.settings.kafka.bootstrap_servers, worker.settings.kafka.spans_topic, messages))
    worker.wait_for(f"SELECT count() FROM {{db}}.otel_traces WHERE TraceId = '{trace_id.hex()}'", 100_000,
                    timeout_s=240)
    assert worker.scalar("SELECT uniqExact(SpanId) FROM {db}.otel_traces") == 100_000
    assert (worker.metric('otelpipe_tail_decisions_total{decision="keep",reason="overflow_spans"}') or 0) >= 1
    assert worker.scalar("SELECT count() FROM {db}.otel_trace_summary") >= 1
    rss_kib = int(next(line.split()[1] for line in open(f"/proc/{worker.proc.pid}/status") if line.startswith("VmHWM")))
    assert rss_kib < 1_500_000, f"peak RSS {rss_kib} KiB"


def stored_across(workers) -> Counter:
    """Spans per trace id over every worker's database."""
    out: Counter = Counter()
    for w in workers:
        for trace_id, spans in w.query("SELECT TraceId, count() FROM {db}.otel_traces GROUP BY TraceId") or []:
            out[trace_id] += spans
    return out


def summaries_across(workers) -> Counter:
    """Summary rows per trace id over every worker's database."""
    out: Counter = Counter()
    for w in workers:
        for (trace_id,) in w.query("SELECT TraceId FROM {db}.otel_trace_summary") or []:
            out[trace_id] += 1
    return out


def test_a_rebalance_to_a_second_worker_decides_each_trace_once(worker_factory, tmp_path):
    """A second worker joins while traces are buffered: the partitions it takes are restored from the
    routed topic, and across both workers' databases every kept trace is written once, whole."""
    produced = Produced(seed=14, steps=60, traces_per_step=5)
    first = worker_factory(**{**TAIL, "OTELPIPE_SAMPLING_DECISION_WAIT_S": "6"}).start()
    asyncio.run(produced.send(first.settings))
    wait_until_buffered(first, len(produced.spans) / 2)
    second = first.sibling(tmp_path / "second")
    try:
        second.start()
        kept_spans = sum(produced.spans[t] for t in produced.kept)

        def stored() -> Counter:
            return stored_across((first, second))

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and sum(stored().values()) < kept_spans:
            time.sleep(0.5)
        time.sleep(3)
        spans = stored()
        assert set(spans) == produced.kept
        assert all(spans[t] == produced.spans[t] for t in spans), "a trace written twice or in part"
        summaries = summaries_across((first, second))
        assert set(summaries) == produced.kept and set(summaries.values()) == {1}
        assert second.metric("otelpipe_tail_decisions_total{decision=\"keep\",reason=\"wait\"}") is not None, \
            "the second worker decided some traces"
    finally:
        second.stop()


@pytest.mark.timeout(600)
def test_three_workers_through_rolling_restarts_and_a_kill_write_every_trace_once(worker_factory, tmp_path):
    """Three workers of one group under load, restarted one at a time (twice over) and one of them
    killed mid-round: across their databases every kept trace is written once, whole, and every
    stop finishes promptly (nobody waits past the session timeout)."""
    produced = Produced(seed=23, steps=90, traces_per_step=4)
    first = worker_factory(**{**TAIL, "OTELPIPE_SAMPLING_DECISION_WAIT_S": "3"})
    workers = [first, first.sibling(tmp_path / "w2"), first.sibling(tmp_path / "w3")]
    # Eight chunks sent between restarts, never splitting a trace: a trace's halves sent minutes
    # apart would be decided on its first half (decision_wait_s) and that is another test.
    n = len(produced.messages)
    bounds = [0]
    for k in range(1, 8):
        b = max(k * n // 8, bounds[-1])
        while b < n and produced.messages[b][:2] == ("traces", 0):  # the second half of the trace before it
            b += 1
        bounds.append(b)
    bounds.append(n)
    chunks = [produced.messages[a:b] for a, b in zip(bounds, bounds[1:])]

    async def send(messages) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=first.settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            k = first.settings.kafka
            topics = {"traces": k.spans_topic, "logs": k.logs_topic}
            await asyncio.gather(*[await producer.send(topics[s], v, partition=p) for s, p, v in messages])
        finally:
            await producer.stop()

    try:
        for w in workers:
            w.start()
        asyncio.run(send(chunks[0]))
        stops = []
        for round_ in range(2):
            for i, w in enumerate(workers):
                started = time.monotonic()
                w.stop()
                stops.append(time.monotonic() - started)
                assert w.proc.returncode != -9, "stopped by SIGTERM, not killed"
                asyncio.run(send(chunks[1 + round_ * 3 + i]))
                w.start()
        wait_until_buffered(workers[1], 1, timeout_s=20)
        workers[1].kill9()  # mid-round: the next owner redoes what it had started
        asyncio.run(send(chunks[7]))
        workers[1].start()
        assert max(stops) < first.settings.worker.session_timeout_s * 3, stops

        kept_spans = sum(produced.spans[t] for t in produced.kept)

        def stored() -> Counter:
            return stored_across(workers)

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sum(stored().values()) < kept_spans:
            time.sleep(1)
        time.sleep(5)
        spans = stored()
        assert set(spans) == produced.kept
        assert all(spans[t] == produced.spans[t] for t in spans), "a trace written twice or in part"
        summaries = summaries_across(workers)
        assert set(summaries) == produced.kept and set(summaries.values()) == {1}
    finally:
        for w in workers:
            w.stop()
