"""`otelpipe dlq show` lists dead letters with their reasons; `otelpipe dlq replay` feeds them back
after a fix, each once."""

from __future__ import annotations

import asyncio
import json

from tests.integration.test_faults import _send
from tests.integration.test_used_by import cli
from tests.otlp_builders import traces_request


def test_dead_letters_listed_then_refed_after_a_fix(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_MAX_MESSAGE_BYTES="4000").start()
    big = [traces_request(20) for _ in range(3)]  # over the 4000-byte limit
    for n, request in enumerate(big):
        for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
            span.span_id = bytes([n + 1]) + i.to_bytes(7, "big")
    small = traces_request(2)
    asyncio.run(_send(worker.settings.kafka.bootstrap_servers, worker.settings.kafka.spans_topic,
                      [r.SerializeToString() for r in big] + [small.SerializeToString()]))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", 2)

    shown = cli(worker, "dlq", "show", "--signal", "traces", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    letters = json.loads(shown.stdout)
    assert len(letters) == 3 and {letter["reason"] for letter in letters} == {"too_large"}
    assert all(letter["source"].startswith(worker.settings.kafka.spans_topic) for letter in letters)

    # The fix: a larger limit. Then the letters go back to the source topic and land.
    worker.stop()
    worker.reconfigure(OTELPIPE_WORKER_MAX_MESSAGE_BYTES=str(1 << 20)).start()
    refed = cli(worker, "dlq", "replay", "--signal", "traces")
    assert refed.returncode == 0, refed.stderr
    assert worker.settings.kafka.spans_topic in refed.stdout and "│        3 │" in refed.stdout
    worker.wait_for("SELECT count() FROM {db}.otel_traces", 2 + 60)
    again = cli(worker, "dlq", "replay", "--signal", "traces")
    assert "│        3 │" not in again.stdout  # each letter is fed back once
    assert worker.scalar("SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces") == 62
