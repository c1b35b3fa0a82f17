"""Tail sampling: end-to-end throughput with it on against off, and memory per buffered trace.

1. Produce a fixed volume of spans (~1000-span OTLP protobuf messages, 12 spans a trace).
2. Throughput: drain it with a fresh worker and consumer group twice, tail sampling off (every span
   stored) and on (default policies, ``decision_wait_s`` = 1), timing from ready until every trace is
   stored (off) or decided (on); figures per worker CPU-second, so the decision wait costs nothing.
3. Memory: a third worker with ``decision_wait_s`` = 3600 buffers every trace; the growth of its
   resident memory from ready until all traces are buffered, divided by the traces. That worker
   routes too, so its growth holds the router's high-water mark as well; a fourth worker of the same
   group then restores the buffer from the tail topic alone (no routing left to do), and its growth
   from ready until every trace is buffered again is the buffer's own memory.

Run: make bench-tail   (or: .venv/bin/python bench/tail_sampling.py --messages 60)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import bench_env, build_messages, cpu_seconds, profile, ready_worker, send  # noqa: E402

from streams.cli.common import query_worker  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.tools.kafka_admin import delete_topics, ensure_topics  # noqa: E402
from streams.cli.render import format_table  # noqa: E402


def metric(port: int, name: str) -> float:
    import urllib.request

    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
    return total


def run_worker(env: dict[str, str], log_path: Path, done) -> tuple[float, float, int, int, float]:
    """(wall s, worker CPU s, RSS at ready, RSS at done, traces buffered at ready) from ready until
    done(settings) is true."""
    settings = load_settings(env=env)
    with ready_worker(env, log_path) as (worker, proc):
        rss0, cpu0, t0 = proc.memory_info().rss, cpu_seconds(proc), time.monotonic()
        at_ready = metric(settings.worker.web_port, "otelpipe_tail_buffered_traces")
        if env.get("OTELPIPE_SAMPLING_DECISION_WAIT_S") == "1":  # the tail-on drain
            profile(worker.pid)
        while not done(settings):
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: see {log_path}")
            time.sleep(0.2)
        return time.monotonic() - t0, cpu_seconds(proc) - cpu0, rss0, proc.memory_info().rss, at_ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60, help="1008-span messages to produce")
    parser.add_argument("--seed", type=int, default=43)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="otelpipe-bench-tail-"))
    base = bench_env(f"benchtail{tag}", port=6078)
    settings = load_settings(env=base)
    bootstrap = settings.kafka.bootstrap_servers
    topics = settings.source_topics() + [settings.dlq_topic(t) for t in settings.source_topics()]
    asyncio.run(ensure_topics(bootstrap, topics, settings.kafka.partitions))
    print(f"building {args.messages} messages ...", flush=True)
    payloads, total_spans = build_messages(args.messages, args.seed)
    traces = args.messages * 84
    print(f"producing {total_spans} spans in {traces} traces ...", flush=True)
    asyncio.run(send(bootstrap, settings.kafka.spans_topic, payloads))

    def env_for(name: str, **extra: str) -> dict[str, str]:
        return {**base, "OTELPIPE_WORKER_APP_ID": f"otelpipe-bench-{tag}-{name}",
                "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{work / ('chdb-' + name)}",
                "OTELPIPE_WORKER_DATA_DIR": str(work / name), **extra}

    def all_stored(s) -> bool:
        answer = query_worker(s, f"SELECT count() FROM {s.clickhouse.database}.otel_traces", timeout_s=30)
        return bool(answer) and answer[1][0][0] >= total_spans

    def all_decided(s) -> bool:
        return metric(s.worker.web_port, "otelpipe_tail_decisions_total{decision=") >= traces

    def all_buffered(s) -> bool:
        return metric(s.worker.web_port, "otelpipe_tail_buffered_traces") >= traces

    created = []
    try:
        off = run_worker(env_for("off"), work / "off.log", all_stored)
        on_env = env_for("on", OTELPIPE_SAMPLING_TAIL="true", OTELPIPE_SAMPLING_DECISION_WAIT_S="1")
        created.append(load_settings(env=on_env))
        on = run_worker(on_env, work / "on.log", all_decided)
        mem_env = env_for("mem", OTELPIPE_SAMPLING_TAIL="true", OTELPIPE_SAMPLING_DECISION_WAIT_S="3600",
                          OTELPIPE_SAMPLING_DECISION_CACHE_S="3600", OTELPIPE_SAMPLING_MAX_TRACES="1000000")
        created.append(load_settings(env=mem_env))
        mem = run_worker(mem_env, work / "mem.log", all_buffered)
        restored = run_worker(mem_env, work / "restored.log", all_buffered)
    finally:
        extra = [t for s in created for t in (s.tail_topic(), s.state_topic("tail-sampling"),
                                              s.state_topic("series-budget"))]
        asyncio.run(delete_topics(bootstrap, topics + [settings.routed_topic(settings.kafka.metrics_topic)] + extra))
    figures = {
        "spans": total_spans,
        "traces": traces,
        "tail off: spans per worker CPU-second": round(total_spans / off[1]),
        "tail on: spans per worker CPU-second": round(total_spans / on[1]),
        "tail on / tail off throughput": round(off[1] / on[1], 3),
        "tail on: drain wall s (includes the 1 s decision wait)": round(on[0], 1),
        "buffered: resident memory growth MiB": round((mem[3] - mem[2]) / 2**20, 1),
        "buffered: KiB per trace (12 spans)": round((mem[3] - mem[2]) / traces / 1024, 2),
        "restored: resident memory growth MiB": round((restored[3] - restored[2]) / 2**20, 1),
        "restored: KiB per trace": round((restored[3] - restored[2]) / traces / 1024, 2),
        "restored: traces buffered before the growth was measured from": int(restored[4]),
        "payload KiB per trace (OTLP protobuf)": round(sum(map(len, payloads)) / traces / 1024, 2),
    }
    print(format_table(["figure", "value"], list(figures.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
