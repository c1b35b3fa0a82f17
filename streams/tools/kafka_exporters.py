"""OpenTelemetry Python SDK exporters that write OTLP protobuf straight to otelpipe's Kafka topics.

Install with ``pip install 'otelpipe[sdk]'`` and plug into the SDK like any exporter::

    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from streams.tools.kafka_exporters import KafkaSpanExporter
    provider.add_span_processor(BatchSpanProcessor(KafkaSpanExporter("kafka:9092")))

- Spans and logs are grouped by trace id and sent one request per trace with the trace id as the
  Kafka key, so every span and log of a trace lands in one partition (as the Collector's
  ``partition_traces_by_id``). Logs without a trace id go as one request, unkeyed.
- Metrics go as one request per export.
- Messages are lz4-compressed, acknowledged by all in-sync replicas, and ``export`` returns only
  when the broker has them (or fails after ``timeout_s``), so the SDK's batch processors see
  real success or failure.

The exporters share one aiokafka producer running on a background event-loop thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any, Sequence

from aiokafka import AIOKafkaProducer
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from streams.tools.kafka_clients import Target, connect_args

CONTENT_TYPE = [("content-type", b"application/x-protobuf")]


class KafkaOtlpProducer:
    """A started aiokafka producer on its own event-loop thread, usable from any thread.

    ``bootstrap_servers``: a bootstrap string (plaintext), or otelpipe's ``KafkaSettings``
    (``load_settings().kafka``) for SASL and TLS as the rest of otelpipe connects."""

    def __init__(self, bootstrap_servers: Target, compression: str = "lz4", linger_ms: int = 5,
                 max_request_size: int = 16 * 1024 * 1024, **producer_options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otelpipe-kafka-exporter", daemon=True)
        self._thread.start()

        async def start() -> AIOKafkaProducer:  # aiokafka binds to the loop it is created on
            producer = AIOKafkaProducer(
                **connect_args(bootstrap_servers), compression_type=compression, linger_ms=linger_ms,
                acks="all", enable_idempotence=True, max_request_size=max_request_size, **producer_options,
            )
            await producer.start()
            return producer

        self._producer = self._run(start(), timeout_s=60)
        self._closed = False

    def _run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def send_all(self, messages: list[tuple[str, bytes | None, bytes]], timeout_s: float) -> None:
        """Send (topic, key, value) messages and wait until the broker acknowledged every one."""

        async def send() -> None:
            futures = [await self._producer.send(topic, value, key=key, headers=CONTENT_TYPE)
                       for topic, key, value in messages]
            await asyncio.gather(*futures)

        self._run(send(), timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._producer.stop(), timeout_s=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def _trace_key(trace_id: int) -> bytes | None:
    return trace_id.to_bytes(16, "big") if trace_id else None


class _KafkaExporterBase:
    def __init__(self, bootstrap_servers: Target | None = None, topic: str = "", timeout_s: float = 30.0,
                 producer: KafkaOtlpProducer | None = None):
        if producer is None and not bootstrap_servers:
            raise ValueError("give bootstrap_servers or a shared KafkaOtlpProducer")
        self._own_producer = producer is None
        self._producer = producer or KafkaOtlpProducer(bootstrap_servers)  # type: ignore[arg-type]
        self.topic = topic
        self.timeout_s = timeout_s

    def _send(self, messages: list[tuple[str, bytes | None, bytes]]) -> bool:
        if not messages:
            return True
        try:
            self._producer.send_all(messages, self.timeout_s)
            return True
        except Exception:
            return False

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        if self._own_producer:
            self._producer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # export() waits for the broker: nothing is left buffered


class KafkaSpanExporter(_KafkaExporterBase, SpanExporter):
    def __init__(self, bootstrap_servers: Target | None = None, topic: str = "otlp_spans", **kwargs: Any):
        super().__init__(bootstrap_servers, topic, **kwargs)

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        by_trace: dict[int, list[Any]] = defaultdict(list)
        for span in spans:
            by_trace[span.context.trace_id].append(span)
        messages = [(self.topic, _trace_key(trace_id), encode_spans(group).SerializeToString())
                    for trace_id, group in by_trace.items()]
        return SpanExportResult.SUCCESS if self._send(messages) else SpanExportResult.FAILURE


class KafkaLogExporter(_KafkaExporterBase, LogRecordExporter):
    def __init__(self, bootstrap_servers: Target | None = None, topic: str = "otlp_logs", **kwargs: Any):
        super().__init__(bootstrap_servers, topic, **kwargs)

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        by_trace: dict[int, list[Any]] = defaultdict(list)
        for record in batch:
            by_trace[record.log_record.trace_id or 0].append(record)
        messages = [(self.topic, _trace_key(trace_id), encode_logs(group).SerializeToString())
                    for trace_id, group in by_trace.items()]
        return LogRecordExportResult.SUCCESS if self._send(messages) else LogRecordExportResult.FAILURE


class KafkaMetricExporter(_KafkaExporterBase, MetricExporter):
    def __init__(self, bootstrap_servers: Target | None = None, topic: str = "otlp_metrics",
                 preferred_temporality: dict | None = None, preferred_aggregation: dict | None = None,
                 **kwargs: Any):
        _KafkaExporterBase.__init__(self, bootstrap_servers, topic, **kwargs)
        MetricExporter.__init__(self, preferred_temporality=preferred_temporality,
                                preferred_aggregation=preferred_aggregation)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        payload = encode_metrics(metrics_data).SerializeToString()
        ok = self._send([(self.topic, None, payload)])
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        _KafkaExporterBase.shutdown(self)
