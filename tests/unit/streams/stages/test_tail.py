"""Tail sampling over hand-built traces: every policy type, weights, the index's due reasons, and the
rows a decision writes (spans with weights, logs with span context, the summary)."""

import json
import re
import tomllib
from pathlib import Path

import pytest

from streams.otlp.batch import ColumnBatch
from streams.stages.sampling import probability_to_threshold, trace_randomness
from streams.stages.tail import Decision, TailIndex, assemble, part_key, decide, parse_part_key
from streams.stages.tail_policies import (TYPES, RateLimiter, TailPolicy, TailPolicyError, TraceView, Verdict, evaluate,
                                          load_policies, parse_policies, tail_policy_json_schema)

MS = 1_000_000


def trace_batch(traces):
    """traces: {trace_id: [(span_id, parent, service, name, status, duration_ms, attrs)]}"""
    cols = {c: [] for c in ("TraceId", "SpanId", "ParentSpanId", "ServiceName", "SpanName", "SpanKind", "StatusCode",
                            "Duration", "Timestamp", "SpanAttributes", "ResourceAttributes")}
    for trace_id, spans in traces.items():
        for i, (span_id, parent, service, name, status, duration_ms, attrs) in enumerate(spans):
            for c, v in zip(cols, (trace_id, span_id, parent, service, name, "Server", status, duration_ms * MS,
                                   1_700_000_000 * 10**9 + i * MS, attrs, {"service.name": service})):
                cols[c].append(v)
    return ColumnBatch("otel_traces", cols)


def view(spans):
    batch = trace_batch({"t" * 32: spans})
    root = next((i for i, s in enumerate(spans) if not s[1]), None)
    return TraceView("t" * 32, batch.columns, root)


def policy(**kw):
    return parse_policies({"policies": [kw]})


OK = [("a", "", "api", "GET /", "Unset", 20, {"http.route": "/", "retry": "3", "cached": "true"}),
      ("b", "a", "db", "query", "Unset", 5, {})]
ERR = [("a", "", "api", "GET /", "Unset", 20, {}), ("b", "a", "db", "query", "Error", 900, {})]


def test_each_policy_type():
    lim, now = RateLimiter(), 1000
    assert evaluate(policy(type="always"), view(OK), lim, now).keep
    assert evaluate(policy(type="status_code"), view(ERR), lim, now).keep
    assert not evaluate(policy(type="status_code"), view(OK), lim, now).keep
    assert evaluate(policy(type="latency", threshold_ms=500, scope="any"), view(ERR), lim, now).keep
    assert not evaluate(policy(type="latency", threshold_ms=500), view(ERR), lim, now).keep  # root was fast
    assert evaluate(policy(type="string_attribute", key="http.route", values=["/"]), view(OK), lim, now).keep
    assert not evaluate(policy(type="string_attribute", key="http.route", values=["/"], invert=True), view(OK), lim, now).keep
    assert evaluate(policy(type="string_attribute", key="service.name", values=["db"]), view(OK), lim, now).keep
    assert evaluate(policy(type="numeric_attribute", key="retry", min=2, max=5), view(OK), lim, now).keep
    assert not evaluate(policy(type="numeric_attribute", key="retry", min=4), view(OK), lim, now).keep
    assert evaluate(policy(type="boolean_attribute", key="cached", value=True), view(OK), lim, now).keep
    assert evaluate(policy(type="span_count", min_spans=2), view(OK), lim, now).keep
    assert not evaluate(policy(type="span_count", min_spans=1, max_spans=1), view(OK), lim, now).keep
    both = policy(type="and", policies=[{"type": "status_code"}, {"type": "latency", "threshold_ms": 500, "scope": "any"}])
    assert evaluate(both, view(ERR), lim, now).keep and not evaluate(both, view(OK), lim, now).keep


def test_rate_limiting_and_composite_shares():
    lim = RateLimiter()
    limited = policy(type="rate_limiting", spans_per_second=5)
    kept = [evaluate(limited, view(OK), lim, 7).keep for _ in range(4)]
    assert kept == [True, True, False, False]  # 2 spans each: 2 traces fit in 5 spans/s
    assert evaluate(limited, view(OK), lim, 8).keep  # a new second
    comp = policy(type="composite", max_total_spans_per_second=10, shares=[60, 40],
                  policies=[{"type": "status_code"}, {"type": "always"}])
    lim = RateLimiter()
    decisions = [evaluate(comp, view(ERR), lim, 1).policy for _ in range(5)]
    assert decisions == ["composite"] * 5  # 3 by errors' 6 spans, then 2 by always' 4 spans
    assert not evaluate(comp, view(ERR), lim, 1).keep


def test_probabilistic_is_consistent_and_weighted():
    ids = [f"{i:032x}" for i in range(0, 2**56, 2**56 // 1000)]
    base = policy(type="probabilistic", rate=0.1)
    kept = [t for t in ids if evaluate(base, TraceView(t, trace_batch({t: OK}).columns, 0), RateLimiter(), 0).keep]
    threshold = probability_to_threshold(0.1)
    assert kept == [t for t in ids if trace_randomness(t) >= threshold]
    verdict = evaluate(base, TraceView(kept[0], trace_batch({kept[0]: OK}).columns, 0), RateLimiter(), 0)
    assert verdict.probability == 0.1
    # errors are kept for sure (weight 1) even when the base rate would also keep them
    mixed = parse_policies({"policies": [{"type": "probabilistic", "rate": 0.1}, {"type": "status_code"}]})
    assert evaluate(mixed, TraceView(kept[0], trace_batch({kept[0]: ERR}).columns, 0), RateLimiter(), 0).probability == 1.0


def test_policy_files_report_every_problem():
    with pytest.raises(TailPolicyError) as err:
        parse_policies({"policies": [{"type": "sometimes"}, {"type": "probabilistic"}, {"type": "latency", "threshold_ms": -1},
                                     {"type": "composite", "max_total_spans_per_second": 10, "shares": [80, 30],
                                      "policies": [{"type": "always"}, {"type": "always"}]},
                                     {"type": "and", "policies": [{"type": "status_code", "colour": 1}]}]})
    text = "\n".join(err.value.problems)
    for expected in ("policies[0].type: must be one of", "policies[1].rate: required", "policies[2].threshold_ms: must be > 0",
                     "policies[3].shares: add up to 110%", "policies[4].policies[0].colour: unknown setting"):
        assert expected in text, text


def test_index_due_reasons_and_bounds():
    index = TailIndex(decision_wait_ms=1000, max_traces=2, max_spans_per_trace=10, cache_ms=5000)
    index.add(part_key("a" * 32, "traces", "s", 0, 1), 3, now_ms=0)
    index.add(part_key("b" * 32, "traces", "s", 0, 2), 12, now_ms=0)
    index.add(part_key("b" * 32, "logs", "l", 1, 5), 2, now_ms=0)
    assert index.due(500) == {"b" * 32: "overflow_spans"}
    assert (index.traces["b" * 32].spans, index.traces["b" * 32].logs) == (12, 2)
    index.add(part_key("c" * 32, "traces", "s", 0, 3), 1, now_ms=100)
    index.add(part_key("d" * 32, "traces", "s", 0, 4), 1, now_ms=200)
    due = index.due(500)
    assert due["a" * 32] == "overflow_traces" and "d" * 32 not in due  # the oldest goes first
    assert index.due(1200)["a" * 32] == "wait"
    index.decisions["d" * 32] = Decision(True, 1.0, "always", 0)
    assert index.due(300)["d" * 32] == "decided"
    index.add(part_key("a" * 32, "traces", "s", 0, 1), 3, now_ms=900)  # a re-delivered part counts once
    assert index.traces["a" * 32].spans == 3
    index.remove([part_key("a" * 32, "traces", "s", 0, 1)])
    assert "a" * 32 not in index.traces
    assert parse_part_key(part_key("b" * 32, "logs", "l", 1, 5)) == ("b" * 32, "logs")
    index.remove([k for e in list(index.traces.values()) for k in e.parts])
    assert index.expired_decisions(6000) == ["d" * 32]


def test_decide_and_assemble_rows():
    spans = trace_batch({"e" * 32: ERR, "o" * 32: OK})
    spans.columns["SampleWeight"] = [2.0] * 4  # head sampled at 50%
    decisions = decide(parse_policies({"policies": [{"type": "status_code"}]}), ["e" * 32, "o" * 32], spans,
                       RateLimiter(), 5000)
    assert decisions["e" * 32].keep and not decisions["o" * 32].keep
    assert decisions["e" * 32].root_service == "api" and decisions["e" * 32].root_span == "GET /"
    logs = ColumnBatch("otel_logs", {"TraceId": ["e" * 32, "o" * 32, "o" * 32, ""], "SpanId": ["b", "a", "a", ""],
                                     "SeverityNumber": [17, 9, 13, 9], "Body": ["boom", "fine", "careful", "free"]})
    out, counts = assemble(decisions, {"e" * 32, "o" * 32}, spans, logs, keep_log_severity=13)
    assert out["otel_traces"].columns["TraceId"] == ["e" * 32] * 2
    assert out["otel_traces"].columns["SampleWeight"] == [2.0, 2.0]
    stored_logs = out["otel_logs"].rows()
    assert [r["Body"] for r in stored_logs] == ["boom", "careful", "free"]  # INFO of the dropped trace is gone
    assert stored_logs[0]["SpanName"] == "query" and stored_logs[0]["RootServiceName"] == "api"
    assert [r["TraceDecision"] for r in stored_logs] == ["keep", "drop", ""]
    [summary] = out["otel_trace_summary"].rows()
    assert (summary["SpanCount"], summary["ErrorSpanCount"], summary["LogCount"], summary["ErrorLogCount"]) == (2, 1, 1, 1)
    assert summary["Duration"] == 901 * MS and summary["Policy"] == "status_code"
    assert counts[("tail", "dropped_span")] == 2 and counts[("tail", "dropped_log")] == 1
    # late parts of a decided trace: rows follow the cached decision, no second summary row
    out, _ = assemble(decisions, set(), spans, None, 13)
    assert "otel_trace_summary" not in out and len(out["otel_traces"]) == 2


def test_parts_long_after_their_trace_left_the_cache_get_the_default():
    index = TailIndex(decision_wait_ms=1000, max_traces=10, max_spans_per_trace=100, cache_ms=5000)
    index.add(part_key("a" * 32, "traces", "s", 0, 1), 2, now_ms=0, late=True)
    index.add(part_key("b" * 32, "traces", "s", 0, 2), 2, now_ms=0, late=False)
    index.decisions["c" * 32] = Decision(True, 1.0, "errors", 0)
    index.add(part_key("c" * 32, "traces", "s", 0, 3), 2, now_ms=0, late=True)  # still cached: follows it
    assert index.due(10) == {"a" * 32: "late_default", "c" * 32: "decided"}
    index.remove([part_key("a" * 32, "traces", "s", 0, 1)])
    assert not index.late


def test_sampling_check_lists_every_problem_of_a_policy_file(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "tail.toml"
    bad.write_text('[[policies]]\ntype = "latency"\n[[policies]]\ntype = "probabilistic"\nrate = 2\n')
    result = subprocess.run([sys.executable, "-m", "streams.cli", "sampling", "check", "--policies", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "policies[0].threshold_ms: required" in result.stderr and "policies[1].rate" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[[policies]]\nname = "errors"\ntype = "status_code"\n')
    result = subprocess.run([sys.executable, "-m", "streams.cli", "sampling", "check", "--policies", str(good)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "errors (status_code)" in result.stdout


# ------------------------------------------------------------------ the policy file's models


def test_one_file_reports_every_problem_of_every_policy_at_once():
    with pytest.raises(TailPolicyError) as err:
        parse_policies({"sampler": 1, "policies": [
            {"type": "latency", "threshold_ms": "5", "scope": "all", "colour": "red"},
            {"type": "composite", "max_total_spans_per_second": 0, "shares": [50, -1],
             "policies": [{"type": "probabilistic", "rate": 2}, {"type": "and", "policies": []}]},
            {"type": "string_attribute", "values": ["a", 1], "invert": 1},
            "errors",
        ]})
    problems = err.value.problems
    for expected in ("sampler: unknown setting",
                     "policies[0].colour: unknown setting for a latency policy",
                     "policies[0].threshold_ms: expected float, got '5'", "policies[0].scope: must be root or any",
                     "policies[1].max_total_spans_per_second: must be > 0",
                     "policies[1].policies[0].rate: sampling probability must be in [2^-56, 1]",
                     "policies[1].policies[1].policies: needs at least one policy",
                     "policies[1].shares: one positive percentage per policy",
                     "policies[2].key: required for a string_attribute policy", "policies[2].values[1]: expected str, got 1",
                     "policies[2].invert: expected bool, got 1", "policies[3]: must be a table"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 12, problems  # each once, nothing about the valid parts


def test_an_unknown_or_missing_type_lists_the_known_types():
    with pytest.raises(TailPolicyError) as err:
        parse_policies({"policies": [{"type": "sometimes", "rate": 1}, {"name": "untyped"}]})
    known = ("always, probabilistic, status_code, latency, string_attribute, numeric_attribute, boolean_attribute, "
             "span_count, rate_limiting, and, composite")
    assert err.value.problems == [f"policies[0].type: must be one of {known}, got 'sometimes'",
                                  f"policies[1].type: must be one of {known}, got None"]
    assert TYPES == tuple(known.split(", "))


def test_policies_are_typed_models_with_their_defaults():
    always, latency, codes, numeric = parse_policies({"policies": [
        {"type": "always"}, {"type": "latency", "threshold_ms": 250, "name": 7}, {"type": "status_code"},
        {"type": "numeric_attribute", "key": "retry"}]})
    assert all(isinstance(p, TailPolicy) for p in (always, latency, codes, numeric))
    assert (always.name, always.type) == ("always", "always")  # the name defaults to the type
    assert (latency.name, latency.threshold_ms, latency.scope) == ("7", 250, "root")
    assert codes.status_codes == ("Error",) and (numeric.min, numeric.max) == (None, None)
    assert [(p.name, p.type) for p in load_policies(None)] == [("errors", "status_code"), ("slow", "latency"),
                                                              ("baseline", "probabilistic")]
    with pytest.raises(ValueError, match="frozen"):
        latency.threshold_ms = 1


def test_the_json_schema_is_discriminated_by_type():
    schema = tail_policy_json_schema()
    items = schema["properties"]["policies"]["items"]
    assert items["discriminator"]["propertyName"] == "type"
    assert sorted(items["discriminator"]["mapping"]) == sorted(TYPES) and len(items["oneOf"]) == len(TYPES)
    assert schema["required"] == ["policies"] and schema["additionalProperties"] is False
    latency = schema["$defs"]["LatencyPolicy"]
    assert latency["required"] == ["type", "threshold_ms"] and latency["properties"]["scope"]["enum"] == ["root", "any"]
    assert latency["additionalProperties"] is False and latency["properties"]["threshold_ms"]["exclusiveMinimum"] == 0
    composite = schema["$defs"]["CompositePolicy"]["properties"]["policies"]["items"]
    assert composite["discriminator"]["propertyName"] == "type"  # sub-policies too
    json.dumps(schema)


def readme_policy_file():
    """The example policy file of the README."""
    text = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    [block] = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[[policies]]" in b]
    return tomllib.loads(block)


def mixed_traces():
    """60 traces in one second: errors, slow or gold roots, big fan-outs, orphans."""
    views = []
    for i in range(60):
        trace_id = f"{(i * 0x0123456789abcdef0123) % 2**128:032x}"
        if i % 4 == 0:
            spans = ERR
        elif i % 4 == 1:
            spans = [("a", "", "api", "GET /slow", "Unset", 1500 if i % 8 == 1 else 30,
                      {"tenant.tier": "gold" if i % 3 == 0 else "free"})]
        elif i % 4 == 2:
            spans = [(f"s{j}", "s0" if j else "", "api" if i % 3 else "web", "fan", "Unset", 1, {}) for j in range(60)]
        else:
            spans = [("a", "x", "web", "orphan", "Ok", 3, {"tenant.tier": "silver"})] * 30
        root = next((j for j, s in enumerate(spans) if not s[1]), None)
        views.append(TraceView(trace_id, trace_batch({trace_id: spans}).columns, root))
    return views


# what the hand-written parser's policies decided for mixed_traces() (before the pydantic models)
README_DECISIONS = (
    "errors latency composite composite errors composite composite composite errors latency composite composite "
    "errors composite composite composite errors latency composite composite errors string_attribute composite "
    "composite errors latency composite composite errors composite composite composite errors latency composite "
    "composite errors composite composite composite errors latency composite - errors string_attribute and - "
    "errors latency - - errors composite and - errors latency - -")
DEFAULT_DECISIONS = " ".join(["errors slow - - errors - - -"] * 7 + ["errors slow - -"])


@pytest.mark.parametrize("policies, expected", [("readme", README_DECISIONS), ("default", DEFAULT_DECISIONS)])
def test_example_files_decide_as_before(policies, expected):
    parsed = parse_policies(readme_policy_file()) if policies == "readme" else load_policies(None)
    limiter = RateLimiter()
    verdicts = [evaluate(parsed, v, limiter, 100) for v in mixed_traces()]
    assert " ".join(v.policy or "-" for v in verdicts) == expected
    assert all(v.probability == (0.5 if v.policy == "and" else 1.0) for v in verdicts)  # and: 50 spans, rate 0.5
    baseline = TraceView("f" * 32, trace_batch({"f" * 32: OK * 20}).columns, 0)  # the highest randomness: kept at 1%
    assert evaluate(parsed, baseline, limiter, 100) == Verdict(True, 0.01, "baseline")  # no room left in composite


def test_a_policy_file_on_disk(tmp_path):
    path = tmp_path / "tail.toml"
    path.write_text('[[policies]]\ntype = "span_count"\nmin_spans = 2\nmax_spans = 3\n')
    [count] = load_policies(str(path))
    assert (count.name, count.min_spans, count.max_spans) == ("span_count", 2, 3)
    with pytest.raises(TailPolicyError, match="not found"):
        load_policies(str(tmp_path / "missing.toml"))
