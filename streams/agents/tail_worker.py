"""The tail sampler of one worker: the routed parts of the partitions it owns, decided in rounds.

Wiring around the pure pieces of ``streams.stages.tail`` (index, decisions, rows). Durability:

- a part is acked as soon as it is indexed: it is already on the compacted routed topic, which is
  the buffer. After a crash or a rebalance, the owner of a partition restores the partition's
  parts (``ChangelogState`` over the routed topic) and its decisions (over the tail state topic)
  before it takes a new record of it;
- the router stores parts in bulk (``streams.stages.tail``: one record per source message, signal and
  tail partition); a record is tombstoned once every part in it has been written;
- a round decides a partition's due traces: (1) the round's exact list of parts and its decisions
  go to the tail state topic as ``b/<partition>/<id>`` and ``d/<partition>/<id>`` (one write of two
  records, whatever the number of traces); (2) the rows are inserted with tokens
  ``tail:<partition>/<id>:<table>``; (3) records whose parts are all written get tombstones on the
  routed topic and the round's ``b/`` record is deleted. A crash between (1) and (3) leaves the
  round's record: the next owner redoes exactly that round (same parts, same decisions, same
  tokens), and ClickHouse drops what had landed. So each trace is decided once and written once.
- ``d/<partition>/<id>`` is the decision cache (late parts follow their trace's decision, a part a
  router sends again is recognised as written); it is deleted when every decision in it has left the
  cache, and a decision stays while a record holding one of its parts is still on the topic.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson

from sinks.clickhouse import Refusal
from streams.agents import worker_metrics as m
from streams.otlp.batch import ColumnBatch, DeadLetter, RawMessage
from streams.agents.keyed_state import STATE_MAX_BYTES, ChangelogState, NoTransaction
from streams.otlp.values import BadMessage
from streams.stages.pipeline import Stages
from streams.agents.routing import PROTOBUF_HEADER, decode_envelope, decode_traces_envelope, route_partition
from streams.stages.tail import (Decision, TailIndex, assemble, bulk_key, decide, parse_bulk_key, parse_part_key,
                                 part_key, trace_facts, triage_part)
from streams.stages.tail_policies import RateLimiter, TailPolicy, bounded, may_keep

log = logging.getLogger("otelpipe.tail")


def round_parts(spec: dict) -> list[str]:
    """The part keys a recorded round lists (rounds recorded by 0.1 name them "chunks")."""
    return spec.get("parts", spec.get("chunks", []))


def round_spec(raw: bytes) -> dict[str, Any]:
    """A recorded round (``b/``), checked: ValueError or TypeError when it is not one a worker wrote.
    Anyone can produce to the topic, and a round that cannot be redone would stop its partition."""
    spec = orjson.loads(raw)
    if not isinstance(spec, dict) or not isinstance(spec.get("decisions"), dict):
        raise ValueError("not a round")
    for d in spec["decisions"].values():
        Decision.from_dict(d)
    names = [*round_parts(spec), *spec.get("new", [])]
    if not isinstance(round_parts(spec), list) or not isinstance(spec.get("new", []), list) or not all(
            isinstance(k, str) for k in names):
        raise ValueError("a round's parts or traces that are not strings")
    for key in round_parts(spec):
        parse_part_key(key)
    if not set(spec.get("new", [])) <= spec["decisions"].keys():
        raise ValueError("a round's new trace without its decision")
    if "group" in spec:
        group, held = spec["group"], spec.get("held")
        if not isinstance(group, dict) or not isinstance(held, list):
            raise ValueError("a group round without its partitions or parts")
        for p, keys in group.items():
            if not (p.isascii() and p.isdigit() and len(p) < 6 and isinstance(keys, list)
                    and all(isinstance(k, str) for k in keys)):
                raise ValueError("a group round naming no partition of the topic")
            for key in keys:
                parse_part_key(key)
        for topic, partition, offset, sent_ms, parts in held:
            if not (isinstance(topic, str) and type(partition) is int and type(offset) is int
                    and (sent_ms is None or type(sent_ms) is int) and isinstance(parts, list)):
                raise ValueError("a group round's source that is not one")
            for t, signal, part in parts:
                if not (isinstance(t, str) and signal in ("traces", "logs") and isinstance(part, str)):
                    raise ValueError("a group round's part that is not one")
                base64.b64decode(part, validate=True)
    return spec


_HEX = frozenset("0123456789abcdef")
CONCAT_MAX_BYTES = 4 * 1024 * 1024  # the parts of one record decoded as one request, up to this size
GROUP_HELD_MAX_BYTES = 4 * 1024 * 1024  # a group's round holds at most this much OTLP (base64 in its record)
GROUP_RECORD_MAX_BYTES = STATE_MAX_BYTES - 256 * 1024  # past this, the partitions' rounds are recorded one by one
GROUP_RETRY_MS = 300_000  # after a transaction failed before its commit, rounds go one partition at a time this long,
GROUP_RETRY_MAX_MS = 3_600_000  # doubled after each failure in a row, up to this


def _named_partition(rest: str, partitions: int) -> int | None:
    number = rest.split("/", 1)[0]
    if number.isascii() and number.isdigit() and len(number) < 6 and int(number) < partitions:
        return int(number)
    return None


def part_partition(partitions: int) -> Callable[[str], int]:
    """Partition of a tail topic key: a part (``c/<trace>/...``) follows its trace's route, a bulk
    record (``m/<route>/...``) names it (a key naming no partition of the topic: a hash of it)."""

    def of(key: str) -> int:
        if key.startswith("m/"):
            named = _named_partition(key[2:], partitions)
            if named is not None:
                return named
        return route_partition(key[2:].split("/", 1)[0], partitions)

    return of


def state_partition(partitions: int) -> Callable[[str], int]:
    """``b/<partition>/<id>`` and ``d/<partition>/<id>`` name their partition; an older ``d/<trace>``
    follows its trace."""

    def of(key: str) -> int:
        kind, _, rest = key.partition("/")
        named = _named_partition(rest, partitions) if "/" in rest else None
        return named if named is not None else route_partition(rest, partitions)

    return of


def record_parts(key: str, value: bytes, partition: int, partition_of: Callable[[str], int]
                 ) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    """(envelope, [(part key, records, records end ms)]) of a record of the tail topic: a bulk record
    (``m/``) or one part (``c/``). BadMessage or ValueError when it is not one of ours: anyone can
    produce to the topic, so a bulk record must agree with its key and every trace in it must route to
    ``partition``."""
    if key.startswith("c/"):
        parse_part_key(key)
        env = decode_envelope(value)
        return env, [(key, int(env.get("records") or 0), int(env.get("records_end_ms") or 0))]
    route, signal, topic, source_partition, offset = parse_bulk_key(key)
    env = decode_traces_envelope(value)
    if (route != partition or env["route"] != route or env["signal"] != signal or env["source_topic"] != topic
            or env["source_partition"] != source_partition or env["source_offset"] != offset):
        raise ValueError("a bulk record that does not match its key")
    out = []
    for entry in env["traces"]:
        trace_id = entry["trace_id"]
        if not trace_id or not _HEX.issuperset(trace_id):
            raise ValueError("a trace id that is not hex")
        key_of_part = part_key(trace_id, signal, topic, source_partition, offset)
        if partition_of(key_of_part) != route:
            raise ValueError("a trace not routed here")
        out.append((key_of_part, int(entry["records"]), int(entry["records_end_ms"])))
    return env, out


@dataclass
class Decoded:
    """What a round decoded: the spans and logs whose rows it may write, the refusals, the
    messages the rows' ``ORIGIN`` name (per signal), the root spans of the traces dropped on their
    triage, and the spans of the traces not decoded (by trace, as routed)."""

    spans: ColumnBatch | None
    logs: ColumnBatch | None
    dead: list[DeadLetter]
    msgs: dict[str, list[RawMessage]]
    roots: ColumnBatch | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    opened: list = field(default_factory=list)  # [(envelope, [(trace, signal, part)])] as read
    full: set[str] = field(default_factory=set)  # the traces whose spans were decoded


def _joined(env: dict[str, Any], payloads: list[bytes]) -> list[RawMessage]:
    """Payloads of one record as messages of its source: joined up to ``CONCAT_MAX_BYTES`` each."""
    chunks: list[list[bytes]] = []
    size = 0
    for payload in payloads:
        if not chunks or size + len(payload) > CONCAT_MAX_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(payload)
        size += len(payload)
    return [RawMessage(topic=env["source_topic"], partition=env["source_partition"], offset=env["source_offset"],
                       value=b"".join(chunk), headers=(PROTOBUF_HEADER,), timestamp_ms=env["source_timestamp_ms"])
            for chunk in chunks]


class TailWorker:
    def __init__(self, *, stages: Stages, policies: tuple[TailPolicy, ...], parts: ChangelogState,
                 state: ChangelogState, decision_wait_s: float, max_traces: int, max_spans_per_trace: int,
                 decision_cache_s: float, keep_log_severity: int, late_default: str = "policies",
                 group_rounds: bool = True,
                 run_blocking: Callable[..., Awaitable[Any]],
                 write: Callable[[ColumnBatch, str], Awaitable[list[Refusal]]],
                 dead_letters: Callable[[list[DeadLetter]], Awaitable[None]]):
        self.stages = stages
        self.policies = policies
        self.triage = bounded(policies)  # some trace can be dropped without decoding it
        self.parts = parts
        self.state = state
        self.settings = (int(decision_wait_s * 1000), max_traces, max_spans_per_trace, int(decision_cache_s * 1000))
        self.keep_log_severity = keep_log_severity
        self.late_default = late_default
        self.run_blocking = run_blocking
        self.write = write
        self.dead_letters = dead_letters
        self.indexes: dict[int, TailIndex] = {}
        self.limiter = RateLimiter()
        self.group_rounds = group_rounds
        self.groups_after_ms = 0  # rounds over several partitions after this time (a failed transaction waits)
        self.group_failures = 0  # transactions failed in a row
        self.orphans: list[str] = []  # records of rounds whose write failed with an unknown outcome
        self.lock = asyncio.Lock()

    def _index(self, partition: int) -> TailIndex:
        index = self.indexes.get(partition)
        if index is None:
            wait_ms, max_traces, max_spans, cache_ms = self.settings
            index = self.indexes[partition] = TailIndex(wait_ms, max_traces, max_spans, cache_ms)
        return index

    # ------------------------------------------------------------ ownership

    async def ensure(self, partitions: set[int], now_ms: int) -> None:
        """Restore partitions not held yet, then redo the rounds a crash interrupted."""
        missing = {p for p in partitions if p not in self.indexes}
        if not missing:
            return
        await self.parts.restore(missing)
        await self.state.restore(missing)
        for p in sorted(missing):
            index = self._index(p)
            rounds = []
            for key in self.state.keys(p):
                raw = self.state.get(key)
                if raw is None:
                    continue
                try:
                    if key.startswith("d/") and "/" in key[2:]:  # a round's decisions
                        for t, d in orjson.loads(raw)["decisions"].items():
                            index.remember(t, Decision.from_dict(d), record=key)
                    elif key.startswith("d/"):  # one trace's decision (before rounds recorded them)
                        index.remember(key[2:], Decision.from_dict(orjson.loads(raw)), record=key)
                    elif key.startswith("b/"):
                        rounds.append((key, round_spec(raw)))
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.error("tail partition %d: state record skipped, it does not parse (%s)", p,
                              type(exc).__name__)
            in_rounds = {k for _, spec in rounds for k in round_parts(spec)}
            copies = []
            for key in self.parts.keys(p):
                value = self.parts.get(key)
                if value is None:
                    continue
                try:
                    _, parts = record_parts(key, value, p, self.parts.partition_of)
                except (BadMessage, ValueError, TypeError, KeyError):
                    copies.append(key)  # anyone can produce to the topic: not ours, cleared
                    continue
                for part, records, _ in parts:
                    if part in index.stored:
                        continue  # held by another record read before
                    if part in in_rounds:  # the redo below writes it
                        index.add(part, records, now_ms)
                        index.store(part, key, pending=True)
                    else:
                        index.store(part, key, pending=index.add(part, records, now_ms))
                if not index.pending.get(key):  # every part in it written already
                    index.drop_record(key)
                    copies.append(key)
            if copies:
                await self.parts.put({}, copies)
            log.info("tail partition %d: %d traces buffered, %d decisions cached, %d rounds to redo, "
                     "%d records of written parts dropped", p, len(index.traces), len(index.decisions), len(rounds),
                     len(copies))
            for key, spec in sorted(rounds):
                await self._write_round(p, key, spec, now_ms, redo=True)
        self._gauges()

    async def release(self, partitions: set[int]) -> None:
        """Partitions taken away by a rebalance: let the round in progress finish (its parts get their
        tombstones before the next owner restores them), then drop them."""
        async with self.lock:
            self.forget(partitions)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.indexes.pop(p, None)
        self.parts.forget(partitions)
        self.state.forget(partitions)
        self._gauges()

    # ------------------------------------------------------------ input

    async def take(self, records: list[tuple[int, int, str, bytes | None]], now_ms: int,
                   owned: set[int] | None = None) -> None:
        """(partition, offset, key, value) records of the routed topic, in order. With ``owned`` (the
        partitions this worker holds, read under the lock), records of other partitions are passed
        over: events fetched before a rebalance can still be delivered after it took their partition
        away, and restoring that partition here would decide its traces from a copy that misses what
        comes after (kept traces decided on part of their spans, or written by two workers). Their
        owner restores them from the topic."""
        async with self.lock:
            if owned is not None:
                records = [r for r in records if r[0] in owned]
            await self.ensure({p for p, _, _, _ in records}, now_ms)
            copies = []
            cache_ms = self.settings[3]
            for partition, offset, key, value in records:
                if (offset < self.parts.end_offsets.get(partition, 0) or value is None
                        or not key.startswith(("c/", "m/"))):
                    continue  # restored already, a tombstone, or not a part
                try:
                    env, parts = record_parts(key, value, partition, self.parts.partition_of)
                except (BadMessage, ValueError, TypeError, KeyError) as exc:
                    # what the record says stays out of the log: anyone can produce to the topic
                    log.error("a record of partition %d at offset %d is not a routed part, skipped (%s)",
                              partition, offset, type(exc).__name__)
                    continue
                index = self._index(partition)
                sent_ms = env["source_timestamp_ms"]
                for part, n, end_ms in parts:
                    if part in index.stored:
                        continue  # buffered already (a record delivered again)
                    late = bool(self.late_default != "policies" and end_ms and sent_ms and sent_ms - end_ms > cache_ms)
                    if index.add(part, n, now_ms, late=late):
                        index.store(part, key, pending=True)
                if index.pending.get(key):
                    self.parts.apply_local(partition, key, value)
                else:  # written already, sent again by a router that crashed before its ack
                    copies.append(key)
            if copies:
                m.STAGE_CHANGES.labels("tail", "duplicate_part").inc(len(copies))
                await self.parts.put({}, copies)
            # the buffer gauges are set on the tick (counting them walks every buffered trace)
            # Decisions happen in rounds on the worker's one-second tick, not per batch: fewer,
            # larger inserts (a round per batch spent a fifth of the worker in small inserts).

    async def tick(self, now_ms: int | None = None, owned: set[int] | None = None) -> None:
        """Decide what is due; first restore ``owned`` partitions not held yet (a partition whose
        buffered traces get no new part after a restart is restored here, not by a record)."""
        async with self.lock:
            now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
            if owned:  # read now, under the lock: a revoke in the meantime has taken its partitions out
                await self.ensure(set(owned), now_ms)
            await self._rounds(now_ms)

    # ------------------------------------------------------------ rounds

    async def _rounds(self, now_ms: int) -> None:
        if self.orphans:  # the records of a round whose write failed, maybe written: deleted first
            await self.state.put({}, list(self.orphans))
            self.orphans.clear()
        due = {p: d for p, index in list(self.indexes.items()) if (d := index.due(now_ms))}
        # one round for every partition with due traces (one insert per table, not one per partition)
        if not (len(due) > 1 and self.group_rounds and now_ms >= self.groups_after_ms
                and await self._decide(due, now_ms)):
            for partition, traces in due.items():
                await self._decide({partition: traces}, now_ms)
        for partition, index in list(self.indexes.items()):
            expired = index.expired_decisions(now_ms)
            if expired:
                empty = [record for t in expired for record in index.forget_decision(t)]
                if empty:
                    await self.state.put({}, empty)
        self._gauges()

    def _gauges(self) -> None:
        m.BUFFERED_TRACES.set(sum(i.in_flight() for i in self.indexes.values()))
        m.BUFFERED_SPANS.set(sum(i.buffered_spans() for i in self.indexes.values()))

    def _sources(self, index: TailIndex, keys: list[str]) -> list[tuple[str, list[str]]]:
        """The records on the topic holding these parts, in order of first mention, each with the
        parts wanted of it."""
        out: dict[str, list[str]] = {}
        for key in keys:
            record = index.stored.get(key)
            if record is not None:
                out.setdefault(record, []).append(key)
        return [(record, wanted) for record, wanted in out.items() if self.parts.get(record) is not None]

    def _open(self, sources: list[tuple[str, list[str]]]) -> list[tuple[dict[str, Any], list[tuple[str, str, bytes]]]]:
        """The wanted parts of each source record: [(envelope, [(trace, signal, part)])]."""
        opened: list[tuple[dict[str, Any], list[tuple[str, str, bytes]]]] = []
        for record, wanted in sources:
            value = self.parts.get(record)
            if value is None:
                continue
            if record.startswith("c/"):
                env = decode_envelope(value)
                trace_id, signal = parse_part_key(wanted[0])
                parts = [(trace_id, signal, env["payload"])]
            else:
                env = decode_traces_envelope(value)
                by_trace = {e["trace_id"]: e["payload"] for e in env["traces"]}
                parts = []
                for key in wanted:
                    trace_id, signal = parse_part_key(key)
                    if (payload := by_trace.get(trace_id)) is not None:
                        parts.append((trace_id, signal, payload))
            opened.append((env, parts))
        return opened

    def _decode(self, sources: list[tuple[str, list[str]]], known: dict[str, Decision], undecided: set[str],
                held_limit: int | None = None) -> Decoded | None:
        return self._decode_opened(self._open(sources), known, undecided, held_limit)

    def _decode_opened(self, opened: list[tuple[dict[str, Any], list[tuple[str, str, bytes]]]],
                       known: dict[str, Decision], undecided: set[str], held_limit: int | None = None
                       ) -> Decoded | None:
        """On the blocking thread: the rows a round needs, through the worker's stages, with the
        messages decoded (which the rows' ``ORIGIN`` indices name, per signal).

        A trace's spans are decoded when its rows may be written: it is kept (``known``), has logs
        here (their span context), or may be kept by the policies (``undecided``). The other
        traces' parts are only read (``triage_part``): a trace the policies cannot keep is dropped
        on that reading, its root spans alone decoded for the decision's root service and name; a
        trace decided drop before needs nothing. A part the decoder would refuse is decoded all
        the same, so its refusal is seen. The wanted parts of one record are decoded as one
        request, their payloads joined (a protobuf request's repeated fields concatenate), up to
        ``CONCAT_MAX_BYTES`` each: one message per source message, not per trace.

        With ``held_limit`` (a round over several partitions, whose record holds the parts it
        decodes): None, before decoding anything, when those parts come to more bytes than that."""
        span_parts: dict[str, list[tuple[int, bytes]]] = {}  # trace → [(record number, part)]
        with_logs: set[str] = set()
        for number, (env, parts) in enumerate(opened):
            for trace_id, signal, payload in parts:
                if signal == "logs":
                    with_logs.add(trace_id)
                else:
                    span_parts.setdefault(trace_id, []).append((number, payload))
        full, roots, skipped = self._plan(span_parts, with_logs, known, undecided)
        if held_limit is not None and sum(len(payload) for _, parts in opened for t, signal, payload in parts
                                          if signal == "logs" or t in full) > held_limit:
            return None
        msgs: dict[str, list[RawMessage]] = {"traces": [], "logs": []}
        root_msgs: list[RawMessage] = []
        for number, (env, parts) in enumerate(opened):
            wanted = [(signal, payload) for trace_id, signal, payload in parts if signal == "logs" or trace_id in full]
            for signal in ("traces", "logs"):
                msgs[signal].extend(_joined(env, [p for s, p in wanted if s == signal]))
            root_msgs.extend(_joined(env, [r for trace_id, signal, _ in parts if signal == "traces"
                                           and (r := roots.get((number, trace_id)))]))
        spans = self.stages.run("traces", msgs["traces"]) if msgs["traces"] else None
        logs = self.stages.run("logs", msgs["logs"]) if msgs["logs"] else None
        rooted = self.stages.run("traces", root_msgs) if root_msgs else None
        dead = [d for result in (spans, logs, rooted) if result for d in result.dead_letters]
        return Decoded(spans.batches.get("otel_traces") if spans else None,
                       logs.batches.get("otel_logs") if logs else None, dead, msgs,
                       rooted.batches.get("otel_traces") if rooted else None, skipped, opened, full)

    def _plan(self, span_parts: dict[str, list[tuple[int, bytes]]], with_logs: set[str], known: dict[str, Decision],
              undecided: set[str]) -> tuple[set[str], dict[tuple[int, str], bytes], dict[str, int]]:
        """(traces whose spans to decode, {(record number, trace dropped on its triage): its part
        there cut to its roots}, {trace not decoded: its spans as routed})."""
        full: set[str] = set()
        roots: dict[tuple[int, str], bytes] = {}
        skipped: dict[str, int] = {}
        for trace_id, parts in span_parts.items():
            decision = known.get(trace_id)
            if trace_id in with_logs or (decision is not None and decision.keep):
                full.add(trace_id)
                continue
            if decision is None and (trace_id not in undecided or not self.triage):
                full.add(trace_id)
                continue
            read = [triage_part(payload) for _, payload in parts]
            triaged = [r for r in read if r is not None and not r.suspicious]
            if len(triaged) < len(read):  # a part to decode for its refusal, or one the triage cannot read
                full.add(trace_id)
                continue
            bounds = triaged[0].bounds
            for r in triaged[1:]:
                bounds = bounds.merged(r.bounds)
            if decision is None and may_keep(self.policies, trace_id, bounds):
                full.add(trace_id)
                continue
            if decision is None:
                for (number, _), r in zip(parts, triaged):
                    if r.roots is not None:
                        roots[(number, trace_id)] = r.roots
            skipped[trace_id] = bounds.spans
        return full, roots, skipped

    async def _decide(self, due_by: dict[int, dict[str, str]], now_ms: int) -> bool:
        """Decide the due traces of one partition, or of several in one round (a group): False when a
        group's record would be too large, and nothing was recorded."""
        indexes = {p: self.indexes[p] for p in due_by}
        home = min(due_by)
        group = len(due_by) > 1
        partition_of = {t: p for p, due in due_by.items() for t in due}  # a trace routes to one partition
        due = {t: why for traces in due_by.values() for t, why in traces.items()}
        keys_by = {p: [k for t in traces for k in indexes[p].traces[t].parts] for p, traces in due_by.items()}
        keys = [k for p in due_by for k in keys_by[p]]
        sources_by = {p: self._sources(indexes[p], keys_by[p]) for p in due_by}
        sources = [s for p in due_by for s in sources_by[p]]
        undecided = [t for t, why in due.items()
                     if t not in indexes[partition_of[t]].decisions and why != "late_default"]
        defaulted = {t: Decision(self.late_default == "keep", 1.0, "late_default", now_ms) for t, why in due.items()
                     if why == "late_default"}
        known = {t: indexes[partition_of[t]].decisions[t] for t in due
                 if t in indexes[partition_of[t]].decisions} | defaulted
        decoded = await self.run_blocking(self._decode, sources, known, set(undecided),
                                          GROUP_HELD_MAX_BYTES if group else None)
        if decoded is None:
            return False  # too much to hold: nothing decoded yet
        held = _held(decoded) if group else []
        held_bytes = sum(len(part) for _, _, _, _, parts in held for _, _, part in parts)
        if group and held_bytes * 4 // 3 + 3 * sum(map(len, keys)) + 400 * len(due) > GROUP_RECORD_MAX_BYTES:
            return False  # checked before deciding (a rate limit counts what it decides)
        triaged = {t for t in undecided if t in decoded.skipped}
        fresh = decide(self.policies, [t for t in undecided if t not in triaged], decoded.spans, self.limiter, now_ms)
        root_facts = trace_facts(decoded.roots)
        for t in sorted(triaged):  # no policy can keep it: dropped, with its root as decoded
            f = root_facts.get(t)
            fresh[t] = Decision(False, 1.0, "", now_ms, f.root_service if f else "", f.root_span if f else "")
        decisions = known | fresh
        decisions = {t: decisions[t].with_parts(indexes[partition_of[t]].traces[t].parts) for t in due}
        spec: dict[str, Any] = {"parts": keys, "new": sorted(fresh),
                                "decisions": {t: d.as_dict() for t, d in decisions.items()}}
        gid = uuid.uuid4().hex
        round_id = f"{home}/{gid}"
        # (1) the round and its decisions, before any of its rows
        if not group:  # two records of one partition, whatever the traces
            await self._record({f"b/{round_id}": orjson.dumps(spec),
                                f"d/{round_id}": orjson.dumps({"decisions": spec["decisions"]})}, atomic=False)
        else:  # the round at home, with what its rows are made of; each partition's decisions: one transaction
            spec["group"] = {str(p): keys_by[p] for p in due_by}
            spec["held"] = [[topic, partition, offset, sent_ms, [[t, signal, base64.b64encode(part).decode("ascii")]
                                                                  for t, signal, part in parts]]
                            for topic, partition, offset, sent_ms, parts in held]
            record = orjson.dumps(spec)
            if len(record) > GROUP_RECORD_MAX_BYTES:  # past the estimate above: decided again one by one
                return False
            by_partition = {p: {t: spec["decisions"][t] for t in traces} for p, traces in due_by.items()}
            try:
                await self._record({f"b/{round_id}": record} | {
                    f"d/{p}/{gid}": orjson.dumps({"decisions": by_partition[p]}) for p in due_by}, atomic=True)
            except NoTransaction as exc:  # nothing of it is read: the partitions' rounds go one by one
                wait_ms = min(GROUP_RETRY_MS << self.group_failures, GROUP_RETRY_MAX_MS)
                self.group_failures += 1
                self.groups_after_ms = now_ms + wait_ms
                log.warning("tail rounds over several partitions need a Kafka transaction, which failed: %s. "
                            "Rounds go partition by partition for %d s. The broker must allow transactions (its "
                            "transaction.state.log.replication.factor and min.isr at most its brokers), and "
                            "otelpipe's principal needs Write and Describe on its transactional ids; or set "
                            "sampling.tail_group_rounds = false.", exc, wait_ms // 1000)
                return False
            self.group_failures = 0
        outcomes = Counter((reason, "keep" if decisions[t].keep else "drop") for t, reason in due.items())
        for labels, n in outcomes.items():
            m.TAIL_DECISIONS.labels(*labels).inc(n)
        await self._write_round(home, f"b/{round_id}", spec, now_ms, redo=False, decoded=decoded, sources=sources_by,
                                decided=decisions)
        for t, d in decisions.items():
            p = partition_of[t]
            indexes[p].remember(t, d, record=f"d/{p}/{gid}")
        for p in due_by:
            indexes[p].late.difference_update(defaulted)
        return True

    async def _record(self, records: dict[str, bytes], atomic: bool) -> None:
        """Write a round's records. When the write fails in a way that leaves its outcome unknown
        (the broker may have them), the round is not written and its traces are decided again: its
        records are deleted first, before any other round, so that no restore redoes it after its
        traces were written under another round's tokens."""
        try:
            if atomic:
                await self.state.put_atomic(records)
            else:
                await self.state.put(records)
        except NoTransaction:
            raise  # none of it will ever be read
        except Exception:
            self.orphans.extend(records)
            raise

    async def _write_round(self, partition: int, round_key: str, spec: dict[str, Any], now_ms: int, redo: bool,
                           decoded: Decoded | None = None,
                           sources: dict[int, list[tuple[str, list[str]]]] | None = None,
                           decided: dict[str, Decision] | None = None) -> None:
        """Write a recorded round (``spec``) whose record is at home in ``partition``; ``decided``:
        its decisions as objects, and ``sources`` the records holding its parts by partition, when
        at hand. A group's round is redone from the parts its record
        holds (the other partitions' owners have cleared their parts as written already); of its
        parts, those of the partitions held here are cleared."""
        keys_by = ({int(p): keys for p, keys in spec["group"].items()} if "group" in spec
                   else {partition: round_parts(spec)})
        decisions = decided if decided is not None else {t: Decision.from_dict(d) for t, d in spec["decisions"].items()}
        if decoded is None:
            if "group" in spec:
                decoded = await self.run_blocking(self._decode_opened, _opened_of(spec["held"]), decisions, set())
            else:
                sources = {partition: self._sources(self._index(partition), round_parts(spec))}
                decoded = await self.run_blocking(self._decode, sources[partition], decisions, set())
        assert decoded is not None  # (only a held limit makes it None)
        spans, logs, dead, msgs = decoded.spans, decoded.logs, decoded.dead, decoded.msgs
        batches, counts = assemble(decisions, set(spec["new"]), spans, logs, self.keep_log_severity)
        counts[("tail", "dropped_span")] += sum(decoded.skipped.values())
        token = f"tail:{round_key[2:]}"
        dead = list(dead)
        for table, batch in batches.items():  # (2) the rows, with the round's tokens
            refused = await self.write(batch, f"{token}:{table}")
            signal = "logs" if table == "otel_logs" else "traces"
            for origin in sorted({r.origin for r in refused}):
                why = "; ".join(f"{r.table}: {r.error}" for r in refused if r.origin == origin)
                dead.append(DeadLetter(msgs[signal][origin], "refused_by_clickhouse", why))
        if dead:
            await self.dead_letters(dead)
        for (stage, reason), n in counts.items():
            m.STAGE_CHANGES.labels(stage, reason).inc(n)
        # (3) records with nothing more to write are done, and so is the round
        written = 0
        for p, keys in keys_by.items():
            index = self.indexes.get(p)
            if index is None:
                continue  # a partition of the group held by another worker: its owner cleared its parts
            held = sources[p] if sources is not None else self._sources(index, keys)
            keys = [k for _, wanted in held for k in wanted]
            await self.parts.put({}, index.completed_by(keys))
            index.finish(keys)
            written += len(keys)
        await self.state.put({}, [round_key])
        if redo:
            record = "d/" + round_key[2:]
            index = self._index(partition)
            own = {parse_part_key(k)[0] for k in keys_by.get(partition, ())}
            for t, d in decisions.items():
                if t in own:
                    index.remember(t, d, record=record if self.state.get(record) is not None else None)
            log.warning("tail partition %d: redid round %s (%d parts)", partition, round_key, written)


def _held(decoded: Decoded) -> list[tuple[str, int, int, int, list[tuple[str, str, bytes]]]]:
    """What a group's round record holds so that its rows can be made again without the routed
    topic: the parts of the traces whose spans were decoded, and every log part."""
    out = []
    for env, parts in decoded.opened:
        kept = [(t, signal, part) for t, signal, part in parts if signal == "logs" or t in decoded.full]
        if kept:
            out.append((env["source_topic"], env["source_partition"], env["source_offset"],
                        env["source_timestamp_ms"], kept))
    return out


def _opened_of(held: list) -> list[tuple[dict[str, Any], list[tuple[str, str, bytes]]]]:
    """The parts a group's round record holds, as ``TailWorker._open`` gives them."""
    return [({"source_topic": topic, "source_partition": partition, "source_offset": offset,
              "source_timestamp_ms": sent_ms}, [(t, signal, base64.b64decode(part)) for t, signal, part in parts])
            for topic, partition, offset, sent_ms, parts in held]
