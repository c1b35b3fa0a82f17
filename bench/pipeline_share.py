"""The pipeline's own share: spans (log records) per CPU-second of decode + every stage + encode, in-process.

What the worker does to a batch of span (``--signal logs``: log) messages before ClickHouse's own insert work, on the same
messages both ways, no broker and no ClickHouse:

- Python: ``Stages.run`` with the native core off (the Python decoder on the protobuf library, head sampling,
  the label stage, the catalog) and clickhouse-connect's Native serialization of the batch's columns
  (what ``client.insert`` does before sending);
- native: ``Stages.run`` with the native core (``streams.stages.native_stages``) and the batch's
  Native bytes (what ``client.raw_insert`` sends).

Stages on as in the worker's defaults: the default label policy (redaction, URL and span name
templating), a service catalog, and head sampling at ``--head-rate`` (1: every span kept, weights
untouched, as by default). Two workloads: the throughput benchmark's (~1008 spans per message, ~10
attributes a span, values that repeat) and a high-cardinality one (request ids, end-user ids,
full URLs with ids and query strings: values no two spans share). Each batch is ``--batch``
messages, as the worker's; every run starts with fresh stages (nothing memoised from the last run).

Each figure is the median of ``--repeat`` runs of CPU time (user+sys of this process).
Run: .venv/bin/python bench/pipeline_share.py [--messages 40] [--batch 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from native_decode import clickhouse_connect_serializer, cpu_seconds  # noqa: E402
from throughput import build_log_messages, build_messages  # noqa: E402

from streams.cli.render import format_table  # noqa: E402
from streams.otlp import native  # noqa: E402
from streams.otlp.batch import RawMessage  # noqa: E402
from streams.otlp.native import NativeBatch  # noqa: E402
from streams.stages.catalog import CatalogEntry, CatalogStage  # noqa: E402
from streams.stages.label_policy import LabelPolicy  # noqa: E402
from streams.stages.labels import LabelStage  # noqa: E402
from streams.stages.pipeline import Stages  # noqa: E402
from streams.stages.sampling import HeadRates, HeadSampler  # noqa: E402

CATALOG = {name: CatalogEntry(name, f"team-{name}", "1", "owner") for name in ("frontend", "checkout", "payment")}


def distinct_messages(count: int, seed: int) -> tuple[list[bytes], int]:
    return build_messages(count, seed, distinct_values=True)


def distinct_log_messages(count: int, seed: int) -> tuple[list[bytes], int]:
    return build_log_messages(count, seed, distinct_values=True)


TABLES = {"traces": "otel_traces", "logs": "otel_logs"}


def make_stages(native_spans: bool, head_rate: float) -> Stages:
    return Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, LabelStage(LabelPolicy()), CatalogStage(CATALOG),
                  head=HeadSampler(HeadRates(head_rate)), clock=lambda: 2_000_000_000.0, native_spans=native_spans,
                  native_logs=native_spans)


def measure(payloads: list[bytes], batch: int, repeat: int, head_rate: float,
            signal: str = "traces") -> tuple[float, float, int]:
    """(Python CPU s, native CPU s, rows kept) for every message, ``batch`` messages at a time."""
    messages = [RawMessage("bench", 0, i, p) for i, p in enumerate(payloads)]
    runs = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    serialize = clickhouse_connect_serializer(TABLES[signal])

    def python_path() -> int:
        stages, rows = make_stages(False, head_rate), 0
        for run in runs:
            out = stages.run(signal, run).batches[TABLES[signal]]
            serialize(out.insert_columns(), out.column_names)
            rows += len(out)
        return rows

    def native_path() -> int:
        stages, rows = make_stages(True, head_rate), 0
        for run in runs:
            out = stages.run(signal, run).batches[TABLES[signal]]
            assert isinstance(out, NativeBatch)
            out.native()
            rows += len(out)
        return rows

    kept = python_path()
    assert native_path() == kept, "the two paths kept other rows"
    return cpu_seconds(python_path, repeat), cpu_seconds(native_path, repeat), kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40, help="messages of ~1008 spans per workload (default 40)")
    parser.add_argument("--batch", type=int, default=20, help="messages per batch (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the median counts (default 5)")
    parser.add_argument("--head-rate", type=float, default=1.0, help="head sampling rate (default 1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--signal", choices=("traces", "logs"), default="traces")
    args = parser.parse_args(argv)
    unit = "spans" if args.signal == "traces" else "log records"
    builders = ((build_messages, distinct_messages) if args.signal == "traces"
                else (build_log_messages, distinct_log_messages))
    if not native.available():
        print("streams.otlp._native is not built (pip install -e . with cargo available)", file=sys.stderr)
        return 2
    rows = []
    for label, build in zip(("repeating values", "high cardinality"), builders):
        payloads, spans = build(args.messages, args.seed)
        python_s, native_s, kept = measure(payloads, args.batch, args.repeat, args.head_rate, args.signal)
        rows.append([label, f"{spans:,}", f"{kept:,}", f"{spans / python_s:,.0f}", f"{spans / native_s:,.0f}",
                     f"{python_s / native_s:.2f}x"])
    print(f"decode + stages (default policy, catalog, head rate {args.head_rate:g}) + Native encoding, "
          f"{args.batch} messages a batch; medians of {args.repeat} runs; {unit} per CPU-second")
    print(format_table(["workload", unit, "kept", "Python path", "native core", "native / Python"], rows))
    if args.signal == "traces":
        print("target: >= 300,000 spans per CPU-second (native core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
