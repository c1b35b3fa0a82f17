"""Tail sampling: buffer every trace's spans and logs until it can be decided, decide once, write once.

The pieces here are pure; ``streams.agents.app`` wires them to Kafka and ClickHouse.

- ``part_key`` names one routed part: the spans (or logs) of one trace from one source message,
  ``c/<trace>/<t|l>/<source topic>/<partition>/<offset>``. Parts live on the compacted routed topic
  until their trace is decided, so the buffer survives a crash with no extra copy. The router
  stores them in bulk: one record per (source message, signal, tail partition), keyed
  ``bulk_key`` = ``m/<route>/<t|l>/<source topic>/<partition>/<offset>``, holding the parts of every
  trace of that message routed there; a record of a single part keyed by its part key is the
  older form, still read (and what the router sends when a bulk record is too large for the
  topic). A part's name is the same whichever record holds it, so decisions find it either way.
- The index knows which record holds each part (``store``) and which parts of a record are still
  to be written (``pending``); ``finish`` says which records hold nothing more to write, so their
  tombstones can go. A decision is kept while a record holding one of its parts lives: a restore
  must recognise that part as written.
- ``TailIndex`` knows, per trace in flight, its parts, when the last one arrived and how many spans
  it holds, and which traces were decided recently (the decision cache). ``due()`` says which
  traces to decide now and why: ``wait`` (``decision_wait`` after the last part), ``decided`` (late
  parts of a trace decided before: the cached decision applies), ``overflow_spans`` (a trace reached ``max_spans_per_trace``: decided early with what it
  has, its later parts follow that decision) and ``overflow_traces`` (more than ``max_traces`` in
  flight: the oldest are decided early) and ``late_default`` (a part that reached Kafka more than
  the cache horizon after it ended, of a trace neither buffered nor in the cache: its trace was
  decided so long ago that the decision is gone, and the configured default applies).
- ``assemble`` turns the decoded parts of the traces being decided, with their decisions, into the
  rows to write: the spans of kept traces (``SampleWeight`` multiplied by 1 / the tail probability),
  their logs with the span context, logs of dropped traces at ``keep_log_severity`` or above, and
  one ``otel_trace_summary`` row per trace decided now and kept.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from streams.otlp.batch import ColumnBatch
from streams.otlp import native
from streams.otlp.native import NativeBatch
from streams.stages.tail_policies import RateLimiter, TailPolicy, TraceBounds, TraceFacts, TraceView, Verdict, evaluate

SUMMARY_TABLE = "otel_trace_summary"
SUMMARY_COLUMNS = ["TraceId", "Start", "Duration", "RootServiceName", "RootSpanName", "SpanCount",
                   "ErrorSpanCount", "LogCount", "ErrorLogCount", "Decision", "Policy", "SampleWeight", "DecidedAt"]
LOG_CONTEXT_COLUMNS = ["SpanName", "SpanKind", "RootServiceName", "RootSpanName", "TraceDecision"]


def part_key(trace_id: str, signal: str, topic: str, partition: int, offset: int) -> str:
    return f"c/{trace_id}/{signal[0]}/{topic}/{partition}/{offset}"


def parse_part_key(key: str) -> tuple[str, str]:
    """(trace id or "-", "traces" | "logs")."""
    _, trace_id, kind, _ = key.split("/", 3)
    return trace_id, "traces" if kind == "t" else "logs"


def bulk_key(route: int, signal: str, topic: str, partition: int, offset: int) -> str:
    return f"m/{route}/{signal[0]}/{topic}/{partition}/{offset}"


def parse_bulk_key(key: str) -> tuple[int, str, str, int, int]:
    """(route, "traces" | "logs", source topic, partition, offset); ValueError when it is not one."""
    kind, route, signal, topic, partition, offset = key.split("/")
    if kind != "m" or signal not in ("t", "l") or not topic:
        raise ValueError("not a bulk key")
    for number in (route, partition, offset):
        if not number.isascii() or not number.isdigit() or len(number) > 19:
            raise ValueError("not a bulk key")
    return int(route), "traces" if signal == "t" else "logs", topic, int(partition), int(offset)


@dataclass(slots=True)
class Decision:
    keep: bool
    weight: float  # 1 / tail probability
    policy: str
    decided_ms: int
    root_service: str = ""
    root_span: str = ""
    parts: tuple[str, ...] = ()  # the parts written under this decision: a re-routed copy is skipped

    def as_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "weight": self.weight, "policy": self.policy, "decided_ms": self.decided_ms,
                "root_service": self.root_service, "root_span": self.root_span, "parts": list(self.parts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Decision":
        """ValueError, TypeError or KeyError when ``d`` is not a decision as ``as_dict`` writes it."""
        parts = d.get("parts", [])
        if not isinstance(parts, list) or not all(isinstance(k, str) for k in parts):
            raise ValueError("a decision's parts that are not part keys")
        return cls(bool(d["keep"]), float(d["weight"]), str(d["policy"]), int(d["decided_ms"]),
                   str(d.get("root_service", "")), str(d.get("root_span", "")), tuple(parts))

    def with_parts(self, keys: list[str]) -> "Decision":
        return Decision(self.keep, self.weight, self.policy, self.decided_ms, self.root_service, self.root_span,
                        tuple(dict.fromkeys((*self.parts, *keys))))


@dataclass(slots=True)
class TraceEntry:
    parts: list[str] = field(default_factory=list)
    first_ms: int = 0
    last_ms: int = 0
    spans: int = 0
    logs: int = 0


class TailIndex:
    def __init__(self, decision_wait_ms: int, max_traces: int, max_spans_per_trace: int, cache_ms: int):
        self.decision_wait_ms = decision_wait_ms
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self.cache_ms = cache_ms
        self.traces: dict[str, TraceEntry] = {}
        self.decisions: dict[str, Decision] = {}
        self.done: dict[str, str] = {}  # part key → trace, for the parts of cached decisions
        self.late: set[str] = set()  # traces whose parts came after their decision left the cache
        self.stored: dict[str, str] = {}  # part key → the key of the record holding it
        self.members: dict[str, set[str]] = {}  # record key → its parts
        self.pending: dict[str, set[str]] = {}  # record key → its parts not written yet
        self.records: dict[str, set[str]] = {}  # decision record key → the traces it decides
        self.record_of: dict[str, set[str]] = {}  # trace → its decision records

    def remember(self, trace_id: str, decision: Decision, record: str | None = None) -> None:
        """A decision, recorded under ``record`` (a round's ``d/<partition>/<round>``, or an older
        ``d/<trace>``); a trace decided again for late parts has its parts merged."""
        known = self.decisions.get(trace_id)
        if known is not None and known.parts != decision.parts:
            decision = decision.with_parts(list(known.parts))
        self.decisions[trace_id] = decision
        self.done.update(dict.fromkeys(decision.parts, trace_id))
        if record is not None:
            self.records.setdefault(record, set()).add(trace_id)
            self.record_of.setdefault(trace_id, set()).add(record)

    def forget_decision(self, trace_id: str) -> list[str]:
        """Forget a decision; returns the decision records that decide nothing more (to delete)."""
        decision = self.decisions.pop(trace_id, None)
        if decision is not None:
            for key in decision.parts:
                self.done.pop(key, None)
        empty = []
        for record in sorted(self.record_of.pop(trace_id, ())):
            traces = self.records.get(record)
            if traces is not None:
                traces.discard(trace_id)
                if not traces:
                    del self.records[record]
                    empty.append(record)
        return empty

    def store(self, key: str, record: str, pending: bool) -> None:
        """Part ``key`` is held by ``record``; ``pending`` while it is still to be written."""
        self.stored[key] = record
        self.members.setdefault(record, set()).add(key)
        if pending:
            self.pending.setdefault(record, set()).add(key)

    def drop_record(self, record: str) -> None:
        """A record that holds nothing to write (its tombstone is sent)."""
        for key in self.members.pop(record, ()):
            self.stored.pop(key, None)
        self.pending.pop(record, None)

    def completed_by(self, keys: list[str]) -> list[str]:
        """The records that hold nothing more to write once these parts are written."""
        written = set(keys)
        out: list[str] = []
        for key in keys:
            record = self.stored.get(key)
            if record is not None and record not in out and self.pending.get(record, set()) <= written:
                out.append(record)
        return out

    def finish(self, keys: list[str]) -> list[str]:
        """Parts written: out of the buffer, and the records they complete forgotten (returned)."""
        complete = self.completed_by(keys)
        self.remove(keys)
        for key in keys:
            record = self.stored.get(key)
            if record in self.pending:
                self.pending[record].discard(key)
        for record in complete:
            self.drop_record(record)
        return complete

    def add(self, key: str, records: int, now_ms: int, late: bool = False) -> bool:
        """Index a part; False when it was written already (a copy the router sent again after a crash)."""
        if key in self.done:
            return False
        trace_id, signal = parse_part_key(key)
        entry = self.traces.get(trace_id)
        if entry is None:
            if late and trace_id not in self.decisions:
                self.late.add(trace_id)
            entry = self.traces[trace_id] = TraceEntry(first_ms=now_ms)
        if key in entry.parts:
            return True  # a re-delivered part, still buffered
        entry.parts.append(key)
        entry.last_ms = max(entry.last_ms, now_ms)
        if signal == "traces":
            entry.spans += records
        else:
            entry.logs += records
        return True

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            trace_id, signal = parse_part_key(key)
            entry = self.traces.get(trace_id)
            if entry is not None and key in entry.parts:
                entry.parts.remove(key)
                if not entry.parts:
                    del self.traces[trace_id]
                    self.late.discard(trace_id)

    def in_flight(self) -> int:
        return sum(1 for t in self.traces if t not in self.decisions)

    def buffered_spans(self) -> int:
        return sum(e.spans for e in self.traces.values())

    def due(self, now_ms: int) -> dict[str, str]:
        """Trace → why it is decided now."""
        out: dict[str, str] = {}
        waiting = []
        for trace_id, entry in self.traces.items():
            if trace_id in self.decisions:
                out[trace_id] = "decided"
            elif trace_id in self.late:
                out[trace_id] = "late_default"
            elif entry.spans >= self.max_spans_per_trace:
                out[trace_id] = "overflow_spans"
            elif now_ms - entry.last_ms >= self.decision_wait_ms:
                out[trace_id] = "wait"
            else:
                waiting.append((entry.first_ms, trace_id))
        excess = len(waiting) - self.max_traces
        if excess > 0:
            for _, trace_id in sorted(waiting)[:excess]:
                out[trace_id] = "overflow_traces"
        return out

    def expired_decisions(self, now_ms: int) -> list[str]:
        """Decisions older than the cache horizon, oldest first (decisions are kept in the order they
        were made, so this stops at the first one still young)."""
        out = []
        for trace_id, decision in self.decisions.items():
            if now_ms - decision.decided_ms <= self.cache_ms:
                break
            if trace_id not in self.traces and not any(key in self.stored for key in decision.parts):
                out.append(trace_id)  # (a part still on the topic in a record with others must stay known)
        return out


# ------------------------------------------------------------------ deciding and assembling rows


VIEW_COLUMNS = ("TraceId", "SpanId", "ParentSpanId", "ServiceName", "SpanName", "StatusCode", "Duration", "Timestamp")
ATTRIBUTE_COLUMNS = ("SpanAttributes", "ResourceAttributes")
_PLAIN_POLICIES = frozenset({"always", "probabilistic", "status_code", "latency", "span_count", "rate_limiting"})
_ATTRIBUTE_POLICIES = frozenset({"string_attribute", "numeric_attribute", "boolean_attribute"})


def policy_columns(policies: tuple[TailPolicy, ...]) -> tuple[str, ...] | None:
    """The span columns the policies read; None (every column) when one is of a type not known here."""
    names = set(VIEW_COLUMNS)
    todo = list(policies)
    while todo:
        policy = todo.pop()
        if policy.type in _ATTRIBUTE_POLICIES:
            names.update(ATTRIBUTE_COLUMNS)
        elif policy.type in ("and", "composite"):
            todo.extend(policy.policies)  # type: ignore[attr-defined]
        elif policy.type not in _PLAIN_POLICIES:
            return None
    return tuple(sorted(names))


def _columns(batch: ColumnBatch, names: tuple[str, ...] | None) -> Mapping[str, list[Any]]:
    """The batch's Python columns of ``names`` (every column when None): a native batch makes only
    those, so a policy that reads no attribute map costs no map."""
    if names is not None and isinstance(batch, NativeBatch):
        return batch.columns_of(names)
    return batch.columns


def _rows_by_trace(columns: Mapping[str, list[Any]] | None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if columns is not None:
        for i, trace_id in enumerate(columns["TraceId"]):
            out.setdefault(trace_id, []).append(i)
    return out


FACT_COLUMNS = ("TraceId", "ParentSpanId", "ServiceName", "SpanName", "StatusCode", "Duration", "Timestamp")
_STATUS_NAMES = ("unset", "ok", "error")  # bit c of a native block's statuses: STATUS_CODES[c], lowercase


def _root(parents: list[str]) -> int | None:
    return next((k for k, parent in enumerate(parents) if not parent), None)


def _view(trace_id: str, columns: Mapping[str, list[Any]], rows: list[int]) -> TraceView:
    cols = {name: [values[i] for i in rows] for name, values in columns.items()}
    return TraceView(trace_id, cols, _root(cols["ParentSpanId"]))


def _native_facts(item: tuple) -> TraceFacts:
    _, spans, statuses, longest, root_duration, root_service, root_span, first_service, start, end, errors = item
    service = root_service if root_duration is not None else first_service
    return TraceFacts(spans, _status_names(statuses), longest, root_duration, root_service, root_span, service, start,
                      end, errors)


@functools.lru_cache(maxsize=None)  # eight bit sets
def _status_names(statuses: int) -> frozenset[str]:
    """The lowercase status names of a native block's bit set."""
    return frozenset(name for bit, name in enumerate(_STATUS_NAMES) if statuses >> bit & 1)


def trace_facts(spans: ColumnBatch | None) -> dict[str, TraceFacts]:
    """{trace id: its facts} over a batch's spans, traces in the order first seen: from the blocks
    of a native batch (no Python object per span), else from the Python columns. Both give the
    same facts (tests/unit/streams/stages/test_tail_native.py)."""
    if spans is None or not len(spans):
        return {}
    if isinstance(spans, NativeBatch):
        cached = getattr(spans, "_trace_facts", None)
        if cached is not None:
            return cached
        out: dict[str, TraceFacts] = {}
        for block, _ in spans.parts:
            for item in block.trace_facts():
                facts = _native_facts(item)
                earlier = out.get(item[0])
                out[item[0]] = facts if earlier is None else earlier.merged(facts)
        spans._trace_facts = out  # type: ignore[attr-defined]  # the blocks are read only until apply_tail
        return out
    columns = spans.columns
    return {trace_id: _view(trace_id, {c: columns[c] for c in FACT_COLUMNS}, rows).facts
            for trace_id, rows in _rows_by_trace(columns).items()}


@dataclass(frozen=True)
class Triage:
    """What a round reads of one routed spans part before decoding it (``native.triage_spans``):
    bounds of its facts, whether the decoder would refuse one of its spans (then it is decoded, so
    that the refusal is seen), and the part cut to its root spans (None without one)."""

    bounds: TraceBounds
    suspicious: bool
    roots: bytes | None


def triage_part(payload: bytes) -> Triage | None:
    """The triage of one routed spans part; None when the native core is missing or the part does
    not parse (then it is decoded, and the decoder says why)."""
    if not native.available():
        return None
    read = native.triage_spans(payload)
    if read is None:
        return None
    spans, statuses, longest, longest_root, suspicious, roots = read
    bounds = TraceBounds(spans, _status_names(statuses), longest if spans else None, longest_root)
    return Triage(bounds, suspicious, roots)


def _needs_columns(policies: tuple[TailPolicy, ...]) -> bool:
    names = policy_columns(policies)
    return names is None or any(name in names for name in ATTRIBUTE_COLUMNS)


def decide(policies: tuple[TailPolicy, ...], trace_ids: list[str], spans: ColumnBatch | None, limiter: RateLimiter,
           now_ms: int) -> dict[str, Decision]:
    """Decisions for traces not decided before, from the spans at hand (none: dropped). Policies
    that read no attribute decide on each trace's facts alone; attribute policies get its columns."""
    out: dict[str, Decision] = {}
    views: dict[str, TraceView] = {}
    if spans is not None and len(spans):
        names = policy_columns(policies)
        if names is None or not set(ATTRIBUTE_COLUMNS).isdisjoint(names):  # attribute policies read columns
            columns, wanted = _columns(spans, names), set(trace_ids)
            views = {t: _view(t, columns, rows) for t, rows in _rows_by_trace(columns).items() if t in wanted}
        else:
            views = {t: TraceView(t, None, facts=f) for t, f in trace_facts(spans).items()}
    for trace_id in trace_ids:
        view = views.get(trace_id)
        if view is None:
            out[trace_id] = Decision(False, 1.0, "", now_ms)
            continue
        verdict: Verdict = evaluate(policies, view, limiter, now_ms // 1000)
        out[trace_id] = Decision(verdict.keep, 1.0 / verdict.probability, verdict.policy, now_ms,
                                 view.facts.root_service, view.facts.root_span)
    return out


def assemble(decisions: dict[str, Decision], new: set[str], spans: ColumnBatch | None, logs: ColumnBatch | None,
             keep_log_severity: int) -> tuple[dict[str, ColumnBatch], Counter]:
    """Rows to write for these traces' parts; ``new`` are the traces decided in this round."""
    counts: Counter = Counter()
    out: dict[str, ColumnBatch] = {}
    span_names: dict[tuple[str, str], tuple[str, str]] = {}
    facts = trace_facts(spans)
    if spans is not None and len(spans):
        if logs is not None and len(logs):  # the logs' span context, read before the blocks drop rows
            scols = _columns(spans, ("TraceId", "SpanId", "SpanName", "SpanKind"))
            span_names = {(t, s): (name, kind) for t, s, name, kind in
                          zip(scols["TraceId"], scols["SpanId"], scols["SpanName"], scols["SpanKind"])}
        kept_traces = {t: d.weight for t, d in decisions.items() if d.keep and t in facts}
        kept = sum(facts[t].span_count for t in kept_traces)
        counts[("tail", "dropped_span")] += len(spans) - kept
        counts[("tail", "kept_span")] += kept
        if kept and isinstance(spans, NativeBatch):  # the blocks drop and weight the rows: no Python row
            out["otel_traces"] = spans.apply_tail_traces(kept_traces)
        elif kept:
            cols = spans.columns
            rows = [i for i, t in enumerate(cols["TraceId"]) if t in kept_traces]
            base_weights = cols.get("SampleWeight") or [1.0] * len(cols["TraceId"])
            batch = {name: [values[i] for i in rows] for name, values in cols.items()}
            batch["SampleWeight"] = [base_weights[i] * kept_traces[cols["TraceId"][i]] for i in rows]
            out["otel_traces"] = ColumnBatch("otel_traces", batch)
    log_counts: Counter = Counter()
    log_errors: Counter = Counter()
    if logs is not None and len(logs):
        cols = logs.columns
        keep_rows = []
        context: dict[str, list[Any]] = {c: [] for c in LOG_CONTEXT_COLUMNS}
        for i, (trace_id, span_id, severity) in enumerate(zip(cols["TraceId"], cols["SpanId"], cols["SeverityNumber"])):
            decision = decisions.get(trace_id) if trace_id else None
            log_counts[trace_id] += 1
            log_errors[trace_id] += int(severity >= 17)
            if trace_id and decision is not None and not decision.keep and severity < keep_log_severity:
                counts[("tail", "dropped_log")] += 1
                continue
            keep_rows.append(i)
            name, kind = span_names.get((trace_id, span_id), ("", ""))
            context["SpanName"].append(name)
            context["SpanKind"].append(kind)
            context["RootServiceName"].append(decision.root_service if decision else "")
            context["RootSpanName"].append(decision.root_span if decision else "")
            context["TraceDecision"].append("" if decision is None else ("keep" if decision.keep else "drop"))
        if keep_rows:
            batch = {name: [values[i] for i in keep_rows] for name, values in cols.items()}
            batch.update(context)
            out["otel_logs"] = ColumnBatch("otel_logs", batch)
    summary: dict[str, list[Any]] = {c: [] for c in SUMMARY_COLUMNS}
    for trace_id in sorted(new):
        decision = decisions[trace_id]
        f = facts.get(trace_id)
        if not decision.keep or f is None:
            continue
        values = [trace_id, f.start, f.end - f.start, decision.root_service, decision.root_span, f.span_count,
                  f.errors, log_counts[trace_id], log_errors[trace_id], "keep", decision.policy, decision.weight,
                  decision.decided_ms]
        for column, value in zip(SUMMARY_COLUMNS, values):
            summary[column].append(value)
    if summary["TraceId"]:
        out[SUMMARY_TABLE] = ColumnBatch(SUMMARY_TABLE, summary)
    return out, counts
