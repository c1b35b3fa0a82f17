"""Tail sampling: end-to-end throughput with it on against off, and memory per buffered trace.

1. Produce a fixed volume of spans (~1000-span OTLP protobuf messages, 12 spans a trace).
2. Throughput: drain it with a fresh worker and consumer group twice, tail sampling off (every span
   stored) and on (default policies, ``decision_wait_s`` = 1), timing from ready until every trace is
   stored (off) or decided (on); figures per worker CPU-second, so the decision wait costs nothing.
   With ``--repeat N`` the pair is drained N times, alternating, and the medians are printed (one
   drain varies by a third between runs on a 2-core machine).
3. Memory: a third worker with ``decision_wait_s`` = 3600 buffers every trace; the growth of its
   resident memory from ready until all traces are buffered, divided by the traces. That worker
   routes too, so its growth holds the router's high-water mark as well; a fourth worker of the same
   group then restores the buffer from the tail topic alone (no routing left to do), and its growth
   from ready until every trace is buffered again is the buffer's own memory.

4. The peer, where Go is present (or a build is cached): the OpenTelemetry Collector (built with
   ocb, streams/tools/collector_build.py TAIL_PEER_COLLECTOR) drains the same topic twice, kafka →
   batch → nop and kafka → tail_sampling (the same policies: errors, a root of 1 s or more, 1%;
   decision_wait 1 s) → batch → nop, each from ready until every span is accepted and its CPU has
   settled after the decision wait; its tail / no-tail ratio is printed beside otelpipe's.

Run: make bench-tail   (or: .venv/bin/python bench/tail_sampling.py --messages 60 [--no-peer])
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peer import collector_config, run_collector  # noqa: E402
from throughput import bench_env, build_messages, cpu_seconds, profile, ready_worker, send, thread_cpu  # noqa: E402

from streams.tools import collector_build  # noqa: E402
from streams.tools.collector_build import TAIL_PEER_VERSION  # noqa: E402

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


def run_worker(env: dict[str, str], log_path: Path, done) -> tuple[float, float, int, int, float, dict]:
    """(wall s, worker CPU s, RSS at ready, RSS at done, traces buffered at ready, details) from ready
    until done(settings) is true; details: CPU seconds per thread and inserts per table."""
    settings = load_settings(env=env)
    with ready_worker(env, log_path) as (worker, proc):
        rss0, cpu0, t0 = proc.memory_info().rss, cpu_seconds(proc), time.monotonic()
        threads0 = thread_cpu(worker.pid)
        at_ready = metric(settings.worker.web_port, "otelpipe_tail_buffered_traces")
        if env.get("OTELPIPE_SAMPLING_DECISION_WAIT_S") == "1":  # the tail-on drain
            profile(worker.pid, "--threads")
        while not done(settings):
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: see {log_path}")
            time.sleep(0.2)
        wall, cpu, rss1 = time.monotonic() - t0, cpu_seconds(proc) - cpu0, proc.memory_info().rss
        threads1 = thread_cpu(worker.pid)
        details = {
            "threads": {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()},
            "inserts": metric(settings.worker.web_port, "otelpipe_insert_duration_seconds_count"),
        }
        return wall, cpu, rss0, rss1, at_ready, details


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60, help="1008-span messages to produce")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--no-peer", action="store_true", help="skip the Collector's drains")
    parser.add_argument("--repeat", type=int, default=1, help="tail off / tail on drains, alternating (medians)")
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
        offs, ons = [], []
        for r in range(args.repeat):  # alternating drains: the medians say what one drain cannot
            offs.append(run_worker(env_for(f"off{r}"), work / f"off{r}.log", all_stored))
            on_env = env_for(f"on{r}", OTELPIPE_SAMPLING_TAIL="true", OTELPIPE_SAMPLING_DECISION_WAIT_S="1")
            created.append(load_settings(env=on_env))
            ons.append(run_worker(on_env, work / f"on{r}.log", all_decided))
        off_cpu, on_cpu = statistics.median(o[1] for o in offs), statistics.median(o[1] for o in ons)
        mem_env = env_for("mem", OTELPIPE_SAMPLING_TAIL="true", OTELPIPE_SAMPLING_DECISION_WAIT_S="3600",
                          OTELPIPE_SAMPLING_DECISION_CACHE_S="3600", OTELPIPE_SAMPLING_MAX_TRACES="1000000")
        created.append(load_settings(env=mem_env))
        mem = run_worker(mem_env, work / "mem.log", all_buffered)
        restored = run_worker(mem_env, work / "restored.log", all_buffered)
        peer, peer_problem = None, "--no-peer"
        if not args.no_peer:
            try:
                peer = peer_ratio(bootstrap, settings.kafka.spans_topic, total_spans, work, tag)
                peer_problem = "no Go and no cached build"
            except (SystemExit, collector_build.CollectorBuildError) as exc:  # otelpipe's figures still print
                peer_problem = str(exc)
    finally:
        extra = [t for s in created for t in (s.tail_topic(), s.state_topic("tail-sampling"),
                                              s.state_topic("series-budget"))]
        asyncio.run(delete_topics(bootstrap, topics + [settings.routed_topic(settings.kafka.metrics_topic)] + extra))
    figures = {
        "spans": total_spans,
        "traces": traces,
        "drains of each (alternating; medians below)": args.repeat,
        "tail off: spans per worker CPU-second": round(total_spans / off_cpu),
        "tail on: spans per worker CPU-second": round(total_spans / on_cpu),
        "tail on / tail off throughput": round(off_cpu / on_cpu, 3),
        "tail on / tail off, each pair": " ".join(f"{o[1] / n[1]:.2f}" for o, n in zip(offs, ons)),
        "tail on: drain wall s (includes the 1 s decision wait)": round(statistics.median(o[0] for o in ons), 1),
        "tail off / tail on: ClickHouse inserts (first pair)": f"{offs[0][5]['inserts']:.0f} / {ons[0][5]['inserts']:.0f}",
        "buffered: resident memory growth MiB": round((mem[3] - mem[2]) / 2**20, 1),
        "buffered: KiB per trace (12 spans)": round((mem[3] - mem[2]) / traces / 1024, 2),
        "restored: resident memory growth MiB": round((restored[3] - restored[2]) / 2**20, 1),
        "restored: KiB per trace": round((restored[3] - restored[2]) / traces / 1024, 2),
        "restored: traces buffered before the growth was measured from": int(restored[4]),
        "payload KiB per trace (OTLP protobuf)": round(sum(map(len, payloads)) / traces / 1024, 2),
    }
    if peer is None:
        figures["the Collector: skipped"] = peer_problem
    else:
        plain, tail = peer
        figures[f"the Collector {TAIL_PEER_VERSION}, tail off: spans per CPU-second"] = round(total_spans / plain)
        figures[f"the Collector {TAIL_PEER_VERSION}, tail on: spans per CPU-second"] = round(total_spans / tail)
        figures["the Collector: tail on / tail off"] = round(plain / tail, 3)
    print(format_table(["figure", "value"], list(figures.items())))
    for name, drain in (("tail off", offs[0]), ("tail on", ons[0])):
        print(f"{name}, CPU seconds by thread (first drain): {_threads(drain[5]['threads'])}")
    return 0


def _threads(cpu: dict[str, float], top: int = 5) -> str:
    ranked = sorted(((v, k) for k, v in cpu.items() if v > 0), reverse=True)
    return ", ".join(f"{k} {v:.2f}" for v, k in ranked[:top])


PEER_TAIL_SAMPLING = """    decision_wait: 1s
    num_traces: 100000
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: slow, type: latency, latency: {threshold_ms: 1000}}
      - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 1}}
"""


def peer_ratio(bootstrap: str, topic: str, total: int, work: Path, tag: str) -> tuple[float, float] | None:
    """(CPU s without tail sampling, CPU s with it) of the Collector on ``topic``, or None without Go."""
    binary = collector_build.cached_binary(collector_build.TAIL_PEER_COLLECTOR)
    if binary is None:
        if collector_build.find_go() is None:
            return None
        print("building the OpenTelemetry Collector (ocb, once; cached) ...", flush=True)
        binary = collector_build.build_collector(collector_build.TAIL_PEER_COLLECTOR)
    out = []
    for tail in (False, True):
        config = work / f"collector-{'tail' if tail else 'plain'}.yaml"
        config.write_text(collector_config(bootstrap, topic, f"otelcol-tail-{tag}-{int(tail)}", 8898,
                                           PEER_TAIL_SAMPLING if tail else ""))
        print(f"the Collector: kafka → {'tail_sampling → ' if tail else ''}batch → nop ...", flush=True)
        out.append(run_collector(binary, config, 8898, total, work / f"{config.stem}.log", 1.5 if tail else 0.5)[1])
    return out[0], out[1]


if __name__ == "__main__":
    raise SystemExit(main())
