"""The fuzz targets' check functions: one input (bytes) in, nothing out, an exception on a broken contract.

Each check drives one entry point with one input and asserts its contract:

- ``decode_messages`` never raises, and every message ends as rows or exactly one ``DeadLetter``;
  a message that fails half-way leaves none of its rows behind (each input is decoded twice in one
  run, and both copies must end alike, row for row);
- ``decode_envelope`` raises ``BadMessage`` only, and the tail worker takes any routed record
  (an envelope or not) through its rounds without raising;
- ``Stages.run`` never raises, with every stage configured (sampling, redaction, cardinality rules,
  naming, series budgets, catalog);
- ``spans_proto`` and ``logs_proto`` also run the native decoder (streams.otlp._native), which must
  not raise;
- ``native_differential`` (``native_logs_differential``): the native span (log) decoder refuses the
  messages the Python decoder refuses, with the same reason and detail, and stores the same rows
  otherwise.

An uncaught exception is a finding with its own traceback; ``ContractViolation`` is a finding the
check detected. The checks are pure (fresh stateful stages per input, no I/O, no globals changed),
so ``tests/fuzz/test_regressions.py`` replays the saved inputs through the same functions, and the
fuzz driver (``tests/fuzz/driver.py``) imports this module under atheris' instrumentation.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from streams.agents.routing import decode_envelope
from streams.agents.tail_worker import TailWorker, part_partition, state_partition
from streams.otlp.batch import ColumnBatch, DecodeResult, RawMessage
from streams.otlp.columns import SIGNAL_TABLES, SIGNALS, TABLE_COLUMNS
from streams.otlp.decode import decode_messages
from streams.otlp.values import BadMessage
from streams.stages.catalog import CatalogEntry, CatalogStage
from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.sampling import HeadRates, HeadSampler
from streams.stages.tail import bulk_key, part_key
from streams.stages.tail_policies import parse_policies
from tests.standins import StateStandIn, TopicStandIn

ORIGIN = "_origin"  # streams.otlp.batch.ORIGIN: the index of the message a row came from
MAX_NS = 2**63 - 1  # DateTime64(9)
TIMESTAMP_COLUMNS = {"Timestamp", "ObservedTimestamp", "StartTimeUnix", "TimeUnix"}
TIMESTAMP_LIST_COLUMNS = {"Events.Timestamp", "Exemplars.TimeUnix"}
JSON_HEADER = ("content-type", b"application/json; charset=utf-8")
PROTO_HEADER = ("content-type", b"application/x-protobuf")


class ContractViolation(AssertionError):
    """An entry point broke its contract without raising: the message says which part."""


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ContractViolation(what)


# ---------------------------------------------------------------- comparing values


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types; NaN equals NaN and -0.0 differs from 0.0 (what ClickHouse stores)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    return a == b


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> str:
    if len(a) != len(b):
        return f"{len(a)} values vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        if not same(x, y):
            return f"row {i}: {x!r:.300} vs {y!r:.300}"
    return "no difference"


def _storable(value: Any, column: str) -> None:
    """Strings that encode as UTF-8 (ClickHouse's client encodes every one), numbers, nested lists and maps."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractViolation(f"{column}: {value!r:.200} is not encodable as UTF-8") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _expect(isinstance(k, str), f"{column}: map key {k!r:.100} is not a string")
            _storable(k, column)
            _storable(v, column)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _storable(v, column)
    else:
        _expect(value is None or isinstance(value, (int, float)), f"{column}: {type(value).__name__} value")


# ---------------------------------------------------------------- the decode contract


def check_batch(table: str, batch: ColumnBatch, messages: int, refused: set[int],
                added_columns: bool = False) -> list[int] | None:
    """One table batch: the table's columns in order (stages may add some: ``added_columns``), equal
    lengths, values it can store, rows only from messages that were not refused. Returns the rows'
    origins (None without them)."""
    _expect(isinstance(batch, ColumnBatch) and batch.table == table, f"batch for {table} is {batch!r:.200}")
    names = list(batch.columns)
    expected = TABLE_COLUMNS.get(table)
    if expected is not None and added_columns:
        _expect(set(expected) <= set(names), f"{table}: columns {names}")
    elif expected is not None:
        _expect(names[: len(expected)] == expected and set(names[len(expected):]) <= {ORIGIN},
                f"{table}: columns {names}")
    lengths = {name: len(values) for name, values in batch.columns.items()}
    _expect(len(set(lengths.values())) == 1, f"{table}: column lengths differ: {lengths}")
    _expect(len(batch) > 0, f"{table}: empty batch")
    for name, values in batch.columns.items():
        if name == ORIGIN:
            continue
        if name in TIMESTAMP_COLUMNS:
            _expect(all(type(v) is int and 0 <= v <= MAX_NS for v in values), f"{table}.{name}: {values!r:.300}")
        elif name in TIMESTAMP_LIST_COLUMNS:
            _expect(all(type(t) is int and 0 <= t <= MAX_NS for v in values for t in v),
                    f"{table}.{name}: {values!r:.300}")
        for v in values:
            _storable(v, f"{table}.{name}")
    origins = batch.columns.get(ORIGIN)
    if origins is None:
        return None
    _expect(all(type(o) is int and 0 <= o < messages for o in origins), f"{table}: origins {origins!r:.200}")
    _expect(origins == sorted(origins), f"{table}: origins out of order {origins!r:.200}")
    _expect(not set(origins) & refused, f"{table}: rows of refused messages {sorted(set(origins) & refused)}")
    return list(origins)


def check_decode(signal: str, messages: Sequence[RawMessage], result: DecodeResult,
                 tables: Sequence[str] | None = None) -> set[int]:
    """The decode contract; returns the indices of the refused messages."""
    _expect(isinstance(result, DecodeResult), f"result is {type(result).__name__}")
    index_of = {id(m): i for i, m in enumerate(messages)}
    refused: set[int] = set()
    for letter in result.dead_letters:
        i = index_of.get(id(letter.message))
        _expect(i is not None, f"dead letter for a message that was not given: {letter.message!r:.200}")
        _expect(i not in refused, f"message {i} has two dead letters")
        _expect(isinstance(letter.reason, str) and letter.reason, f"dead letter reason {letter.reason!r}")
        _expect(isinstance(letter.detail, str), f"dead letter detail {letter.detail!r:.100}")
        letter.headers()  # what the dead-letter producer sends: must build for any letter
        refused.add(i)
    _expect(result.decoded_messages + len(refused) == len(messages),
            f"{result.decoded_messages} decoded + {len(refused)} refused != {len(messages)} messages")
    allowed = set(tables if tables is not None else SIGNAL_TABLES[signal])
    _expect(set(result.batches) <= allowed, f"tables {sorted(result.batches)} for {signal}")
    for table, batch in result.batches.items():
        check_batch(table, batch, len(messages), refused)
    return refused


def _rows_of(batch: ColumnBatch, origin: int) -> dict[str, list[Any]]:
    origins = batch.columns[ORIGIN]
    return {name: [v for v, o in zip(values, origins) if o == origin]
            for name, values in batch.columns.items() if name != ORIGIN}


def check_copies_alike(result: DecodeResult, copies: int) -> None:
    """Messages 0..copies-1 held the same payload: the same outcome, the same rows."""
    reasons = {letter.message.offset: letter.reason for letter in result.dead_letters}
    outcome = [reasons.get(i) for i in range(copies)]
    _expect(len(set(outcome)) == 1, f"copies of one payload ended differently: {outcome}")
    for table, batch in result.batches.items():
        if ORIGIN not in batch.columns:
            continue
        first = _rows_of(batch, 0)
        for i in range(1, copies):
            other = _rows_of(batch, i)
            for name, values in first.items():
                _expect(same(values, other[name]),
                        f"{table}.{name}: copy {i} differs: {first_difference(values, other[name])}")


def _decode_copies(signal: str, payload: bytes, encoding: str, headers: Sequence[tuple] = ((), ()),
                   **kwargs: Any) -> DecodeResult:
    messages = [RawMessage("fuzz", 0, i, payload, headers=tuple(h)) for i, h in enumerate(headers)]
    result = decode_messages(signal, messages, encoding, **kwargs)
    check_decode(signal, messages, result)
    check_copies_alike(result, len(messages))
    return result


# ---------------------------------------------------------------- decode targets


def _native_copies(signal: str, data: bytes) -> None:
    from streams.otlp import native

    if native.available():
        block = native.DECODERS[signal]([data, data])
        _expect(len(block.errors) in (0, 2) and block.rows % 2 == 0, "the native decoder read two copies unalike")


def check_spans_proto(data: bytes) -> None:
    """Traces protobuf through the Python decoder (the contract) and the native one (never raises)."""
    _decode_copies("traces", data, "otlp_proto")
    _native_copies("traces", data)


def check_logs_proto(data: bytes) -> None:
    _decode_copies("logs", data, "otlp_proto")
    _native_copies("logs", data)


def check_metrics_proto(data: bytes) -> None:
    _decode_copies("metrics", data, "otlp_proto")


def check_otlp_json(data: bytes) -> None:
    """The same bytes as each signal: by the topic's encoding, and by a content-type header on a
    topic configured for protobuf."""
    for signal in SIGNALS:
        _decode_copies(signal, data, "otlp_json", headers=((), (JSON_HEADER,)))


def native_disagreement(data: bytes, signal: str = "traces") -> str | None:
    """How the native span (log) decoder and the Python one disagree (None: they agree).
    The input is decoded alone and between two valid requests, so a refusal half-way must leave
    none of its rows behind; the Native block of the result is built too."""
    from streams.otlp import native

    _expect(native.available(), "streams.otlp._native is not built")
    table = SIGNAL_TABLES[signal][0]
    good = good_request(signal)
    for payloads in ([data], [good, data, good]):
        messages = [RawMessage("fuzz", 0, i, p) for i, p in enumerate(payloads)]
        python = decode_messages(signal, messages, "otlp_proto")
        check_decode(signal, messages, python)
        block = native.DECODERS[signal](payloads)
        letters = [(d.message.offset, d.reason, d.detail) for d in python.dead_letters]
        if block.errors != letters:
            if {e[0] for e in block.errors} == {d[0] for d in letters}:
                return f"refusals differ: native {block.errors!r:.300} vs Python {letters!r:.300}"
            native_refuses = {e[0] for e in block.errors} - {d[0] for d in letters}
            side, refused = ("native", block.errors) if native_refuses else ("Python", letters)
            detail = f"{refused[0][1]}: {refused[0][2][:200]}" if refused else "no refusal"
            return f"only the {side} decoder refuses ({detail}); the other stores {block.rows} native rows"
        columns = block.to_columns()
        batch = python.batches.get(table)
        if batch is None:
            if block.rows:
                return f"the native decoder stores {block.rows} rows, the Python decoder none"
            continue
        for name in TABLE_COLUMNS[table]:
            if not same(columns[name], batch.columns[name]):
                return f"{table}.{name}: native vs Python: {first_difference(columns[name], batch.columns[name])}"
        if block.origins() != batch.columns[ORIGIN]:
            return f"origins {block.origins()!r:.100} vs {batch.columns[ORIGIN]!r:.100}"
        _expect(len(block.to_native()) > 0, "empty Native block")
    return (split_disagreement(data, signal) or redaction_disagreement(data, signal)
            or (triage_disagreement(data) if signal == "traces" else None))


# a policy of detectors only, and one that keeps only some keys and drops what the detectors find
REDACTION_POLICIES = ({}, {"redaction": {"mode": "allow", "allow_keys": ["service.*", "http.*", "str"],
                                         "value_action": "drop"}})
_REDACTION_STAGES: list[LabelStage] = []


def redaction_disagreement(data: bytes, signal: str) -> str | None:
    """How the router's native redaction (``redact_payload``) and the protobuf library's walk
    (``redact_request``) disagree on a request (None: they agree): what the native rewrite writes
    must parse to the request the walk leaves, under each policy; where it declines, the walk
    decides, so only what it writes is compared."""
    from google.protobuf.message import DecodeError

    from streams.stages.redact_otlp import redact_payload, redact_request
    from tests.planted_secrets import REQUESTS

    if not _REDACTION_STAGES:
        _REDACTION_STAGES.extend(LabelStage(parse_policy(p)) for p in REDACTION_POLICIES)
    request_type = REQUESTS[signal]
    for labels in _REDACTION_STAGES:
        out = redact_payload(labels, signal, data, 1 << 24)
        if out is None:
            continue
        try:
            walked = request_type.FromString(data)
        except DecodeError:
            return "the native redaction rewrote a request protobuf refuses"
        redact_request(labels, walked)
        try:
            mine = request_type.FromString(out)
        except DecodeError:
            return "the native redaction wrote a request protobuf refuses"
        if mine.SerializeToString(deterministic=True) != walked.SerializeToString(deterministic=True):
            return "the native redaction and the walk leave other requests"
    return None


def split_disagreement(data: bytes, signal: str) -> str | None:
    """How the tail router's native cut by trace and the protobuf library's disagree (None: they
    agree): which requests each declines (and the native redaction check), the traces, their counts
    and ends, and each part's rows."""
    from streams.agents.routing import split_by_trace
    from streams.otlp import native

    try:
        python = split_by_trace(signal, RawMessage("fuzz", 0, 0, data), "otlp_proto", max_total=1 << 40,
                                native_cut=False)
    except BadMessage:
        python = None
    cut = native.split_by_trace(signal, data, 1 << 40)
    if (python is None) != (cut is None):
        return f"only the {'native' if cut is None else 'protobuf'} cut by trace declines it"
    if native.redaction_inputs(signal, data, ["token"]) is None:
        if python is not None:
            return "the redaction check declines what protobuf parses"  # (bytes of unknown fields only pass it)
    elif native.split_by_trace(signal, data, 1 << 40, validated=True) != cut:
        return "the cut of a request the redaction check read differs"
    if cut is None or python is None:
        return None
    if [t for t, _, _, _ in cut] != list(python):
        return "the cuts by trace name other traces"
    table = SIGNAL_TABLES[signal][0]
    for trace_id, part, records, end_ns in cut:
        want, want_records, want_end_ms = python[trace_id]
        if (records, end_ns // 1_000_000) != (want_records, want_end_ms):
            return f"trace {trace_id[:8]}: {records} records ending {end_ns // 1_000_000} vs {want_records}, {want_end_ms}"
        mine, theirs = (decode_messages(signal, [RawMessage("fuzz", 0, 0, p)], "otlp_proto") for p in (part, want))
        if [(d.reason, d.detail) for d in mine.dead_letters] != [(d.reason, d.detail) for d in theirs.dead_letters]:
            return f"trace {trace_id[:8]}: the parts' refusals differ"
        a, b = mine.batches.get(table), theirs.batches.get(table)
        if (a is None) != (b is None) or (a is not None and any(not same(a.columns[n], b.columns[n])
                                                                for n in TABLE_COLUMNS[table])):
            return f"trace {trace_id[:8]}: the parts' rows differ"
    return None


def triage_disagreement(data: bytes) -> str | None:
    """How tail sampling's triage of a spans request (read without decoding) disagrees with its
    decoded rows: a request the decoder takes must give the rows' exact span count, statuses and
    longest durations (of all spans and of the roots), and its cut to the roots must decode to
    exactly the root rows; one it refuses must be flagged (or not parse)."""
    from streams.otlp import native

    read = native.triage_spans(data)
    decoded = decode_messages("traces", [RawMessage("fuzz", 0, 0, data)], "otlp_proto")
    if decoded.dead_letters:
        if read is not None and not read[4]:
            return f"the decoder refuses it ({decoded.dead_letters[0].reason}), the triage does not flag it"
        return None
    if read is None:
        return "the triage cannot read what the decoder takes"
    spans, statuses, longest, longest_root, suspicious, roots = read
    batch = decoded.batches.get("otel_traces")
    cols = batch.columns if batch is not None else {"Duration": [], "StatusCode": [], "ParentSpanId": []}
    want_statuses = sum(1 << ("Unset", "Ok", "Error").index(s) for s in set(cols["StatusCode"]))
    root_durations = [d for d, parent in zip(cols["Duration"], cols["ParentSpanId"]) if not parent]
    if (spans, statuses, longest, longest_root, suspicious) != (
            len(cols["Duration"]), want_statuses, max(cols["Duration"], default=0), max(root_durations, default=None),
            False):
        return "the triage's bounds are not the decoded rows'"
    if roots is None:
        return None if not root_durations else "the triage cut no roots where the rows have some"
    cut = decode_messages("traces", [RawMessage("fuzz", 0, 0, roots)], "otlp_proto")
    rooted = cut.batches.get("otel_traces")
    if cut.dead_letters or rooted is None:
        return "the roots' cut does not decode"
    keep = [i for i, parent in enumerate(cols["ParentSpanId"]) if not parent]
    for name in TABLE_COLUMNS["otel_traces"]:
        if not same(rooted.columns[name], [cols[name][i] for i in keep]):
            return f"the roots' cut decodes to other rows ({name})"
    return None


def check_native_differential(data: bytes) -> None:
    problem = native_disagreement(data)
    _expect(problem is None, f"native and Python span decoders disagree: {problem}")


def check_native_logs_differential(data: bytes) -> None:
    problem = native_disagreement(data, "logs")
    _expect(problem is None, f"native and Python log decoders disagree: {problem}")


# ---------------------------------------------------------------- envelope and tail worker




TAIL_PARTITIONS = 3
TAIL_POLICIES = parse_policies({"policies": [
    {"name": "errors", "type": "status_code", "status_codes": ["Error"]},
    {"name": "slow", "type": "latency", "threshold_ms": 1, "scope": "any"},
    {"name": "baseline", "type": "probabilistic", "rate": 0.5},
]})
_TRACE = "5b8efff798038103d269b633813fc60c"


class _Crash(Exception):
    """The worker dies between two inserts of a round (planned)."""


def _tail_worker(parts: TopicStandIn, written: list, dead: list, late_default: str,
                 state: TopicStandIn | None = None, crash_after: int | None = None) -> TailWorker:
    async def run_blocking(fn, *args):
        return fn(*args)

    async def write(batch, token):
        if crash_after is not None and len(written) >= crash_after:
            raise _Crash()
        written.append((token, batch))
        return []  # ClickHouse refused none of the rows

    async def dead_letters(letters):
        dead.extend(letters)

    return TailWorker(
        stages=Stages(lambda topic: "otlp_proto", 1 << 24, None),
        policies=TAIL_POLICIES,
        parts=StateStandIn(parts, part_partition(TAIL_PARTITIONS)),
        state=StateStandIn(state if state is not None else TopicStandIn(), state_partition(TAIL_PARTITIONS)),
        decision_wait_s=1, max_traces=100, max_spans_per_trace=1000, decision_cache_s=60, keep_log_severity=13,
        late_default=late_default, run_blocking=run_blocking, write=write, dead_letters=dead_letters)


def _check_tail_round(written: list, dead: list, parts: int) -> None:
    """At most one dead letter per trace part (a bulk record's traces may be due in different
    rounds: each refused part is a letter of its own), and well-formed rows."""
    _expect(len(dead) <= parts, f"{len(dead)} dead letters for {parts} parts")
    for token, batch in written:
        _expect(isinstance(token, str) and isinstance(batch, ColumnBatch), f"write({token!r}, {batch!r:.100})")
        check_batch(batch.table, batch, parts, set(), added_columns=True)


def _part(env: dict[str, Any] | None, first: bool) -> tuple[str, int, str]:
    """(key, partition, late_default) of the routed record in one of two runs: traces and logs,
    the envelope's own signal first."""
    signals = ["logs", "traces"] if env is not None and env.get("signal") == "logs" else ["traces", "logs"]
    key = part_key(_TRACE, signals[0 if first else 1], "fuzz", 0, 7)
    return key, part_partition(TAIL_PARTITIONS)(key), "policies" if first else "keep"


def _bulk_part(first: bool) -> tuple[str, int, str]:
    """(key, partition, late_default) of a bulk record of the fuzz message (``m/``: every trace of
    one source message routed to one partition): traces first, then logs."""
    partition = part_partition(TAIL_PARTITIONS)(part_key(_TRACE, "traces", "fuzz", 0, 7))
    return (bulk_key(partition, "traces" if first else "logs", "fuzz", 0, 7), partition,
            "policies" if first else "keep")


def _parts_in(key: str, data: bytes, partition: int) -> int:
    """How many trace parts the routed record holds (1 when it is not one of ours): each may be
    decoded in its own round, and refused there."""
    from streams.agents.tail_worker import record_parts

    try:
        return max(1, len(record_parts(key, data, partition, part_partition(TAIL_PARTITIONS))[1]))
    except (BadMessage, ValueError, TypeError, KeyError):
        return 1


def tail_on_arrival(data: bytes, part: tuple[str, int, str], loop: asyncio.AbstractEventLoop) -> None:
    """The record arrives on the routed topic; a round once it is due."""
    key, partition, late_default = part
    written: list = []
    dead: list = []
    worker = _tail_worker(TopicStandIn(), written, dead, late_default)
    loop.run_until_complete(worker.take([(partition, 1, key, data)], now_ms=0))
    loop.run_until_complete(worker.tick(now_ms=10**9))
    _check_tail_round(written, dead, _parts_in(key, data, partition))


def tail_restored(data: bytes, part: tuple[str, int, str], loop: asyncio.AbstractEventLoop) -> None:
    """The record is on the routed topic when a worker (re)starts: restored, then a round."""
    key, partition, late_default = part
    topic = TopicStandIn()
    topic.records[partition] = {key: data}
    written: list = []
    dead: list = []
    worker = _tail_worker(topic, written, dead, late_default)
    loop.run_until_complete(worker.tick(now_ms=10**9, owned={partition}))
    loop.run_until_complete(worker.tick(now_ms=2 * 10**9))
    _check_tail_round(written, dead, _parts_in(key, data, partition))


def _companion(partition: int) -> tuple[str, int, bytes]:
    """(key, partition, value) of a well-formed bulk record of one slow trace (kept), routed to a
    partition other than ``partition``: with it, a round covers two partitions (a group)."""
    from streams.agents.routing import encode_traces_envelope, split_by_trace
    from tests.otlp_builders import traces_request

    for i in range(64):
        trace = (0xC0FFEE + i).to_bytes(16, "big")
        route = part_partition(TAIL_PARTITIONS)(part_key(trace.hex(), "traces", "fuzz", 0, 9))
        if route != partition:
            break
    request = traces_request(2)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.trace_id = trace
    source = RawMessage("fuzz", 0, 9, request.SerializeToString())
    [(trace_id, (payload, n, end_ms))] = split_by_trace("traces", source, "otlp_proto").items()
    return (bulk_key(route, "traces", "fuzz", 0, 9), route,
            encode_traces_envelope("traces", source, route, [(trace_id, payload, n, end_ms)]))


def tail_in_a_group(data: bytes, part: tuple[str, int, str], loop: asyncio.AbstractEventLoop) -> None:
    """The record and a kept trace of another partition are due in one round (a group), and the
    worker dies after the round's first insert: the next worker redoes the round from what its
    record holds, writing the same rows under the same token, and nothing else."""
    key, partition, late_default = part
    other_key, other, other_value = _companion(partition)
    topic, state = TopicStandIn(), TopicStandIn()
    topic.records = {partition: {key: data}, other: {other_key: other_value}}
    written: list = []
    dead: list = []
    first = _tail_worker(topic, written, dead, late_default, state=state, crash_after=1)
    loop.run_until_complete(first.take([(partition, 1, key, data), (other, 1, other_key, other_value)], now_ms=0))
    try:
        loop.run_until_complete(first.tick(now_ms=10**9))
        crashed = False
    except _Crash:
        crashed = True
    again_written: list = []
    again_dead: list = []
    again = _tail_worker(topic, again_written, again_dead, late_default, state=state)
    loop.run_until_complete(again.ensure({0, 1, 2}, now_ms=10**9 + 1))
    if crashed:
        _expect(bool(again_written) and again_written[0][0] == written[0][0]
                and len(again_written[0][1]) == len(written[0][1]),
                "the redo of a round did not write its first insert's rows under its token")
    loop.run_until_complete(again.tick(now_ms=2 * 10**9))
    parts = _parts_in(key, data, partition) + 1
    _check_tail_round(written, dead, parts)
    _check_tail_round(again_written, again_dead, parts)


def envelope_of(data: bytes) -> dict[str, Any] | None:
    """decode_envelope's answer (None: BadMessage); any other exception propagates."""
    try:
        env = decode_envelope(data)
    except BadMessage:
        return None
    _expect(isinstance(env, dict), f"envelope is {type(env).__name__}")
    _expect(isinstance(env.get("payload"), bytes), "payload is not bytes")
    return env


def check_envelope(data: bytes) -> None:
    """decode_envelope raises BadMessage only; the tail worker takes the record (on arrival, and
    restored after a restart, envelope or not), as one part or as a bulk record, through a round
    without raising; and through a round over two partitions interrupted by a crash and redone."""
    env = envelope_of(data)
    loop = asyncio.new_event_loop()
    try:
        for first in (True, False):
            for part in (_part(env, first), _bulk_part(first)):
                tail_on_arrival(data, part, loop)
                tail_restored(data, part, loop)
                tail_in_a_group(data, part, loop)
    finally:
        loop.close()


# ---------------------------------------------------------------- the whole stage pipeline

STAGE_POLICIES = (
    None,  # labels off
    parse_policy({}),  # the default policy
    parse_policy({
        "redaction": {"value_action": "hash", "block_keys": ["*secret*", "password"]},
        "templating": {"span_names": True, "url_keys": ["url.path", "url.full", "http.target", "http.url", "str"]},
        "cardinality": {"rules": [
            {"type": "hash", "key": "user.*", "buckets": 3},
            {"type": "template", "key": "http.route"},
            {"type": "truncate_hash", "key": "*", "max_length": 8},
            {"type": "top_k", "key": "host.*", "k": 1, "window_s": 1},
            {"type": "top_k", "key": "pool", "k": 1, "window_s": 1, "signals": ["metrics"]},
            {"type": "drop", "key": "drop.*"},
        ]},
        "naming": {"action": "reject", "unit_suffixes": ["_seconds", "_bytes"], "verbs": ["created", "failed"],
                   "domains": ["orders", "http"]},
        "budgets": {"default_limit": 1, "action": "bucketize", "buckets": 2, "window_s": 1,
                    "metrics": [{"name": "requests*", "limit": 1, "action": "drop"}]},
    }),
    parse_policy({
        "redaction": {"mode": "allow", "allow_keys": ["service.name", "http.*", "str", "int"], "value_action": "drop"},
        "metrics": {"allowed_names": ["mem*", "latency*", "db.*"]},
        "naming": {"action": "report", "separators": [".", "_"]},
        "budgets": {"default_limit": 2, "action": "drop"},
    }),
)
STAGE_CATALOG = {"checkout": CatalogEntry("checkout", team="payments", tier="1", owner="a@example.com",
                                          availability=0.999, latency_ms=250, latency_target=0.99)}


def build_stages(config: int, topic_encoding: str, max_message_bytes: int = 1 << 24) -> Stages:
    """Fresh stages (their top_k and budget state empty) of one of four configurations."""
    policy = STAGE_POLICIES[config]
    if config == 0:
        return Stages(lambda topic: topic_encoding, max_message_bytes, None)
    head = HeadSampler(HeadRates(0.5, {"checkout": 0.25, "unknown_service": 1.0}), keep_log_severity=13)
    return Stages(lambda topic: topic_encoding, max_message_bytes, LabelStage(policy),
                  CatalogStage(STAGE_CATALOG if config != 3 else {}), head=head)


def stages_input(selector: int, payload: bytes, good: bytes | None = None) -> tuple[str, int, str, list[RawMessage]]:
    """What the first byte of a stages input selects: (signal, configuration, topic encoding, messages).

    bits 0-1 signal (traces, logs, metrics, metrics); bit 2 the topic's encoding is otlp_json;
    bits 3-4 the configuration; bit 5 the payload twice; bit 6 a content-type header naming the other
    encoding than the topic's; bit 7 ``good`` (a valid request of the signal) first."""
    signal = SIGNALS[min(selector & 3, 2)]
    encoding = "otlp_json" if selector & 4 else "otlp_proto"
    config = (selector >> 3) & 3
    headers: tuple = ()
    if selector & 64:
        headers = (PROTO_HEADER,) if encoding == "otlp_json" else (JSON_HEADER,)
    values = [payload, payload] if selector & 32 else [payload]
    if selector & 128 and good is not None:
        values.insert(0, good)
    messages = [RawMessage("fuzz", 0, i, v, headers=headers if v is payload else (), timestamp_ms=1_700_000_000_000)
                for i, v in enumerate(values)]
    return signal, config, encoding, messages


_GOOD: dict[str, bytes] = {}


def good_request(signal: str) -> bytes:
    """A valid protobuf request of the signal (tests/otlp_builders.py), built once."""
    if signal not in _GOOD:
        from tests import otlp_builders as b

        build = {"traces": b.traces_request, "logs": b.logs_request, "metrics": b.metrics_request}[signal]
        _GOOD[signal] = build().SerializeToString()
    return _GOOD[signal]


def check_stages(data: bytes) -> None:
    if not data:
        return
    selector, payload = data[0], data[1:]
    signal = SIGNALS[min(selector & 3, 2)]
    signal, config, encoding, messages = stages_input(selector, payload, good_request(signal))
    stages = build_stages(config, encoding)
    stages.begin(signal)
    result = stages.run(signal, messages)
    _expect(isinstance(result, DecodeResult), f"result is {type(result).__name__}")
    index_of = {id(m): i for i, m in enumerate(messages)}
    refused: set[int] = set()
    for letter in result.dead_letters:
        i = index_of.get(id(letter.message))
        _expect(i is not None, "dead letter for a message that was not given")
        _expect(i not in refused, f"message {i} has two dead letters")
        letter.headers()
        refused.add(i)
    _expect(result.decoded_messages + len(refused) == len(messages),
            f"{result.decoded_messages} decoded + {len(refused)} refused != {len(messages)} messages")
    for table, batch in result.batches.items():
        check_batch(table, batch, len(messages), refused, added_columns=True)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class KnownIssue:
    """A finding reported and not fixed yet. The gating targets step around it (so the fuzzers go on
    finding other things); its inputs (tests/fuzz/regressions/known/<issue>/) are replayed through
    ``check``, expected to fail until the fix lands, then they move to regressions/<target>/."""

    target: str
    summary: str
    check: Callable[[bytes], None]


TARGETS: dict[str, Callable[[bytes], None]] = {
    "spans_proto": check_spans_proto,
    "logs_proto": check_logs_proto,
    "metrics_proto": check_metrics_proto,
    "otlp_json": check_otlp_json,
    "envelope": check_envelope,
    "stages": check_stages,
    "native_differential": check_native_differential,
    "native_logs_differential": check_native_logs_differential,
}
# Targets run on their own (``--differential``): slower, and about agreement, not crash safety.
DIFFERENTIAL = {"native_differential", "native_logs_differential"}
CRASH_SAFETY = [name for name in TARGETS if name not in DIFFERENTIAL]

# Reported findings not fixed yet (none today); a fixed one's inputs move to regressions/<target>/.
KNOWN_ISSUES: dict[str, KnownIssue] = {}
