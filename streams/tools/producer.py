"""Send the synthetic workload (or any OTLP requests) to the source topics."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import orjson
from aiokafka import AIOKafkaProducer

from streams.config import Settings
from streams.otlp.encode import CONTENT_TYPES, encode_request
from streams.tools.kafka_clients import connect_args
from streams.tools.workload import Workload, WorkloadSummary


def topic_for(settings: Settings, signal: str) -> str:
    return {"traces": settings.kafka.spans_topic, "logs": settings.kafka.logs_topic,
            "metrics": settings.kafka.metrics_topic}[signal]


async def produce_workload(
    settings: Settings,
    messages: int,
    traces_per_message: int = 5,
    seed: int = 7,
    encoding: str = "otlp_proto",
    rate: float = 0.0,
    duration_s: float = 0.0,
    extra_attributes: int = 0,
    start_ns: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> WorkloadSummary:
    """Produce ``messages`` steps (or until ``duration_s``), at most ``rate`` steps a second."""
    workload = Workload(seed=seed, extra_attributes=extra_attributes,
                        start_ns=start_ns if start_ns is not None else time.time_ns() - 3_600_000_000_000)
    producer = AIOKafkaProducer(
        **connect_args(settings.kafka),
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=5,
        max_request_size=settings.record_max_bytes(),
    )
    await producer.start()
    headers = [("content-type", CONTENT_TYPES[encoding])]
    started = time.monotonic()
    steps = messages if messages > 0 else 10**12
    try:
        pending = []
        for step, (signal, key, request) in enumerate(workload.requests(steps, traces_per_message)):
            pending.append(await producer.send(topic_for(settings, signal), encode_request(request, encoding),
                                               key=key or None, headers=headers))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
            if on_progress:
                on_progress(1)
            elapsed = time.monotonic() - started
            if duration_s and elapsed >= duration_s:
                break
            if rate > 0:
                ahead = step / rate - elapsed
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return workload.summary


# ------------------------------------------------------------------ files

SIGNAL_KEYS = {
    "resourceSpans": "traces", "resource_spans": "traces",
    "resourceLogs": "logs", "resource_logs": "logs",
    "resourceMetrics": "metrics", "resource_metrics": "metrics",
}


class FileProblem(ValueError):
    pass


def _signal_from_name(path: str) -> str | None:
    name = path.lower()
    for hint, signal in (("span", "traces"), ("trace", "traces"), ("log", "logs"), ("metric", "metrics")):
        if hint in name:
            return signal
    return None


def read_otlp_file(path: str, signal: str | None = None) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """An OTLP file → ([(signal, encoding, payload)], problems).

    JSON lines, as the Collector's file exporter writes them (one export request per line; the
    signal is read from each line's top-level key), or protobuf: requests each prefixed by their
    length as a 4-byte big-endian integer (the file exporter's ``proto`` format), or one bare
    request. Protobuf does not name its signal: pass ``signal`` or put traces/spans, logs or
    metrics in the file name. Bad lines are reported with their numbers; the good ones still go.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip()[:1] == b"{":
        out, problems = [], []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON: {exc}")
                continue
            found = [SIGNAL_KEYS[k] for k in obj if k in SIGNAL_KEYS] if isinstance(obj, dict) else []
            if len(set(found)) != 1:
                problems.append(f"{path}:{number}: expected one of resourceSpans, resourceLogs, resourceMetrics")
                continue
            out.append((found[0], "otlp_json", line.strip()))
        return out, problems

    signal = signal or _signal_from_name(path)
    if signal is None:
        raise FileProblem(f"{path}: protobuf does not say which signal it holds: pass --signal traces|logs|metrics")
    payloads, offset = [], 0
    while offset + 4 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if offset + 4 + size > len(data):
            break
        payloads.append(data[offset + 4: offset + 4 + size])
        offset += 4 + size
    if offset != len(data) or not payloads:
        payloads = [data]  # not length-prefixed: one bare request
    return [(signal, "otlp_proto", p) for p in payloads], []


async def produce_file(settings: Settings, path: str, signal: str | None = None) -> tuple[dict[str, int], list[str]]:
    items, problems = read_otlp_file(path, signal)
    limit = settings.record_max_bytes()
    producer = AIOKafkaProducer(**connect_args(settings.kafka), acks="all",
                                enable_idempotence=True, compression_type="lz4", max_request_size=limit)
    await producer.start()
    sent: dict[str, int] = {}
    try:
        futures = []
        for n, (sig, encoding, payload) in enumerate(items, 1):
            if len(payload) > settings.worker.max_message_bytes:
                problems.append(f"{path}: request {n} is {len(payload)} bytes, over worker.max_message_bytes "
                                f"({settings.worker.max_message_bytes}); not sent")
                continue
            futures.append(await producer.send(topic_for(settings, sig), payload,
                                               headers=[("content-type", CONTENT_TYPES[encoding])]))
            sent[sig] = sent.get(sig, 0) + 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent, problems
