"""End-to-end throughput of the worker: Kafka → decode → chDB, measured on the worker process.

1. Produce a fixed volume first: spans in ~1000-span OTLP protobuf messages, ~10 attributes a span.
2. Start `otelpipe run` on a fresh chDB path and wait until it is ready (startup is not counted).
3. Time the drain until every span is in ClickHouse; read the worker's CPU (user+sys) and peak RSS.
4. Decode-only: the same messages through the worker's span decoder (the native core where it is
   built, else `decode_messages`) in this process.

Prints spans/s, spans per worker CPU-second, decode-only spans per CPU-second and peak RSS; the
skeleton and the stages-on configuration drain `--repeat` times each, alternating, and the medians count.
Run: make bench   (or: .venv/bin/python bench/throughput.py --messages 200)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.otlp.batch import RawMessage  # noqa: E402
from streams.cli.common import query_worker  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.tools.kafka_admin import delete_topics, ensure_topics  # noqa: E402
from streams.otlp import native  # noqa: E402
from streams.otlp.columns import METRIC_COLUMNS  # noqa: E402
from streams.otlp.decode import decode_messages  # noqa: E402
from streams.otlp.encode import encode_request  # noqa: E402
from streams.cli.render import format_table  # noqa: E402
from streams.agents.signal_writer import gc_paused  # noqa: E402
from streams.tools.workload import Workload  # noqa: E402


def _gathered(count: int, make: Callable[[], Any], rows: Callable[[Any], int], extend: Callable[[Any, Any], None]
              ) -> tuple[list[bytes], int]:
    """``count`` messages of at least 1000 rows each: requests from ``make`` merged (``extend``)
    until their ``rows`` reach 1000. Returns the payloads and the rows in all."""
    payloads, total = [], 0
    for _ in range(count):
        request = make()
        n = rows(request)
        while n < 1000:
            more = make()
            n += rows(more)
            extend(request, more)
        total += n
        payloads.append(encode_request(request, "otlp_proto"))
    return payloads, total


def build_log_messages(count: int, seed: int, distinct_values: bool = False) -> tuple[list[bytes], int]:
    """``count`` logs messages of ~1000 records: the log records of the span workload's traces
    (bodies, severities, trace context), gathered from as many traces as it takes."""
    workload = (Workload(seed=seed, extra_attributes=1, distinct_values=True) if distinct_values
                else Workload(seed=seed, extra_attributes=5))
    return _gathered(count, lambda: workload.trace_requests(20)[1],
                     lambda r: sum(len(sl.log_records) for rl in r.resource_logs for sl in rl.scope_logs),
                     lambda r, more: r.resource_logs.extend(more.resource_logs))


def build_metric_messages(count: int, seed: int, distinct_values: bool = False) -> tuple[list[bytes], int]:
    """``count`` metrics messages of ~1000 points (gauges, sums, histograms, exponential histograms,
    summaries of every service): the workload's metrics requests, gathered until they hold that many."""
    workload = Workload(seed=seed, extra_attributes=1, distinct_values=distinct_values)
    return _gathered(count, workload.metrics_request,
                     lambda r: sum(len(getattr(m, m.WhichOneof("data")).data_points)
                                   for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics),
                     lambda r, more: r.resource_metrics.extend(more.resource_metrics))


def build_messages(count: int, seed: int, distinct_values: bool = False) -> tuple[list[bytes], int]:
    """``count`` messages of 1008 spans; ``distinct_values``: the high-cardinality workload (request
    ids, end-user ids, full URLs with ids and query strings that no two spans share)."""
    workload = (Workload(seed=seed, extra_attributes=1, distinct_values=True) if distinct_values
                else Workload(seed=seed, extra_attributes=5))
    payloads, spans = [], 0
    for _ in range(count):
        request, _ = workload.trace_requests(84)  # 84 traces x 12 spans = 1008 spans
        spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        payloads.append(encode_request(request, "otlp_proto"))
    return payloads, spans


async def send(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="lz4",
                                max_request_size=16 * 1024 * 1024, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, p, key=str(i).encode()) for i, p in enumerate(payloads)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def bench_env(prefix: str, port: int) -> dict[str, str]:
    """The environment of a benchmark's workers: topics of their own, a fixed web port."""
    return {
        **os.environ,
        "OTELPIPE_KAFKA_SPANS_TOPIC": f"{prefix}_spans",
        "OTELPIPE_KAFKA_LOGS_TOPIC": f"{prefix}_logs",
        "OTELPIPE_KAFKA_METRICS_TOPIC": f"{prefix}_metrics",
        "OTELPIPE_WORKER_WEB_PORT": str(port),
        "OTELPIPE_WORKER_POLICY_TOPIC": f"{prefix}.policy",
        "OTELPIPE_WORKER_CATALOG_TOPIC": f"{prefix}.catalog",
        "OTELPIPE_SAMPLING_CONTROL_TOPIC": f"{prefix}.sampling",
        "OTELPIPE_WORKER_BATCH_WITHIN_S": "0.5",
    }


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (Python threads, chDB's insert and merge pools, ...)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        name = name.rstrip("0123456789_-") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def ready_worker(env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen, psutil.Process]]:
    """`otelpipe run` with this environment, from the moment it answers queries until the block ends."""
    settings = load_settings(env=env)
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "run", "--loglevel", "warning"],
                              cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        while query_worker(settings, "SELECT 1", timeout_s=2) is None:
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: see {log_path}")
            time.sleep(0.05)
        yield worker, psutil.Process(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def profile(pid: int, *extra: str) -> None:
    """With OTELPIPE_BENCH_PROFILE=FILE, record 8 s of the worker with py-spy (raw stacks); a ``{pid}``
    in FILE is replaced by the worker's pid, so that each drain of a run keeps its own profile."""
    if os.environ.get("OTELPIPE_BENCH_PROFILE"):
        subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", "8", "-f", "raw",
                          "-o", os.environ["OTELPIPE_BENCH_PROFILE"].replace("{pid}", str(pid)), "--nonblocking",
                          *extra])


def drain(env: dict[str, str], log_path: Path, total_spans: int, tables: tuple[str, ...] = ("otel_traces",)
          ) -> tuple[float, float, int, int, dict]:
    """Start a worker on fresh state, time it from ready until every span is stored."""
    settings = load_settings(env=env)
    with ready_worker(env, log_path) as (worker, proc):
        cpu0, t0, threads0 = cpu_seconds(proc), time.monotonic(), thread_cpu(worker.pid)
        profile(worker.pid, "--threads")
        db = settings.clickhouse.database
        count_sql = "SELECT " + " + ".join(f"(SELECT count() FROM {db}.{t})" for t in tables)
        while True:
            answer = query_worker(settings, count_sql, timeout_s=30)
            if answer and answer[1][0][0] >= total_spans:
                break
            time.sleep(0.2)  # each poll is a query the worker serves: poll gently
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc) - cpu0
        threads1 = thread_cpu(worker.pid)
        by_thread = {name: round(threads1[name] - threads0.get(name, 0.0), 2) for name in threads1}
        by_thread = {k: v for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1]) if v > 0}
        return wall, cpu, peak_rss_bytes(worker.pid), answer[1][0][0], by_thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=150, help="1000-span messages to produce")
    parser.add_argument("--batch-max-messages", type=int, default=200, help="the worker default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3, help="drains per configuration, alternating; medians")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--distinct-values", action="store_true",
                        help="the high-cardinality workload: most attribute values distinct per span")
    parser.add_argument("--signal", choices=("traces", "logs", "metrics"), default="traces",
                        help="spans (1008 a message), log records or metric points (~1000 a message)")
    parser.add_argument("--compare", choices=("stages", "native"), default=None,
                        help="stages: the skeleton (label policy off) against every stage on (the default for "
                             "spans); native: every stage on, the Python path against the native core (the "
                             "default for logs)")
    args = parser.parse_args()
    compare = args.compare or ("native" if args.signal == "logs" else "stages")
    if args.signal == "metrics" and compare == "native":
        parser.error("metrics have no native path yet: --compare stages")
    native_setting = "OTELPIPE_WORKER_NATIVE_SPANS" if args.signal == "traces" else "OTELPIPE_WORKER_NATIVE_LOGS"
    configs = ([("skeleton (stages off)", {"OTELPIPE_WORKER_LABEL_POLICY": "off"}),
                ("all stages on", {"OTELPIPE_WORKER_LABEL_POLICY": "default"})] if compare == "stages" else
               [("all stages on, Python path", {native_setting: "false"}),
                ("all stages on", {native_setting: "true"})])
    tables = {"traces": ("otel_traces",), "logs": ("otel_logs",), "metrics": tuple(METRIC_COLUMNS)}[args.signal]
    unit = {"traces": "spans", "logs": "log records", "metrics": "metric points"}[args.signal]

    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="otelpipe-bench-"))
    env = {
        **bench_env(f"bench{tag}", port=6077),
        "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{work / 'chdb'}",
        "OTELPIPE_WORKER_APP_ID": f"otelpipe-bench-{tag}",
        "OTELPIPE_WORKER_DATA_DIR": str(work / "worker"),
        "OTELPIPE_WORKER_BATCH_MAX_MESSAGES": str(args.batch_max_messages),
    }
    settings = load_settings(env=env)
    bootstrap = settings.kafka.bootstrap_servers
    topics = settings.source_topics() + [settings.dlq_topic(t) for t in settings.source_topics()]
    asyncio.run(ensure_topics(bootstrap, topics, settings.kafka.partitions))

    print(f"building {args.messages} messages ...", flush=True)
    build = {"traces": build_messages, "logs": build_log_messages, "metrics": build_metric_messages}[args.signal]
    payloads, total_spans = build(args.messages, args.seed, args.distinct_values)
    mib = sum(map(len, payloads)) / 2**20
    print(f"producing {total_spans} {unit} ({mib:.0f} MiB of OTLP protobuf) ...", flush=True)
    topic = {"traces": settings.kafka.spans_topic, "logs": settings.kafka.logs_topic,
             "metrics": settings.kafka.metrics_topic}[args.signal]
    asyncio.run(send(bootstrap, topic, payloads))

    runs = {}
    samples: dict[str, list] = {label: [] for label, _ in configs}
    try:
        # Alternate the two configurations and keep each one's median drain: single drains vary by
        # ±10% on a 2-core machine (chDB merges, the broker), more than the stages cost.
        for round_no in range(args.repeat):
            for number, (label, overrides) in enumerate(configs):
                run_env = {**env, **overrides,
                           "OTELPIPE_WORKER_APP_ID": f"otelpipe-bench-{tag}-{number}-{round_no}",
                           "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{work / f'chdb-{number}-{round_no}'}"}
                samples[label].append(drain(run_env, work / f"worker-{number}-{round_no}.log", total_spans, tables))
                print(f"  {label}: {total_spans / samples[label][-1][1]:,.0f} {unit} per worker CPU-second",
                      flush=True)
        for label, drains in samples.items():
            runs[label] = sorted(drains, key=lambda d: d[1])[len(drains) // 2]  # the median by CPU
    finally:
        asyncio.run(delete_topics(bootstrap, topics))
    wall, cpu, rss, stored, by_thread = runs["all stages on"]
    messages = [RawMessage("bench", 0, i, p) for i, p in enumerate(payloads)]
    c0 = time.process_time()
    with gc_paused():  # as the worker decodes: natively where the core is built
        native_decode = {"traces": native.decode_traces, "logs": native.decode_logs}.get(args.signal)
        decoded = (native_decode(payloads).rows if native.available() and native_decode is not None
                   else decode_messages(args.signal, messages).row_count())
    decode_cpu = time.process_time() - c0

    base_label = configs[0][0]
    skeleton_wall, skeleton_cpu = runs[base_label][0], runs[base_label][1]
    ratio_name = "stages_on_vs_skeleton_throughput" if compare == "stages" else "native_vs_python_path_throughput"
    u = {"traces": "spans", "logs": "records", "metrics": "points"}[args.signal]
    base = "skeleton" if compare == "stages" else "python_path"
    figures = {
        "signal": args.signal,
        u: total_spans,
        f"{base}_{u}_per_worker_cpu_s": round(total_spans / skeleton_cpu),
        ratio_name: round((total_spans / cpu) / (total_spans / skeleton_cpu), 3),
        "stored": stored,
        "drain_wall_s": round(wall, 2),
        "worker_cpu_s (stages on)": round(cpu, 2),
        f"{u}_per_s": round(total_spans / wall),
        f"{u}_per_worker_cpu_s": round(total_spans / cpu),
        f"{base}_{u}_per_s": round(total_spans / skeleton_wall),
        f"decode_only_{u}_per_cpu_s": round(decoded / decode_cpu),
        "worker_peak_rss_mib": round(rss / 2**20),
        "cores": psutil.cpu_count(),
    }
    print(format_table(["figure", "value"], list(figures.items())))
    print(format_table(["worker thread", "CPU s during drain"], list(by_thread.items())))
    figures["cpu_by_thread"] = by_thread
    if compare == "stages":
        print(f"stages cost {(1 - figures[ratio_name]) * 100:.1f}% of end-to-end throughput (target: at most 10%)")
    else:
        print(f"the native core: {figures[ratio_name]:.2f}x the Python path's {unit} per worker CPU-second "
              "(target: at least 2.5x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if stored == total_spans else 1


if __name__ == "__main__":
    sys.exit(main())
