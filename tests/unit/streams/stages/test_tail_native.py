"""Tail rounds over native batches give the Python path's decisions and rows: the policies read only
the columns they need from the blocks, and kept spans are dropped and weighted by the blocks."""

import random

import pytest

from streams.otlp import native
from streams.otlp.batch import RawMessage
from streams.stages.pipeline import Stages
from streams.stages.tail import ATTRIBUTE_COLUMNS, Decision, RateLimiter, assemble, decide, policy_columns
from streams.stages.tail_policies import parse_policies
from streams.tools.workload import Workload
from tests.otlp_builders import mixed_spans_request

# Built with the package wherever cargo is (pip install -e .): these tests fail, not skip, without it.
assert native.available(), "streams.otlp._native is not built: install the Rust toolchain and pip install -e ."

POLICIES = [
    {"policies": [{"type": "status_code", "status_codes": ["Error"]}, {"type": "latency", "threshold_ms": 50},
                  {"type": "probabilistic", "rate": 0.3}]},
    {"policies": [{"type": "and", "policies": [{"type": "string_attribute", "key": "http.request.method",
                                                "values": ["GET", "POST"]},
                                               {"type": "probabilistic", "rate": 0.5}]},
                  {"type": "span_count", "min_spans": 1000}]},
]


def _batches(seed):
    workload = Workload(seed=seed, extra_attributes=2)
    messages = []
    for i in range(3):
        spans, logs = workload.trace_requests(8)
        messages.append(RawMessage("otlp_spans", 0, i, spans.SerializeToString()))
    out = []
    for on in (True, False):
        stages = Stages(lambda topic: "otlp_proto", 1 << 24, None, native_spans=on)
        out.append(stages.run("traces", messages).batches["otel_traces"])
    native_batch, python_batch = out
    assert type(native_batch).__name__ == "NativeBatch" and type(python_batch).__name__ == "ColumnBatch"
    return native_batch, python_batch


def _rows(batch):
    cols = dict(batch.columns)
    cols.pop("_origin", None)
    names = sorted(cols)
    return names, list(zip(*(cols[n] for n in names)))


def test_policy_columns():
    assert set(ATTRIBUTE_COLUMNS).isdisjoint(policy_columns(parse_policies(POLICIES[0])))
    assert set(ATTRIBUTE_COLUMNS) <= set(policy_columns(parse_policies(POLICIES[1])))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("which", range(len(POLICIES)))
def test_native_rounds_decide_and_write_what_the_python_path_does(seed, which):
    policies = parse_policies(POLICIES[which])
    native_batch, python_batch = _batches(seed)
    traces = sorted(set(python_batch.columns["TraceId"]))
    decided = [decide(policies, traces + ["f" * 32], batch, RateLimiter(), 10**12)
               for batch in (native_batch, python_batch)]
    assert decided[0] == decided[1]
    kept_by = {d.policy for d in decided[0].values() if d.keep}
    assert kept_by and len(kept_by) < len(decided[0])  # some kept, by a policy; not all
    rng = random.Random(seed)
    decisions = {t: Decision(rng.random() < 0.6, rng.choice([1.0, 2.0, 8.0]), "p", 5, "svc", "root") for t in traces}
    new = set(rng.sample(traces, len(traces) // 2))
    written = [assemble(decisions, new, batch, None, 13) for batch in (native_batch, python_batch)]
    (native_out, native_counts), (python_out, python_counts) = written
    assert native_counts == python_counts
    assert set(native_out) == set(python_out) == {"otel_traces", "otel_trace_summary"}
    assert type(native_out["otel_traces"]).__name__ == "NativeBatch"
    assert _rows(native_out["otel_traces"]) == _rows(python_out["otel_traces"])
    assert native_out["otel_traces"].origins() == list(python_out["otel_traces"].columns["_origin"])
    assert _rows(native_out["otel_trace_summary"]) == _rows(python_out["otel_trace_summary"])
    assert native_out["otel_traces"].native()  # encodes as a Native block


def test_dropping_every_span_writes_no_spans():
    native_batch, python_batch = _batches(4)
    decisions = {t: Decision(False, 1.0, "", 1) for t in set(python_batch.columns["TraceId"])}
    out, counts = assemble(decisions, set(decisions), native_batch, None, 13)
    assert out == {} and counts[("tail", "dropped_span")] == len(python_batch)


def _hostile_request(rng):
    """Spans of a few traces in any order: several roots or none, every status code (and codes
    no enum has), durations of any sign, resources of other services or of none."""
    trace_ids = [rng.randbytes(16) for _ in range(4)] + [b""]
    services = [rng.choice(["a", "b", "ünï", "", None]) for _ in range(rng.randint(1, 3))]
    return mixed_spans_request(rng, trace_ids, services, (0, 12), 1_760_000_000_000_000_000 + rng.randint(0, 10**12),
                               statuses=(0, 1, 2, 2, 3, 7, -1), wild_times=0.2).SerializeToString()


def _facts_batches(rng, blocks):
    """The same spans as a native batch of ``blocks`` blocks and as Python columns."""
    from streams.otlp.batch import ColumnBatch

    natives, pythons = [], []
    for b in range(blocks):
        messages = [RawMessage("otlp_spans", 0, b * 10 + i, _hostile_request(rng)) for i in range(rng.randint(1, 3))]
        for on, into in ((True, natives), (False, pythons)):
            stages = Stages(lambda topic: "otlp_proto", 1 << 24, None, native_spans=on)
            batch = stages.run("traces", messages).batches.get("otel_traces")
            if batch is not None:
                into.append(batch)
    if not natives:
        return None, None
    return native.NativeBatch.join(natives), ColumnBatch.join(pythons)


@pytest.mark.parametrize("seed", range(40))
def test_trace_facts_of_the_blocks_are_those_of_the_columns(seed):
    from streams.stages.tail import trace_facts

    rng = random.Random(seed)
    native_batch, python_batch = _facts_batches(rng, rng.randint(1, 4))
    if native_batch is None:
        return
    assert len(native_batch.parts) >= 1
    got, want = trace_facts(native_batch), trace_facts(python_batch)
    assert list(got) == list(want)  # the same traces, in the order first seen
    assert got == want
    # and the plain policies decide alike on them, rate limits included
    policies = parse_policies({"policies": [
        {"type": "status_code", "status_codes": ["Ok"]}, {"type": "latency", "threshold_ms": 3000, "scope": "any"},
        {"type": "latency", "threshold_ms": 900}, {"type": "span_count", "min_spans": 4, "max_spans": 6},
        {"type": "rate_limiting", "spans_per_second": 9}]})
    traces = list(want)
    assert (decide(policies, traces, native_batch, RateLimiter(), 10**12)
            == decide(policies, traces, python_batch, RateLimiter(), 10**12))


@pytest.mark.parametrize("seed", range(20))
def test_a_policy_that_matches_a_trace_may_match_its_bounds(seed):
    """``may_match`` says no only where ``matches`` does: on bounds taken from the trace's own facts
    (the tightest bounds) and on the trace's spans with some dropped (head sampling)."""
    from streams.stages.tail import trace_facts
    from streams.stages.tail_policies import TraceBounds, TraceView, bounded, may_keep

    rng = random.Random(seed)
    native_batch, python_batch = _facts_batches(rng, 1)
    if python_batch is None:
        return
    policies = parse_policies({"policies": [
        {"type": "status_code", "status_codes": ["Ok"]}, {"type": "latency", "threshold_ms": 3000, "scope": "any"},
        {"type": "latency", "threshold_ms": 900}, {"type": "span_count", "min_spans": 4, "max_spans": 6},
        {"type": "probabilistic", "rate": 0.3},
        {"type": "and", "policies": [{"type": "status_code"}, {"type": "always"}]}]})
    assert bounded(policies) and not bounded(parse_policies({"policies": [{"type": "always"}]}))
    for trace_id, f in trace_facts(python_batch).items():
        roots = [] if f.root_duration is None else [f.root_duration]
        bounds = TraceBounds(f.span_count, f.statuses, f.max_duration, max(roots, default=None))
        view = TraceView(trace_id, None, facts=f)
        for policy in policies:
            if policy.matches(view, RateLimiter(), 0)[0]:
                assert policy.may_match(trace_id, bounds), (policy.type, f)
        if not may_keep(policies, trace_id, bounds):
            assert not any(p.matches(view, RateLimiter(), 0)[0] for p in policies)
