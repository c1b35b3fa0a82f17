"""Rebalances that used to hang a worker or write a row twice, over the real broker and chDB."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from streams.tools.producer import produce_workload

SPANS = "SELECT count() FROM {db}.otel_traces"
DISTINCT_SPANS = "SELECT uniqExact(TraceId, SpanId) FROM {db}.otel_traces"


def throttle_inserts(chdb_path: str, database: str) -> None:
    """Make every insert into otel_traces fail with TOO_MANY_PARTS (retryable), as a ClickHouse
    that is up but refusing writes would. In a process of its own: chDB opens one path per process
    (this one may hold another already), and the worker must be stopped."""
    code = ("import clickhouse_connect, sys\n"
            "c = clickhouse_connect.get_client(interface='chdb', path=sys.argv[1])\n"
            "c.command(f'ALTER TABLE {sys.argv[2]}.otel_traces MODIFY SETTING parts_to_throw_insert = 1, '\n"
            "          'parts_to_delay_insert = 1, max_delay_to_insert = 1')\n"
            "c.close()\n")
    subprocess.run([sys.executable, "-c", code, chdb_path, database], check=True, timeout=120)


def test_a_revoke_while_the_writer_is_blocked_mid_batch_does_not_wait_for_it(worker_factory, tmp_path):
    blocked = worker_factory().start()
    first = asyncio.run(produce_workload(blocked.settings, messages=10, traces_per_message=3, seed=40))
    blocked.wait_for(SPANS, first.spans)
    blocked.stop()
    throttle_inserts(blocked.settings.clickhouse.dsn[len("chdb://"):], blocked.settings.clickhouse.database)
    # Worker A now takes a batch and retries its insert forever: its messages stay unacked.
    blocked.start()
    summary = asyncio.run(produce_workload(blocked.settings, messages=60, traces_per_message=3, seed=41))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (blocked.metric('otelpipe_write_retries_total{signal="traces"}') or 0) < 2:
        time.sleep(0.5)
    assert blocked.metric('otelpipe_writer_blocked{signal="traces"}') == 1
    # Worker B joins the group: the rebalance revokes A's partitions. A revoke that waited for A's
    # unacked messages would stall the whole group (B included) until A's inserts succeeded.
    healthy = blocked.sibling(tmp_path / "b").start()
    started = time.monotonic()
    while time.monotonic() - started < 60 and not (healthy.scalar(SPANS) or 0):
        time.sleep(0.5)
    assert healthy.scalar(SPANS) > 0, "the rebalance completed and B writes its partitions"
    assert blocked.proc.poll() is None, "A is still up, still retrying"
    # A stops promptly (SIGTERM, no kill needed); B then takes every partition and writes once all
    # that A had not acked (the first workload A stored and committed before the throttling).
    stopping = time.monotonic()
    blocked.proc.terminate()
    blocked.proc.wait(timeout=25)
    assert time.monotonic() - stopping < 25
    healthy.wait_for(SPANS, summary.spans, timeout_s=120)
    assert healthy.scalar(DISTINCT_SPANS) == summary.spans
