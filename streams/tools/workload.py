"""A realistic synthetic OTLP workload, deterministic for a seed and a start time.

Several services call each other (frontend → checkout → cart/payment/inventory → databases), so a
trace is a tree of parent/child spans across services. Some traces fail (payment errors with an
exception event, HTTP 500), some spans are slow, logs carry their span's trace and span ids (and a
few carry none), and every metric type is emitted: gauges, sums (monotonic and not, cumulative and
delta), explicit and exponential histograms with exemplars, and summaries. Attributes include the
high-cardinality values that make real pipelines suffer: user ids, URLs with ids, session ids and
very long values; ``distinct_values`` adds values that no two spans share (request ids, end-user
ids, full URLs with ids and query strings, amounts), the case where memoising stops helping.

``generate(...)`` yields ``(signal, request)`` pairs and fills a ``WorkloadSummary`` with exact
counts, so tests can assert on what reached ClickHouse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SERVICES = {
    "frontend": {"version": "2.4.1", "lang": "nodejs"},
    "checkout": {"version": "1.9.0", "lang": "go"},
    "cart": {"version": "3.1.2", "lang": "dotnet"},
    "payment": {"version": "0.8.5", "lang": "python"},
    "inventory": {"version": "5.0.0", "lang": "java"},
}
SCOPE = ("otelpipe.workload", "1.0.0")
SEVERITY = {"DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17}


def kv(key: str, value: object) -> KeyValue:
    item = KeyValue(key=key)
    if isinstance(value, bool):
        item.value.bool_value = value
    elif isinstance(value, int):
        item.value.int_value = value
    elif isinstance(value, float):
        item.value.double_value = value
    elif isinstance(value, bytes):
        item.value.bytes_value = value
    elif isinstance(value, AnyValue):
        item.value.CopyFrom(value)
    else:
        item.value.string_value = str(value)
    return item


@dataclass
class WorkloadSummary:
    traces: int = 0
    error_traces: int = 0
    spans: int = 0
    error_spans: int = 0
    logs: int = 0
    logs_with_trace: int = 0
    metric_points: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    spans_by_service: dict[str, int] = field(default_factory=dict)
    logs_by_severity: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "traces": self.traces,
            "error_traces": self.error_traces,
            "spans": self.spans,
            "error_spans": self.error_spans,
            "logs": self.logs,
            "logs_with_trace": self.logs_with_trace,
            "metric_points": dict(self.metric_points),
            "messages": dict(self.messages),
            "spans_by_service": dict(self.spans_by_service),
            "logs_by_severity": dict(self.logs_by_severity),
        }


@dataclass
class _Span:
    service: str
    span: trace_pb2.Span
    logs: list[logs_pb2.LogRecord]


class Workload:
    def __init__(self, seed: int = 7, start_ns: int = 1_760_000_000_000_000_000, error_rate: float = 0.05,
                 slow_rate: float = 0.03, extra_attributes: int = 0, distinct_values: bool = False):
        self.rng = random.Random(seed)
        self.clock_ns = start_ns
        self.error_rate = error_rate
        self.slow_rate = slow_rate
        self.extra_attributes = extra_attributes
        # high cardinality as real traffic has it: every span carries values no other span has
        self.distinct_values = distinct_values
        self.summary = WorkloadSummary()

    # ------------------------------------------------------------ ids and helpers

    def _id(self, size: int) -> bytes:
        return self.rng.getrandbits(size * 8).to_bytes(size, "big") or b"\x01" * size

    def _user(self) -> str:
        return f"user-{self.rng.randrange(1, 50_000)}"

    def _span(self, trace_id: bytes, parent: bytes, name: str, kind: int, start: int, duration: int,
              attrs: list[KeyValue]) -> trace_pb2.Span:
        span = trace_pb2.Span(
            trace_id=trace_id,
            span_id=self._id(8),
            parent_span_id=parent,
            name=name,
            kind=kind,
            start_time_unix_nano=start,
            end_time_unix_nano=start + duration,
            flags=0x101,
        )
        span.attributes.extend(attrs)
        for i in range(self.extra_attributes):
            span.attributes.append(kv(f"app.extra_{i}", f"value-{self.rng.randrange(1000)}"))
        if self.distinct_values:
            order, item = self.rng.getrandbits(40), self.rng.getrandbits(32)
            span.attributes.extend([
                kv("request.id", f"{self.rng.getrandbits(64):016x}"),
                kv("enduser.id", f"u-{self.rng.getrandbits(48):012x}"),
                kv("url.full", f"https://shop.example.com/orders/{order}/items/{item}?ref={self.rng.getrandbits(24):x}"),
                kv("app.cart_value", str(self.rng.randrange(1, 10**7) / 100)),
            ])
        return span

    def _log(self, span: trace_pb2.Span | None, severity: str, body: object, when: int) -> logs_pb2.LogRecord:
        rec = logs_pb2.LogRecord(
            time_unix_nano=when,
            observed_time_unix_nano=when + 1_000_000,
            severity_text=severity,
            severity_number=SEVERITY[severity],
        )
        if isinstance(body, AnyValue):
            rec.body.CopyFrom(body)
        else:
            rec.body.string_value = str(body)
        if span is not None:
            rec.trace_id = span.trace_id
            rec.span_id = span.span_id
            rec.flags = 1
        rec.attributes.append(kv("code.function", "handle"))
        return rec

    # ------------------------------------------------------------ one trace

    def trace(self) -> list[_Span]:
        rng = self.rng
        trace_id = self._id(16)
        self.clock_ns += rng.randrange(1_000_000, 20_000_000)
        start = self.clock_ns
        failing = rng.random() < self.error_rate
        user = self._user()
        order = rng.randrange(1, 10_000_000)
        out: list[_Span] = []

        def slow(ns: int) -> int:
            return ns * 20 if rng.random() < self.slow_rate else ns

        root = self._span(trace_id, b"", "GET /api/order/{id}", trace_pb2.Span.SPAN_KIND_SERVER, start,
                          slow(rng.randrange(20, 80) * 1_000_000), [
                              kv("http.request.method", "GET"),
                              kv("http.route", "/api/order/{id}"),
                              kv("url.full", f"https://shop.example.com/api/order/{order}?session={self._id(8).hex()}"),
                              kv("http.response.status_code", 500 if failing else 200),
                              kv("user.id", user),
                              kv("session.id", self._id(8).hex()),
                              kv("client.address", f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"),
                          ])
        if rng.random() < 0.05:
            root.attributes.append(kv("app.request.payload", "x" * rng.randrange(250, 600)))
        out.append(_Span("frontend", root, [self._log(root, "INFO", f"order {order} requested by {user}",
                                                          start + 1_000)]))
        client = self._span(trace_id, root.span_id, "POST checkout.PlaceOrder", trace_pb2.Span.SPAN_KIND_CLIENT,
                            start + 2_000_000, root.end_time_unix_nano - start - 4_000_000,
                            [kv("rpc.system", "grpc"), kv("server.address", "checkout")])
        out.append(_Span("frontend", client, []))
        server = self._span(trace_id, client.span_id, "checkout.PlaceOrder", trace_pb2.Span.SPAN_KIND_SERVER,
                            client.start_time_unix_nano + 500_000,
                            client.end_time_unix_nano - client.start_time_unix_nano - 1_000_000,
                            [kv("rpc.system", "grpc"), kv("rpc.grpc.status_code", 13 if failing else 0),
                             kv("user.id", user)])
        out.append(_Span("checkout", server, []))
        t = server.start_time_unix_nano + 200_000
        for callee, op in (("cart", "cart.GetCart"), ("inventory", "inventory.Reserve"), ("payment", "payment.Charge")):
            dur = slow(rng.randrange(2, 15) * 1_000_000)
            call = self._span(trace_id, server.span_id, op, trace_pb2.Span.SPAN_KIND_CLIENT, t, dur,
                              [kv("rpc.system", "grpc")])
            out.append(_Span("checkout", call, []))
            handler = self._span(trace_id, call.span_id, op, trace_pb2.Span.SPAN_KIND_SERVER, t + 100_000,
                                 max(dur - 200_000, 100_000), [kv("rpc.system", "grpc"), kv("user.id", user)])
            logs = [self._log(handler, "DEBUG", f"{op} started", t + 150_000)]
            db = self._span(trace_id, handler.span_id, f"SELECT {callee}", trace_pb2.Span.SPAN_KIND_CLIENT,
                            t + 200_000, max(dur // 2, 50_000),
                            [kv("db.system", "postgresql"), kv("db.query.text", f"SELECT * FROM {callee} WHERE id = $1"),
                             kv("db.rows", rng.randrange(0, 100)), kv("db.hit_ratio", round(rng.random(), 3)),
                             kv("db.cached", rng.random() < 0.5)])
            if callee == "payment" and failing:
                handler.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                handler.status.message = "card declined: issuer unavailable"
                event = handler.events.add(time_unix_nano=t + 300_000, name="exception")
                event.attributes.extend([kv("exception.type", "PaymentError"),
                                         kv("exception.message", "issuer unavailable")])
                body = AnyValue()
                body.kvlist_value.values.extend([kv("error", "issuer unavailable"), kv("order", order),
                                                 kv("retryable", True)])
                logs.append(self._log(handler, "ERROR", body, t + 400_000))
                server.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                root.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                call.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            elif callee == "inventory" and rng.random() < 0.2:
                logs.append(self._log(handler, "WARN", "stock low", t + 400_000))
            if callee == "cart":
                handler.links.add(trace_id=self._id(16), span_id=self._id(8), trace_state="vendor=a",
                                  flags=1).attributes.append(kv("link.reason", "batch"))
            out.append(_Span(callee, handler, logs))
            out.append(_Span(callee, db, []))
            t += dur + 100_000
        self.summary.traces += 1
        self.summary.error_traces += int(failing)
        return out

    # ------------------------------------------------------------ requests

    def _resource(self, service: str, target: object) -> None:
        meta = SERVICES[service]
        target.resource.attributes.extend([
            kv("service.name", service),
            kv("service.version", meta["version"]),
            kv("telemetry.sdk.language", meta["lang"]),
            kv("deployment.environment.name", "prod"),
            kv("k8s.pod.name", f"{service}-{self.rng.randrange(1000):03d}"),
        ])
        target.schema_url = "https://opentelemetry.io/schemas/1.26.0"

    def trace_requests(self, traces: int) -> tuple[ExportTraceServiceRequest, ExportLogsServiceRequest]:
        spans: dict[str, list[trace_pb2.Span]] = {}
        logs: dict[str, list[logs_pb2.LogRecord]] = {}
        for _ in range(traces):
            for item in self.trace():
                spans.setdefault(item.service, []).append(item.span)
                if item.logs:
                    logs.setdefault(item.service, []).extend(item.logs)
        if self.rng.random() < 0.5:  # a log about no request in particular
            logs.setdefault("inventory", []).append(self._log(None, "INFO", "cache refreshed", self.clock_ns))
        treq = ExportTraceServiceRequest()
        for service, items in spans.items():
            rs = treq.resource_spans.add()
            self._resource(service, rs)
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = SCOPE
            ss.spans.extend(items)
            s = self.summary
            s.spans += len(items)
            s.error_spans += sum(1 for sp in items if sp.status.code == trace_pb2.Status.STATUS_CODE_ERROR)
            s.spans_by_service[service] = s.spans_by_service.get(service, 0) + len(items)
        lreq = ExportLogsServiceRequest()
        for service, items in logs.items():
            rl = lreq.resource_logs.add()
            self._resource(service, rl)
            sl = rl.scope_logs.add()
            sl.scope.name, sl.scope.version = SCOPE
            sl.log_records.extend(items)
            for rec in items:
                self.summary.logs += 1
                self.summary.logs_with_trace += int(bool(rec.trace_id))
                sev = rec.severity_text
                self.summary.logs_by_severity[sev] = self.summary.logs_by_severity.get(sev, 0) + 1
        return treq, lreq

    def metrics_request(self) -> ExportMetricsServiceRequest:
        rng = self.rng
        now = self.clock_ns
        start = now - 60_000_000_000
        req = ExportMetricsServiceRequest()
        points = self.summary.metric_points
        for service in SERVICES:
            rm = req.resource_metrics.add()
            self._resource(service, rm)
            sm = rm.scope_metrics.add()
            sm.scope.name, sm.scope.version = SCOPE

            g = sm.metrics.add(name="process.memory.usage", unit="By", description="Resident memory")
            g.gauge.data_points.add(time_unix_nano=now, as_int=rng.randrange(50, 500) * 1_048_576)
            g2 = sm.metrics.add(name="system.cpu.utilization", unit="1")
            g2.gauge.data_points.add(time_unix_nano=now, as_double=rng.random())
            points["gauge"] = points.get("gauge", 0) + 2

            c = sm.metrics.add(name="http.server.request.count", unit="{request}")
            c.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            c.sum.is_monotonic = True
            for _ in range(3):
                p = c.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now,
                                          as_int=rng.randrange(1, 10_000))
                p.attributes.extend([kv("http.route", "/api/order/{id}"), kv("user.id", self._user())])
            u = sm.metrics.add(name="queue.depth.change", unit="{item}")
            u.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
            u.sum.is_monotonic = False
            u.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now, as_double=rng.uniform(-5, 5))
            points["sum"] = points.get("sum", 0) + 4

            h = sm.metrics.add(name="http.server.request.duration", unit="s")
            h.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            counts = [rng.randrange(0, 100) for _ in range(5)]
            hp = h.histogram.data_points.add(start_time_unix_nano=start, time_unix_nano=now, count=sum(counts),
                                             sum=rng.uniform(1, 100), bucket_counts=counts,
                                             explicit_bounds=[0.005, 0.05, 0.5, 5.0], min=0.001, max=7.5)
            hp.attributes.append(kv("http.request.method", "GET"))
            hp.exemplars.add(time_unix_nano=now, as_double=0.42, trace_id=self._id(16), span_id=self._id(8)) \
                .filtered_attributes.append(kv("user.id", self._user()))
            points["histogram"] = points.get("histogram", 0) + 1

            e = sm.metrics.add(name="rpc.server.duration", unit="ms")
            e.exponential_histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
            ep = e.exponential_histogram.data_points.add(
                start_time_unix_nano=start, time_unix_nano=now, count=10, sum=123.4, scale=3, zero_count=1,
                zero_threshold=0.0001, min=0.5, max=40.0)
            ep.positive.offset = 2
            ep.positive.bucket_counts.extend([1, 3, 4])
            ep.negative.offset = -1
            ep.negative.bucket_counts.extend([1])
            ep.exemplars.add(time_unix_nano=now, as_int=7)
            points["exponential_histogram"] = points.get("exponential_histogram", 0) + 1

            q = sm.metrics.add(name="db.query.latency", unit="ms")
            qp = q.summary.data_points.add(start_time_unix_nano=start, time_unix_nano=now, count=100, sum=2500.0)
            for quantile, value in ((0.5, 20.0), (0.9, 45.0), (0.99, 120.0)):
                qp.quantile_values.add(quantile=quantile, value=value)
            points["summary"] = points.get("summary", 0) + 1
        return req

    def requests(self, messages: int, traces_per_message: int = 5, metrics_every: int = 5
                 ) -> Iterator[tuple[str, bytes, object]]:
        """Yield (signal, key, request): a spans and a logs request per step, metrics now and then."""
        for i in range(messages):
            treq, lreq = self.trace_requests(traces_per_message)
            key = treq.resource_spans[0].scope_spans[0].spans[0].trace_id
            self._count("traces")
            yield "traces", key, treq
            if len(lreq.resource_logs):
                self._count("logs")
                yield "logs", key, lreq
            if i % metrics_every == 0:
                self._count("metrics")
                yield "metrics", b"", self.metrics_request()

    def _count(self, signal: str) -> None:
        self.summary.messages[signal] = self.summary.messages.get(signal, 0) + 1
