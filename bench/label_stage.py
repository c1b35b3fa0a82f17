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

from streams.otlp.batch import ColumnBatch, RawMessage  # noqa: E402
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
    print()
    print(adversarial_table())
    return 0


ADVERSARIAL = {  # values built to make a backtracking detector quadratic
    "letters then @": lambda n: "a" * n + "@",
    "a@ then a. repeated": lambda n: "a@" + "a." * (n // 2),
    "digits and spaces": lambda n: "1 " * (n // 2),
    "BEARER then token": lambda n: "BEARER " + "x" * n,
}


def adversarial_table() -> str:
    """CPU seconds of the label stage on one attribute value of 40 KB and of 1 MB: linear detectors
    take ~25x longer on the 25x longer value, quadratic ones ~625x."""
    rows = []
    for name, make in ADVERSARIAL.items():
        times = []
        for n in (40_000, 1_000_000):
            stage = LabelStage(LabelPolicy())  # no memo of the value
            batch = ColumnBatch("otel_traces", {"SpanName": ["GET /"], "SpanAttributes": [{"note": make(n)}],
                                                "ResourceAttributes": [{"service.name": "svc"}],
                                                "Events.Attributes": [()], "Links.Attributes": [()]})
            started = time.process_time()
            stage.apply(batch)
            times.append(time.process_time() - started)
        rows.append([name, f"{times[0]:.4f}", f"{times[1]:.4f}", f"{times[1] / max(times[0], 1e-6):.1f}"])
    return format_table(["adversarial value", "40 KB (s)", "1 MB (s)", "1 MB / 40 KB"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
