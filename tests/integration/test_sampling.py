"""Head sampling in a running worker: whole traces kept or dropped, weights that estimate the true
count, logs that follow their traces, and rates changed at runtime through the control topic."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from collections import Counter

from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.tools.producer import produce_workload
from streams.stages.sampling import HeadRates, HeadSampler
from streams.tools.workload import Workload
from tests.integration.test_used_by import cli

START_NS = 1_764_000_000_000_000_000


def expected_rows(seed: int, messages: int, traces_per_message: int, rate: float):
    """The produced workload regenerated here, and the spans per trace that rate keeps."""
    workload = Workload(seed=seed, start_ns=START_NS)
    spans, logs = Counter(), []
    for signal, _, request in workload.requests(messages, traces_per_message):
        if signal == "traces":
            batch = decode_messages("traces", [RawMessage("t", 0, 0, request.SerializeToString())]).batches["otel_traces"]
            spans.update(batch.columns["TraceId"])
        elif signal == "logs":
            batch = decode_messages("logs", [RawMessage("l", 0, 0, request.SerializeToString())]).batches["otel_logs"]
            logs.extend(zip(batch.columns["TraceId"], batch.columns["SeverityNumber"]))
    sampler = HeadSampler(HeadRates(rate))
    kept = {t for t in spans if sampler.threshold("x") <= int(t[-14:], 16)}
    return spans, kept, logs, workload.summary


def test_head_sampling_keeps_whole_traces_and_weights_estimate_the_total(worker_factory):
    worker = worker_factory(OTELPIPE_SAMPLING_HEAD_RATE="0.2").start()
    spans, kept, logs, summary = expected_rows(seed=8, messages=150, traces_per_message=4, rate=0.2)
    asyncio.run(produce_workload(worker.settings, messages=150, traces_per_message=4, seed=8, start_ns=START_NS))
    kept_spans = sum(spans[t] for t in kept)
    worker.wait_for("SELECT count() FROM {db}.otel_traces", kept_spans)

    stored = dict(worker.query("SELECT TraceId, count() FROM {db}.otel_traces GROUP BY TraceId"))
    assert set(stored) == kept and all(stored[t] == spans[t] for t in kept)  # whole traces, exactly these
    estimate = worker.scalar("SELECT sum(SampleWeight) FROM {db}.otel_traces")
    assert abs(estimate - summary.spans) / summary.spans < 0.15, (estimate, summary.spans)
    assert worker.scalar("SELECT countIf(TraceState != 'ot=th:cccd') FROM {db}.otel_traces") == 0
    # the rollup behind `otelpipe services` and `otelpipe slo` estimates the same way, not count()
    rollup = worker.query("SELECT sum(Spans), sum(EstimatedSpans) FROM {db}.otel_traces_rollup_1m")[0]
    assert rollup[0] == kept_spans and rollup[1] == pytest.approx(estimate)

    # logs: those of kept traces, every WARN and above, every log without a trace id
    expected_logs = [(t, s) for t, s in logs if not t or s >= 13 or t in kept]
    worker.wait_for("SELECT count() FROM {db}.otel_logs", len(expected_logs))
    assert worker.scalar("SELECT countIf(SeverityNumber < 13 AND TraceId != '' AND TraceId NOT IN "
                         "(SELECT TraceId FROM {db}.otel_traces)) FROM {db}.otel_logs") == 0
    assert worker.metric('otelpipe_stage_changes_total{reason="head_dropped_span",stage="sampling"}') == \
        summary.spans - kept_spans

    # a runtime rate through the control topic reaches the running worker within seconds
    result = cli(worker, "sampling", "set", "1")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not worker.metric('otelpipe_sampling_updates_total{outcome="applied"}'):
        time.sleep(0.5)
    more = asyncio.run(produce_workload(worker.settings, messages=20, traces_per_message=4, seed=9,
                                        start_ns=START_NS + 10**12))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", kept_spans + more.spans)
    shown = cli(worker, "sampling", "show", "--format", "json")
    default = next(row for row in json.loads(shown.stdout) if row["service"] == "* (default)")
    assert (default["configured"], default["runtime"], default["effective"]) == ("0.2", "1.0", "1 (th:0)")
    assert cli(worker, "sampling", "set", "0").returncode == 2  # refused: not a probability
