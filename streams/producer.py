"""Send the synthetic workload (or any OTLP requests) to the source topics."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiokafka import AIOKafkaProducer

from streams.config import Settings
from streams.otlp_encode import CONTENT_TYPES, encode_request
from streams.workload import Workload, WorkloadSummary


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
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=5,
        max_request_size=20 * 1024 * 1024,
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
