"""The span and log stages on the native core (streams.stages.native_stages) against the Python path.

The same messages through ``Stages.run`` twice, once with the native core and once with the Python
decoder and stages: the same dead letters, the same rows (every column, ORIGIN, SampleWeight and the
catalog's columns included, value for value) and the same counts of what each stage changed. Inputs:
the workload (ordinary and high-cardinality), requests with a secret planted in every field, trace
states with upstream thresholds and randomness, and hostile bytes mixed in; policies: the default,
allow mode, hashing and dropping values, every cardinality rule that decides per value, templating
off; head sampling off, by service, and at the floor rate. Log records likewise (bodies of every
AnyValue kind, records with and without trace ids, every severity against ``keep_log_severity``).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streams.agents import worker_metrics
from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.otlp.native import NativeBatch
from streams.stages.catalog import CatalogEntry, CatalogStage
from streams.stages.label_policy import CardinalityRule, LabelPolicy, RedactionPolicy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.sampling import HeadRates, HeadSampler
from streams.tools.workload import Workload
from tests.otlp_builders import logs_request, mutate_bytes, traces_request
from tests.planted_secrets import requests_with_secrets

assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."

POLICIES = {
    "default": LabelPolicy(),
    "allow": LabelPolicy(redaction=RedactionPolicy(mode="allow", allow_keys=("http.*", "service.*", "k8s.*"))),
    "hash": LabelPolicy(redaction=RedactionPolicy(value_action="hash")),
    "drop": LabelPolicy(redaction=RedactionPolicy(value_action="drop"), template_span_names=False),
    "rules": LabelPolicy(rules=(
        CardinalityRule("hash", "user.id", buckets=7),
        CardinalityRule("template", "http.target"),
        CardinalityRule("truncate_hash", "*", max_length=12),
        CardinalityRule("drop", "session.*"),
    )),
}
CATALOG = {"checkout": CatalogEntry("checkout", "payments", "1", "ana"),
           "frontend": CatalogEntry("frontend", "web", "2", "")}


class Recorder:
    """Stands in for otelpipe_stage_changes_total: what each path counted."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def labels(self, stage: str, reason: str) -> "Recorder._Child":
        return Recorder._Child(self.counts, (stage, reason))

    class _Child:
        def __init__(self, counts: Counter, key: tuple[str, str]):
            self.counts, self.key = counts, key

        def inc(self, n: int = 1) -> None:
            self.counts[self.key] += n


TABLES = {"traces": "otel_traces", "logs": "otel_logs"}


def stages(policy: str | None, rates: HeadRates, catalog: bool, native_spans: bool, keep_severity: int = 13) -> Stages:
    labels = LabelStage(POLICIES[policy]) if policy else None
    return Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, labels, CatalogStage(CATALOG if catalog else {}),
                  head=HeadSampler(rates, keep_severity), clock=lambda: 2_000_000_000.0, native_spans=native_spans,
                  native_logs=native_spans)


def run(monkeypatch, payloads: list[bytes], native_spans: bool, signal: str = "traces", **kwargs):
    recorder = Recorder()
    monkeypatch.setattr(worker_metrics, "STAGE_CHANGES", recorder)
    messages = [RawMessage(signal, 0, i, p, timestamp_ms=1_700_000_000_000 + i) for i, p in enumerate(payloads)]
    result = stages(native_spans=native_spans, **kwargs).run(signal, messages)
    return result, recorder.counts


def agree(monkeypatch, payloads: list[bytes], policy: str | None = "default", rates: HeadRates = HeadRates(),
          catalog: bool = True, signal: str = "traces", keep_severity: int = 13) -> dict:
    kwargs = dict(policy=policy, rates=rates, catalog=catalog, signal=signal, keep_severity=keep_severity)
    native_result, native_counts = run(monkeypatch, payloads, True, **kwargs)
    python_result, python_counts = run(monkeypatch, payloads, False, **kwargs)
    letters = lambda r: [(d.message.offset, d.reason, d.detail) for d in r.dead_letters]  # noqa: E731
    assert letters(native_result) == letters(python_result)
    assert native_result.decoded_messages == python_result.decoded_messages
    assert set(native_result.batches) == set(python_result.batches)
    table = TABLES[signal]
    batch = native_result.batches.get(table)
    if batch is not None:
        assert isinstance(batch, NativeBatch)
        expected = python_result.batches[table].columns
        got = batch.columns
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert got[name] == expected[name], f"column {name} differs"
        assert sorted(batch.column_names) == sorted(n for n in expected if n != "_origin")
    assert native_counts == python_counts
    return got if batch is not None else {}


def workload_payloads(seed: int, messages: int = 6, signal: str = "traces", **kwargs) -> list[bytes]:
    workload = Workload(seed=seed, **kwargs)
    return [r.SerializeToString() for kind, _, r in workload.requests(messages) if kind == signal]


@pytest.mark.parametrize("policy", [None, *POLICIES])
def test_workload_through_each_policy(monkeypatch, policy):
    agree(monkeypatch, workload_payloads(3, extra_attributes=3), policy)


@pytest.mark.parametrize("seed", [1, 2])
def test_high_cardinality_workload(monkeypatch, seed):
    agree(monkeypatch, workload_payloads(seed, distinct_values=True), "rules")
    agree(monkeypatch, workload_payloads(seed, distinct_values=True), "default", HeadRates(0.5))


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_secret_planted_in_every_field(monkeypatch, policy):
    payloads = [r.SerializeToString() for r in requests_with_secrets("traces")]
    agree(monkeypatch, payloads, policy)


@pytest.mark.parametrize("rates", [HeadRates(0.25), HeadRates(1.0, {"checkout": 0.5, "frontend": 0.01}),
                                   HeadRates(2.0**-4)], ids=["quarter", "per_service", "sixteenth"])
def test_head_sampling(monkeypatch, rates):
    columns = agree(monkeypatch, workload_payloads(5, messages=10), "default", rates)
    assert columns and set(columns["SampleWeight"]) != {1.0}


def test_upstream_thresholds_and_randomness(monkeypatch):
    """Trace states with th and rv (valid, invalid, stricter and looser than ours) and other vendors."""
    states = ["", "ot=th:8", "ot=th:c;rv:abcdefabcdefab", "ot=rv:00000000000001", "ot=rv:ffffffffffffff",
              "ot=th:0", "ot=th:zz", "vendor=x,ot=th:fffff", "ot=th:8;rv:zz", "a=b"]
    payloads = []
    for i, state in enumerate(states * 3):
        request = traces_request(4, service=random.Random(i).choice(["checkout", "frontend", None]))
        for j, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
            span.trace_state = state
            span.trace_id = bytes([i, j]) + bytes(range(14))
        payloads.append(request.SerializeToString())
    for rates in (HeadRates(), HeadRates(0.5), HeadRates(1.0, {"checkout": 0.001})):
        agree(monkeypatch, payloads, "default", rates)


def test_hostile_bytes_mixed_in(monkeypatch):
    rng = random.Random(11)
    good = workload_payloads(7, messages=4)
    payloads = []
    for payload in good:
        payloads.append(payload)
        payloads.append(mutate_bytes(rng, payload, good))
        payloads.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    agree(monkeypatch, payloads, "default", HeadRates(0.5))


def test_nothing_left_after_sampling(monkeypatch):
    assert agree(monkeypatch, workload_payloads(2, messages=2), "default", HeadRates(2.0**-20, {}, 2.0**-20)) == {}


def test_top_k_and_json_take_the_python_path(monkeypatch):
    policy = LabelPolicy(rules=(CardinalityRule("top_k", "user.id", k=2),))
    POLICIES["top_k"] = policy
    try:
        result, _ = run(monkeypatch, workload_payloads(1, messages=2), True, policy="top_k",
                        rates=HeadRates(), catalog=False)
    finally:
        del POLICIES["top_k"]
    assert not isinstance(result.batches["otel_traces"], NativeBatch)
    json_message = RawMessage("spans", 0, 0, b"{}", headers=(("content-type", b"application/json"),))
    mixed = stages("default", HeadRates(), False, True).run(
        "traces", [json_message, RawMessage("spans", 0, 1, workload_payloads(1, messages=1)[0])])
    assert not any(isinstance(b, NativeBatch) for b in mixed.batches.values())


def test_a_failing_native_stage_falls_back_to_the_python_path(monkeypatch):
    from streams.stages import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "run_native", broken)
    payloads = workload_payloads(4, messages=2)
    result, counts = run(monkeypatch, payloads, True, policy="default", rates=HeadRates(), catalog=True)
    assert not isinstance(result.batches["otel_traces"], NativeBatch)
    assert counts[("pipeline", "native_fallback")] == 1
    assert len(result.batches["otel_traces"]) > 0


# ---------------------------------------------------------------- log records


@pytest.mark.parametrize("policy", [None, *POLICIES])
def test_logs_workload_through_each_policy(monkeypatch, policy):
    columns = agree(monkeypatch, workload_payloads(3, messages=10, signal="logs", extra_attributes=3), policy,
                    signal="logs")
    assert columns and columns["Body"]


@pytest.mark.parametrize("seed", [1, 2])
def test_logs_high_cardinality_workload(monkeypatch, seed):
    payloads = workload_payloads(seed, messages=10, signal="logs", distinct_values=True)
    agree(monkeypatch, payloads, "rules", signal="logs")
    agree(monkeypatch, payloads, "default", HeadRates(0.5), signal="logs")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_logs_with_a_secret_planted_in_every_field(monkeypatch, policy):
    payloads = [r.SerializeToString() for r in requests_with_secrets("logs")]
    agree(monkeypatch, payloads, policy, signal="logs")


def sampled_logs() -> list[bytes]:
    """Records of every severity number (and past FATAL4), with and without trace ids, of three services."""
    payloads = []
    for i in range(12):
        request = logs_request()
        resource = request.resource_logs[0]
        for attr in resource.resource.attributes:
            if attr.key == "service.name":
                attr.value.string_value = ["checkout", "frontend", "inventory"][i % 3]
        records = resource.scope_logs[0].log_records
        template = records[0]
        del records[:]
        for j in range(30):
            record = records.add()
            record.CopyFrom(template)
            record.severity_number = (i * 30 + j) % 27
            record.trace_id = b"" if j % 7 == 0 else bytes([i, j]) + random.Random(i * 100 + j).randbytes(14)
            record.span_id = b"" if j % 7 == 0 else bytes(8)
        payloads.append(request.SerializeToString())
    return payloads


@pytest.mark.parametrize("rates", [HeadRates(0.25), HeadRates(1.0, {"checkout": 0.5, "frontend": 0.01}),
                                   HeadRates(2.0**-20, {}, 2.0**-20)], ids=["quarter", "per_service", "floor"])
@pytest.mark.parametrize("keep_severity", [1, 13, 25])
def test_logs_head_sampling(monkeypatch, rates, keep_severity):
    result, counts = run(monkeypatch, sampled_logs(), True, signal="logs", policy="default", rates=rates,
                         catalog=True, keep_severity=keep_severity)
    assert keep_severity == 1 or counts[("sampling", "head_dropped_log")] > 0
    agree(monkeypatch, sampled_logs(), "default", rates, signal="logs", keep_severity=keep_severity)


def test_logs_hostile_bytes_mixed_in(monkeypatch):
    rng = random.Random(12)
    good = workload_payloads(8, messages=12, signal="logs")
    payloads = []
    for payload in good:
        payloads.append(payload)
        payloads.append(mutate_bytes(rng, payload, good))
        payloads.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    agree(monkeypatch, payloads, "default", HeadRates(0.5), signal="logs")


def test_logs_top_k_takes_the_python_path(monkeypatch):
    POLICIES["top_k"] = LabelPolicy(rules=(CardinalityRule("top_k", "code.function", k=1, signals=("logs",)),))
    try:
        result, _ = run(monkeypatch, workload_payloads(1, messages=10, signal="logs"), True, signal="logs",
                        policy="top_k", rates=HeadRates(), catalog=False)
    finally:
        del POLICIES["top_k"]
    assert not isinstance(result.batches["otel_logs"], NativeBatch)
