"""The label stage alone, in-process: spans per second on a batch of mostly new values.

Decodes 80 messages of the throughput benchmark's workload, applies the default label policy to the
first 40 (the caches warm up), then times it on the other 40 (about 80% of their attribute values
are new), and on those same 40 again (every value seen before).
Run: .venv/bin/python bench/label_stage.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import build_messages  # noqa: E402

from streams.otlp.batch import RawMessage  # noqa: E402
from streams.stages.labels import LabelStage  # noqa: E402
from streams.otlp.decode import decode_messages  # noqa: E402
from streams.stages.label_policy import LabelPolicy  # noqa: E402
from streams.cli.render import format_table  # noqa: E402
from streams.agents.signal_writer import gc_paused  # noqa: E402


def main() -> int:
    payloads, _ = build_messages(80, 42)
    messages = [RawMessage("bench", 0, i, p) for i, p in enumerate(payloads)]
    first = decode_messages("traces", messages[:40]).batches["otel_traces"]
    second = decode_messages("traces", messages[40:]).batches["otel_traces"]
    seen = {v for attrs in first.columns["SpanAttributes"] for v in attrs.values()}
    values = [v for attrs in second.columns["SpanAttributes"] for v in attrs.values()]
    stage = LabelStage(LabelPolicy())
    stage.apply(first)
    rows = []
    for label in ("mostly new values", "values seen before"):
        with gc_paused():
            started = time.process_time()
            stage.apply(second)
            seconds = time.process_time() - started
        rows.append([label, len(second), round(len(second) / seconds)])
    print(format_table(["batch", "spans", "spans per CPU-second"], rows))
    print(f"{sum(v not in seen for v in set(values)) / len(set(values)):.0%} of the batch's distinct values are new")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
