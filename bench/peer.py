"""otelpipe beside the OpenTelemetry Collector on the same Kafka data, in one run.

1. Build (or find, cached outside the tree) a Collector with ocb from the Go module proxy: kafka
   receiver, batch processor, nop exporter (streams/tools/collector_build.py).
2. Produce the throughput benchmark's spans (~1000-span OTLP protobuf messages) to a fresh topic.
3. The Collector: kafka receiver → batch → nop, a consumer group of its own, from the earliest
   offset; its CPU (user+sys) is read from the moment it answers until its own metrics say every
   span was accepted.
4. otelpipe: `otelpipe run` with every stage on, into chDB, on the same topic (its CPU from ready
   until every span is stored), as `bench/throughput.py` drains it.
Prints spans per CPU-second of each, the ratio, and peak RSS. Skipped, saying why, where Go is
missing and no Collector is cached.
Run: make bench-peer   (or: .venv/bin/python bench/peer.py --messages 150)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import bench_env, build_messages, cpu_seconds, drain, peak_rss_bytes, send  # noqa: E402

from streams.cli.render import format_table  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.tools import collector_build  # noqa: E402
from streams.tools.kafka_admin import delete_topics, ensure_topics  # noqa: E402

_ACCEPTED = re.compile(r'^otelcol_receiver_accepted_spans(?:_total)?\{[^}]*\}\s+([0-9.e+]+)', re.M)


def collector_config(bootstrap: str, topic: str, group: str, metrics_port: int, tail_sampling: str = "") -> str:
    """kafka receiver → batch → nop; with ``tail_sampling`` (the processor's settings, YAML indented
    under it) a tail_sampling processor before batch."""
    tail = f"  tail_sampling:\n{tail_sampling}" if tail_sampling else ""
    processors = "[tail_sampling, batch]" if tail_sampling else "[batch]"
    return f"""receivers:
  kafka:
    brokers: ["{bootstrap}"]
    group_id: {group}
    initial_offset: earliest
    traces:
      topics: ["{topic}"]
      encoding: otlp_proto
processors:
  batch: {{}}
{tail}exporters:
  nop: {{}}
service:
  telemetry:
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {metrics_port}
  pipelines:
    traces:
      receivers: [kafka]
      processors: {processors}
      exporters: [nop]
"""


def accepted_spans(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return sum(float(v) for v in _ACCEPTED.findall(text))


def run_collector(binary: Path, config: Path, port: int, total: int, log: Path,
                  settle_after_s: float | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of the Collector from ready until every span is accepted;
    with ``settle_after_s``, until that long after and then its CPU has stopped moving (under 10 ms
    in half a second): a tail sampling processor decides after its wait."""
    proc = subprocess.Popen([str(binary), "--config", str(config)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    try:
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while accepted_spans(port) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Collector did not start: see {log}")
            time.sleep(0.05)
        cpu0, t0 = cpu_seconds(ps), time.monotonic()
        deadline = time.monotonic() + 600
        while (accepted_spans(port) or 0) < total:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Collector stopped before accepting every span: see {log}")
            time.sleep(0.1)
        if settle_after_s is not None:
            time.sleep(settle_after_s)
            last = cpu_seconds(ps)
            while True:
                time.sleep(0.5)
                now = cpu_seconds(ps)
                if now - last < 0.01:
                    break
                last = now
        return time.monotonic() - t0, cpu_seconds(ps) - cpu0, peak_rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=150, help="1000-span messages to produce")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    binary = collector_build.cached_binary(collector_build.OTELPIPE_COLLECTOR)
    if binary is None:
        if collector_build.find_go() is None:
            print("skipped: Go is not installed and no Collector is cached (see streams/tools/collector_build.py)")
            return 0
        binary = collector_build.build_collector(collector_build.OTELPIPE_COLLECTOR)

    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="otelpipe-peer-"))
    env = {
        **bench_env(f"peer{tag}", port=6078),
        "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{work / 'chdb'}",
        "OTELPIPE_WORKER_APP_ID": f"otelpipe-peer-{tag}",
        "OTELPIPE_WORKER_DATA_DIR": str(work / "worker"),
        "OTELPIPE_WORKER_LABEL_POLICY": "default",
    }
    settings = load_settings(env=env)
    bootstrap = settings.kafka.bootstrap_servers
    topics = settings.source_topics() + [settings.dlq_topic(t) for t in settings.source_topics()]
    asyncio.run(ensure_topics(bootstrap, topics, settings.kafka.partitions))
    try:
        print(f"building {args.messages} messages ...", flush=True)
        payloads, total = build_messages(args.messages, args.seed)
        print(f"producing {total} spans ({sum(map(len, payloads)) / 2**20:.0f} MiB of OTLP protobuf) ...", flush=True)
        asyncio.run(send(bootstrap, settings.kafka.spans_topic, payloads))

        config = work / "collector.yaml"
        config.write_text(collector_config(bootstrap, settings.kafka.spans_topic, f"otelcol-peer-{tag}", 8899))
        print("the Collector: kafka receiver → batch → nop ...", flush=True)
        c_wall, c_cpu, c_rss = run_collector(binary, config, 8899, total, work / "collector.log")
        print("otelpipe: every stage on → chDB ...", flush=True)
        o_wall, o_cpu, o_rss, stored, _ = drain(env, work / "worker.log", total)
    finally:
        asyncio.run(delete_topics(bootstrap, topics))

    collector_rate, otelpipe_rate = total / c_cpu, total / o_cpu
    rows = [
        ["OpenTelemetry Collector " + collector_build.CONTRIB_VERSION + ": kafka → batch → nop",
         f"{collector_rate:,.0f}", f"{total / c_wall:,.0f}", f"{c_rss / 2**20:.0f}"],
        ["otelpipe, every stage on → chDB", f"{otelpipe_rate:,.0f}", f"{total / o_wall:,.0f}", f"{o_rss / 2**20:.0f}"],
    ]
    print(format_table(["pipeline", "spans per CPU-second", "spans per second", "peak RSS MiB"], rows))
    print(f"otelpipe / Collector, spans per CPU-second: {otelpipe_rate / collector_rate:.3f}x "
          f"({total:,} spans; target >= 0.25x)")
    return 0 if stored == total else 1


if __name__ == "__main__":
    sys.exit(main())
