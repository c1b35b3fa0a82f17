"""A Python service that sends its traces, logs and metrics straight to otelpipe's Kafka topics.

    pip install 'otelpipe[sdk]'          # or: .venv/bin/pip install -e '.[sdk]'
    otelpipe kafka up && otelpipe run &  # a broker and a worker
    python examples/python_service.py --requests 200
    otelpipe services --since 15m
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from streams.tools.kafka_exporters import KafkaLogExporter, KafkaMetricExporter, KafkaOtlpProducer, KafkaSpanExporter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()

    producer = KafkaOtlpProducer(args.bootstrap)  # one Kafka producer for all three exporters
    resource = Resource.create({"service.name": "example-shop", "service.version": "1.0.0",
                                "deployment.environment.name": "dev"})
    tracing = TracerProvider(resource=resource)
    tracing.add_span_processor(BatchSpanProcessor(KafkaSpanExporter(producer=producer)))
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(BatchLogRecordProcessor(KafkaLogExporter(producer=producer)))
    metrics = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(KafkaMetricExporter(producer=producer), export_interval_millis=5000)])

    log = logging.getLogger("example-shop")
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(logger_provider=logs))
    tracer = tracing.get_tracer("example-shop")
    meter = metrics.get_meter("example-shop")
    requests = meter.create_counter("shop.requests", unit="{request}")
    duration = meter.create_histogram("shop.request.duration", unit="ms")

    for i in range(args.requests):
        started = time.perf_counter()
        with tracer.start_as_current_span("GET /cart", kind=SpanKind.SERVER) as span:
            span.set_attribute("http.route", "/cart")
            with tracer.start_as_current_span("SELECT cart_items", kind=SpanKind.CLIENT):
                time.sleep(random.uniform(0.001, 0.01))
            if random.random() < 0.05:
                span.set_status(Status(StatusCode.ERROR, "cart service unavailable"))
                log.error("request %d failed", i)
            else:
                log.info("request %d served", i)
        requests.add(1, {"http.route": "/cart"})
        duration.record((time.perf_counter() - started) * 1000, {"http.route": "/cart"})

    for provider in (tracing, logs, metrics):
        provider.shutdown()
    producer.close()
    print(f"sent {args.requests} requests as traces, logs and metrics to {args.bootstrap}")


if __name__ == "__main__":
    main()
