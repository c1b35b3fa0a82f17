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
from streams.agents.keyed_state import ChangelogState
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


_HEX = frozenset("0123456789abcdef")
CONCAT_MAX_BYTES = 4 * 1024 * 1024  # the parts of one record decoded as one request, up to this size


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
                        rounds.append((key, orjson.loads(raw)))
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
        for partition, index in list(self.indexes.items()):
            due = index.due(now_ms)
            if due:
                await self._decide(partition, index, due, now_ms)
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

    def _decode(self, sources: list[tuple[str, list[str]]], known: dict[str, Decision], undecided: set[str]
                ) -> Decoded:
        """On the blocking thread: the rows a round needs, through the worker's stages, with the
        messages decoded (which the rows' ``ORIGIN`` indices name, per signal).

        A trace's spans are decoded when its rows may be written: it is kept (``known``), has logs
        here (their span context), or may be kept by the policies (``undecided``). The other
        traces' parts are only read (``triage_part``): a trace the policies cannot keep is dropped
        on that reading, its root spans alone decoded for the decision's root service and name; a
        trace decided drop before needs nothing. A part the decoder would refuse is decoded all
        the same, so its refusal is seen. The wanted parts of one record are decoded as one
        request, their payloads joined (a protobuf request's repeated fields concatenate), up to
        ``CONCAT_MAX_BYTES`` each: one message per source message, not per trace."""
        opened: list[tuple[dict[str, Any], list[tuple[str, str, bytes]]]] = []  # (envelope, [(trace, signal, part)])
        span_parts: dict[str, list[tuple[int, bytes]]] = {}  # trace → [(record number, part)]
        with_logs: set[str] = set()
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
            for trace_id, signal, payload in parts:
                if signal == "logs":
                    with_logs.add(trace_id)
                else:
                    span_parts.setdefault(trace_id, []).append((len(opened), payload))
            opened.append((env, parts))
        full, roots, skipped = self._plan(span_parts, with_logs, known, undecided)
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
                       rooted.batches.get("otel_traces") if rooted else None, skipped)

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

    async def _decide(self, partition: int, index: TailIndex, due: dict[str, str], now_ms: int) -> None:
        keys = [k for t in due for k in index.traces[t].parts]
        sources = self._sources(index, keys)
        undecided = [t for t, why in due.items() if t not in index.decisions and why != "late_default"]
        defaulted = {t: Decision(self.late_default == "keep", 1.0, "late_default", now_ms) for t, why in due.items()
                     if why == "late_default"}
        known = {t: index.decisions[t] for t in due if t in index.decisions} | defaulted
        decoded = await self.run_blocking(self._decode, sources, known, set(undecided))
        triaged = {t for t in undecided if t in decoded.skipped}
        fresh = decide(self.policies, [t for t in undecided if t not in triaged], decoded.spans, self.limiter, now_ms)
        root_facts = trace_facts(decoded.roots)
        for t in sorted(triaged):  # no policy can keep it: dropped, with its root as decoded
            f = root_facts.get(t)
            fresh[t] = Decision(False, 1.0, "", now_ms, f.root_service if f else "", f.root_span if f else "")
        decisions = known | fresh
        decisions = {t: decisions[t].with_parts(index.traces[t].parts) for t in due}
        outcomes = Counter((reason, "keep" if decisions[t].keep else "drop") for t, reason in due.items())
        for labels, n in outcomes.items():
            m.TAIL_DECISIONS.labels(*labels).inc(n)
        spec = {"parts": keys, "new": sorted(fresh), "decisions": {t: d.as_dict() for t, d in decisions.items()}}
        round_id = f"{partition}/{uuid.uuid4().hex}"
        # (1) the round and its decisions, before any of its rows: two records, whatever the traces
        await self.state.put({f"b/{round_id}": orjson.dumps(spec),
                              f"d/{round_id}": orjson.dumps({"decisions": spec["decisions"]})})
        await self._write_round(partition, f"b/{round_id}", spec, now_ms, redo=False, decoded=decoded, sources=sources,
                                decided=decisions)
        for t, d in decisions.items():
            index.remember(t, d, record=f"d/{round_id}")
        index.late.difference_update(defaulted)

    async def _write_round(self, partition: int, round_key: str, spec: dict[str, Any], now_ms: int, redo: bool,
                           decoded: tuple | None = None, sources: list[tuple[str, list[str]]] | None = None,
                           decided: dict[str, Decision] | None = None) -> None:
        """Write a recorded round (``spec``); ``decided``: its decisions as objects, when at hand."""
        index = self._index(partition)
        if sources is None:
            sources = self._sources(index, round_parts(spec))
        keys = [k for _, wanted in sources for k in wanted]
        decisions = decided if decided is not None else {t: Decision.from_dict(d) for t, d in spec["decisions"].items()}
        if decoded is None:
            decoded = await self.run_blocking(self._decode, sources, decisions, set())
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
        await self.parts.put({}, index.completed_by(keys))
        await self.state.put({}, [round_key])
        index.finish(keys)
        if redo:
            record = "d/" + round_key[2:]
            for t, d in decisions.items():
                index.remember(t, d, record=record if self.state.get(record) is not None else None)
            log.warning("tail partition %d: redid round %s (%d parts)", partition, round_key, len(keys))
