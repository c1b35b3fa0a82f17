"""The span and log stages over a native block (``streams.otlp.native``): decisions once per distinct value.

``run_native(signal, messages, head, labels, catalog, latest_ns)`` does for a run of protobuf span
(log) messages what ``Stages`` does with the Python decoder (decode, head sampling, the label stage,
the service catalog) and returns the same rows and refusals, with the rows held in a
``NativeBatch``. No Python object is made per row: the block lists the distinct values of each thing
a stage decides on, the stage decides each once (its decisions are memoised across batches, as on
the Python path), and the block applies them to every row:

- head sampling of spans: one decision per distinct (service, trace state) (``HeadSampler.decide``);
  the block tests each row's trace id against it, drops rows and sets weights and trace states;
- head sampling of log records: one threshold per distinct service; the block keeps a record
  without a trace id or at ``keep_log_severity`` and above, and tests the others' trace ids;
- the label stage: every attribute pair of every map (``LabelStage.map_value``), every value of
  every text column (``text_value``; a log record's body is one), and span names per distinct
  (name, ``http.route``) (``span_name``), after the maps are cleaned, as on the Python path. Values no detector can
  match are found natively (``_native.maybe_sensitive``, exact when it says no) and never reach
  Python: a plain key's such values stay, a URL key's are templated natively
  (``_native.template_path``, the same function as ``templating.template_path``);
- the catalog: its three columns per distinct service name.

Text columns are found by their type, as the label stage finds them by their cells: a string
column the core adds later is covered without a change here; a column of a type this module does
not know makes ``run_native`` decline the run (``None``: the caller takes the Python path). It
declines too when a decision depends on more than the value (a ``top_k`` rule for the signal).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from streams.otlp import native
from streams.otlp.batch import DecodeResult, RawMessage
from streams.otlp.native import NativeBatch
from streams.stages.catalog import CatalogStage
from streams.stages.labels import EXEMPT_COLUMNS, LabelStage
from streams.stages.sampling import HeadSampler

TABLES = {"traces": "otel_traces", "logs": "otel_logs"}
_TEXT_TYPES = ("String", "Array(String)", "LowCardinality(String)", "Array(LowCardinality(String))")
_MAP_TYPES = ("Map(String, String)", "Array(Map(String, String))", "Map(LowCardinality(String), String)",
              "Array(Map(LowCardinality(String), String))")
_OTHER_TYPES = ("DateTime64(9)", "Array(DateTime64(9))", "UInt64", "UInt32", "Array(UInt32)", "UInt8", "Float64")


def text_columns(table: str = "otel_traces") -> list[str] | None:
    """The columns of ``table`` the label stage's detectors read value by value (span names aside),
    or None when the block has a column of a type not accounted for (fail closed: the Python path)."""
    texts = []
    for name, kind in native.column_types(table).items():
        if name in EXEMPT_COLUMNS or name == "SpanName" or kind in _MAP_TYPES or kind in _OTHER_TYPES:
            continue
        if kind not in _TEXT_TYPES:
            return None
        texts.append(name)
    return texts


def run_native(signal: str, messages: Sequence[RawMessage], max_message_bytes: int, head: HeadSampler,
               labels: LabelStage | None, catalog: CatalogStage, latest_ns: int) -> tuple[DecodeResult, Counter] | None:
    """(result, counts of what the stages changed), or None to take the Python path."""
    if labels is not None and not labels.per_value(signal):
        return None
    table = TABLES[signal]
    texts = text_columns(table)
    if texts is None:
        return None
    block = native.DECODERS[signal]([m.value for m in messages], max_message_bytes)
    result = DecodeResult(dead_letters=native.dead_letters(messages, block),
                          decoded_messages=len(messages) - len(block.errors))
    counts: Counter = Counter()
    if len(block):
        (sample if signal == "traces" else sample_logs)(block, head, counts)
    if len(block) and labels is not None:
        clean(block, signal, labels, texts, counts, latest_ns)
    if len(block) and catalog.entries:
        add_catalog(block, catalog)
    if len(block):
        result.batches[table] = NativeBatch.of(block)
    return result, counts


def sample_logs(block: Any, head: HeadSampler, counts: Counter) -> None:
    """``HeadSampler._logs``: nothing to do at rate 1 everywhere."""
    if not head.rates.active:
        return
    thresholds = [head.threshold(service) for service, _ in block.services()]
    keep_severity = max(0, min(head.keep_log_severity, 255))
    dropped = block.apply_log_head(thresholds, keep_severity)
    if dropped:
        counts[("sampling", "head_dropped_log")] += dropped


def sample(block: Any, head: HeadSampler, counts: Counter) -> None:
    if head.skips_spans(block.any_trace_state()):
        return
    decisions = []
    for service, state, n in block.head_groups():
        mode, threshold, weight, new_state, capped = head.decide(service, state)
        decisions.append((mode, threshold, weight, new_state))
        if capped:
            counts[("sampling", "upstream_weight_capped")] += n  # counted on kept rows; these all stay
    dropped = block.apply_head(decisions)
    if dropped:
        counts[("sampling", "head_dropped_span")] += dropped


def clean(block: Any, signal: str, labels: LabelStage, texts: list[str], counts: Counter, latest_ns: int) -> None:
    _advance(block, labels, counts, latest_ns)
    secrets = labels.ascii_query_secrets()
    if secrets is None:  # every value to Python
        to_decide, templated = block.attribute_pairs(), 0
    else:
        modes = [labels.key_mode(signal, key) for key in block.distinct_keys()]
        to_decide, templated = block.plan_attribute_values(modes, secrets)
    if templated:
        counts[("templating", "url")] += templated
    pairs: dict[tuple[str, str], str | None] = {}
    for key, value, n in to_decide:
        new = labels.map_value(signal, key, value, counts, n)
        if new != value:
            pairs[(key, value)] = new
    block.remap_attribute_values(pairs)  # with the decisions made natively
    for name in texts:
        changes = {}
        for value, n in block.distinct_strings(name, secrets):
            new = labels.text_value(value, counts, n)
            if new != value:
                changes[value] = new
        if changes:
            block.remap_strings(name, changes)
    if signal != "traces":
        return
    names = {}
    for name, route, n in block.span_name_routes("http.route"):
        new = labels.span_name(name, route, counts, n)
        if new != name:
            names[(name, route)] = new
    if names:
        block.remap_span_names("http.route", names)


def _advance(block: Any, labels: LabelStage, counts: Counter, latest_ns: int) -> None:
    """The label stage's clock (``LabelStage.apply``): the newest row time, never past ``latest_ns``."""
    span = block.time_range()
    if span is None:
        return
    newest = span[1]
    if newest > latest_ns:
        counts[("labels", "future_time")] += block.count_after(latest_ns)
        newest = latest_ns
    labels.advance_to(newest)


def add_catalog(block: Any, catalog: CatalogStage) -> None:
    entries = {}
    for service, _ in block.distinct_strings("ServiceName"):
        entry = catalog.entries.get(service)
        if entry is not None:
            entries[service] = (entry.team, entry.tier, entry.owner)
    block.set_catalog(entries)
