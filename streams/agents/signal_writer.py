"""From a batch of Kafka messages of one signal to durable ClickHouse rows.

``SignalWriter.write(messages)`` (blocking; the worker runs it on the ClickHouse thread):
1. groups messages by (topic, partition) and adds any messages held back from earlier batches;
2. cuts each partition's messages at the ranges the ledger already holds (``plan_segments``);
3. runs the stages on every segment (``streams.stages.pipeline.Stages``), records all new ranges in the ledger with one
   insert, then inserts every table batch of every segment with the segment's token;
4. returns the messages now safe to ack, the dead letters to publish, and holds the rest.

Delivery: at-least-once reads, exactly-once rows. Offsets are acked only after the insert of every
row decoded from them; a retry or a restart re-inserts with the same tokens, which ClickHouse drops.
Any exception leaves nothing acked and the held state as it was, so the caller can retry the
same messages.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import xxhash

from sinks.clickhouse import PARTITION_TIME_COLUMN, RETRY, ClickHouseSink, Refusal, error_kind
from sinks.write_plan import (COMPLETE, HOLD, MISSING, LedgerConflict, RecordedRange, insert_id, plan_segments,
                              recorded_inserts, resolve_overlaps, stale_ranges)
from streams.agents import worker_metrics as m
from streams.otlp.batch import ColumnBatch, DeadLetter, DecodeResult, RawMessage, SourceRange, concat
from streams.stages.pipeline import Stages

log = logging.getLogger("otelpipe.writer")



@dataclass
class WriteOutcome:
    done: list[RawMessage] = field(default_factory=list)  # ack these
    dead_letters: list[DeadLetter] = field(default_factory=list)  # publish these before acking
    rows: dict[str, int] = field(default_factory=dict)
    held: int = 0
    alerts: list[dict] = field(default_factory=list)  # alert records the stages made: publish them


def fingerprint(message: RawMessage) -> int:
    """What identifies a message's content, recorded with the offset ranges (never 0)."""
    return xxhash.xxh64_intdigest(message.value) or 1


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is decoded and inserted.

    A batch allocates hundreds of thousands of dicts and lists that form no reference cycles;
    with the collector on, its generation scans cost as much as the decoding (measured: 48k vs 85k
    spans per CPU-second). Reference counting still frees everything; cycles are collected after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Written:
    rows: dict[str, int] = field(default_factory=dict)
    refused: dict[int, list[Refusal]] = field(default_factory=dict)  # message index → its refusals
    stored: dict[int, list[str]] = field(default_factory=dict)  # message index → tables written before

    def letters(self, messages: Sequence[RawMessage]) -> list[DeadLetter]:
        out = []
        for origin, refusals in sorted(self.refused.items()):
            detail = "; ".join(f"{r.table}: {r.error}" for r in refusals)
            if self.stored.get(origin):
                detail += f" (its rows of {', '.join(self.stored[origin])} were stored)"
            out.append(DeadLetter(messages[origin], "refused_by_clickhouse", detail))
            m.REFUSED_MESSAGES.labels(refusals[0].table).inc()
        return out


def write_refusing(sink: ClickHouseSink, batches: dict[str, ColumnBatch], source: SourceRange | None,
                   token: Callable[[str], str] | None = None) -> Written:
    """Insert a run's table batches (in their order), leaving out the messages ClickHouse refuses.

    A message refused in one table is left out of the tables after it too; its rows in tables
    written before stay (they were accepted, and a retry writes them under the same token). The
    same rows always make the same inserts, so retrying after a crash stores nothing twice.
    """
    written = Written()
    done: list[tuple[str, ColumnBatch]] = []  # tables written (looked into only when a message is refused)
    for table, batch in batches.items():
        batch = batch.without_origins(written.refused)
        if not len(batch):
            continue
        if source is not None:
            batch = batch.with_source(source)
        started = time.perf_counter()
        refusals = sink.write_isolating(batch, token(table) if token is not None else None)
        m.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        for r in refusals:
            written.refused.setdefault(r.origin, []).append(r)
            written.stored[r.origin] = [t for t, b in done if r.origin in (b.origins() or ())]
        left = batch.without_origins(r.origin for r in refusals) if refusals else batch
        written.rows[table] = len(left)
        done.append((table, left))
    return written


class SignalWriter:
    def __init__(
        self,
        signal: str,
        sink: ClickHouseSink,
        encoding_for: Callable[[str], str],
        max_message_bytes: int,
        stages: Stages | None = None,
        owns: Callable[[str, int], bool] | None = None,
        end_offset: Callable[[str, int], int | None] | None = None,
    ):
        """``owns(topic, partition)``: whether this worker still holds the partition a message
        came from (see ``streams.agents.routing.assigned_partition``); None: always."""
        self.signal = signal
        self.sink = sink
        self.owns = owns
        self.end_offset = end_offset  # (topic, partition) → the broker's end offset, None: unknown
        # How long an insert of several ranges, met again with some ranges elsewhere, is waited for:
        # its first writer's insert has timed out by then (twice the insert timeout).
        self.grace_ms = int(2 * sink.settings.insert_timeout_s * 1000)
        self.stages = stages if stages is not None else Stages(encoding_for, max_message_bytes, None)
        self._held: dict[tuple[str, int], dict[int, RawMessage]] = {}

    def held_count(self) -> int:
        return sum(len(v) for v in self._held.values())

    def _ranges(self, by_tp: dict[tuple[str, int], dict[int, RawMessage]], log_stale: bool = True
                ) -> dict[tuple[str, int], list]:
        """The ledger's ranges over these messages, stale ones left out and overlaps resolved."""
        lo = {tp: min(msgs) for tp, msgs in by_tp.items()}
        hi = {tp: max(msgs) for tp, msgs in by_tp.items()}
        for _ in range(8):  # widen to every range overlapping one found: all that resolving needs
            recorded = self.sink.recorded_ranges(lo, hi)
            wider_lo = {tp: min([lo[tp]] + [r.first_offset for r in recorded.get(tp, [])]) for tp in lo}
            wider_hi = {tp: max([hi[tp]] + [r.last_offset for r in recorded.get(tp, [])]) for tp in hi}
            if wider_lo == lo and wider_hi == hi:
                break
            lo, hi = wider_lo, wider_hi
        out = {}
        for (topic, partition), ranges in recorded.items():
            msgs = by_tp[(topic, partition)]
            end = self.end_offset(topic, partition) if self.end_offset is not None else None
            stale = stale_ranges(ranges, msgs, fingerprint, end)
            if stale and log_stale:
                m.STALE_RANGES.labels(self.signal).inc(len(stale))
                log.warning("%s[%d]: ignoring %d recorded offset ranges that describe other messages "
                            "(topic recreated or broker data wiped?)", topic, partition, len(stale))
            out[(topic, partition)] = resolve_overlaps([r for r in ranges if r not in stale])
        return out

    def _owned(self, topic: str, partition: int) -> bool:
        return self.owns is None or self.owns(topic, partition)

    def release(self) -> int:
        """Forget held messages of partitions this worker no longer holds (a rebalance took them:
        they were never acked, so their next owner reads them again). Returns how many."""
        gone = [tp for tp in self._held if not self._owned(*tp)]
        released = sum(len(self._held.pop(tp)) for tp in gone)
        if released:
            m.HELD_MESSAGES.labels(self.signal).set(self.held_count())
        return released

    def write(self, messages: list[RawMessage]) -> WriteOutcome:
        with gc_paused():
            return self._write(messages)

    def _write(self, messages: list[RawMessage]) -> WriteOutcome:
        self.stages.begin(self.signal)
        self.release()
        by_tp: dict[tuple[str, int], dict[int, RawMessage]] = defaultdict(dict)
        for tp, held in self._held.items():
            by_tp[tp].update(held)
        for msg in messages:
            if self._owned(msg.topic, msg.partition):  # taken away by a rebalance since it was read: not ours
                by_tp[(msg.topic, msg.partition)][msg.offset] = msg  # a re-delivered offset replaces the held copy

        outcome = WriteOutcome()
        new_held: dict[tuple[str, int], dict[int, RawMessage]] = {}
        recorded = self._ranges({tp: msgs for tp, msgs in by_tp.items()})
        planned: list[tuple[SourceRange, RecordedRange | None, list[RawMessage]]] = []
        for (topic, partition), msgs in by_tp.items():
            offsets = sorted(msgs)
            ranges = recorded.get((topic, partition), [])
            segments, ready = plan_segments(offsets, [(r.first_offset, r.last_offset) for r in ranges])
            by_bounds = {(r.first_offset, r.last_offset): r for r in ranges}
            for seg in segments:
                seg_msgs = [msgs[o] for o in offsets[seg.start:seg.stop]]
                known = by_bounds[(seg.first_offset, seg.last_offset)] if seg.recorded else None
                hashes = ((known.first_hash, known.last_hash) if known is not None
                          else (fingerprint(seg_msgs[0]), fingerprint(seg_msgs[-1])))
                source = SourceRange(topic, partition, seg.first_offset, seg.last_offset,
                                     f"{hashes[0]:x}.{hashes[1]:x}" if hashes[0] else "")
                planned.append((source, known, seg_msgs))
            if ready < len(offsets):
                new_held[(topic, partition)] = {o: msgs[o] for o in offsets[ready:]}

        # Ranges recorded under an insert of several ranges (a batch across partitions): all of them
        # here, the insert is made again under its token; some elsewhere, held for a grace period
        # (their writer may still be inserting), then only the rows the tables lack are inserted.
        groups: dict[str, list[tuple[str, int, RecordedRange]]] = defaultdict(list)
        for source, known, _ in planned:
            if known is not None and known.insert_id:
                groups[known.insert_id].append((source.topic, source.partition, known))
        decisions = recorded_inserts(groups, None, 0)
        if any(d != COMPLETE for d in decisions.values()):
            decisions = recorded_inserts(groups, self.sink.now_ms(), self.grace_ms)
        held_from: dict[tuple[str, int], int] = {}
        for source, known, _ in planned:
            if known is not None and decisions.get(known.insert_id) == HOLD:
                tp = (source.topic, source.partition)
                held_from[tp] = min(held_from.get(tp, source.first_offset), source.first_offset)
        if held_from:
            m.HELD_INSERTS.labels(self.signal).inc(len({k for k, d in decisions.items() if d == HOLD}))
        kept = []
        for source, known, seg_msgs in planned:
            tp = (source.topic, source.partition)
            if tp in held_from and source.first_offset >= held_from[tp]:
                new_held.setdefault(tp, {}).update({x.offset: x for x in seg_msgs})
            else:
                kept.append((source, known, seg_msgs))

        decoded = [Part(source, known, seg_msgs, self.stages.run(self.signal, seg_msgs))
                   for source, known, seg_msgs in kept]
        # A partition revoked while this batch was decoded is left to its next owner: nothing of it
        # is recorded from here on (its messages are neither acked nor held).
        decoded = [d for d in decoded if self._owned(d.source.topic, d.source.partition)]
        # Every new range is in the ledger, under this batch's one insert, before any row is inserted.
        fresh = [d for d in decoded if d.known is None and d.result.batches]
        new = [d.source for d in fresh]
        batch_id = insert_id([(s.topic, s.partition, s.first_offset, s.last_offset, s.fingerprint) for s in new])
        self.sink.record_ranges(new, [tuple(int(h, 16) for h in s.fingerprint.split(".")) for s in new],
                                insert_id=batch_id)
        if new:  # read back: if another writer recorded other cuts of these messages first, its cut stands
            mine = {(s.topic, s.partition, s.first_offset, s.last_offset) for s in new}
            standing = self._ranges({(s.topic, s.partition): by_tp[(s.topic, s.partition)] for s in new}, log_stale=False)
            lost = [k for k in mine
                    if (k[2], k[3]) not in {(r.first_offset, r.last_offset) for r in standing.get((k[0], k[1]), [])}]
            if lost:
                m.LEDGER_CONFLICTS.labels(self.signal).inc()
                raise LedgerConflict(f"{len(lost)} ranges recorded by another writer first, e.g. "
                                     f"{lost[0][0]}[{lost[0][1]}] {lost[0][2]}-{lost[0][3]}; planning again")

        inserts: list[tuple[str, list[Part]]] = [(batch_id, fresh)] if fresh else []
        by_insert: dict[str, list[Part]] = defaultdict(list)
        for d in decoded:
            if d.known is not None and d.known.insert_id and decisions.get(d.known.insert_id) == COMPLETE:
                by_insert[d.known.insert_id].append(d)
        inserts += sorted(by_insert.items())
        for key, parts in inserts:
            parts = sorted(parts, key=lambda d: (d.source.topic, d.source.partition, d.source.first_offset))
            revoked = [d for d in parts if not self._owned(d.source.topic, d.source.partition)]
            if revoked:  # its rows go in with the rest (the token covers them); its next owner finds them
                m.REVOKED_SEGMENTS.labels(self.signal).inc(len(revoked))
            run, batches = merge_parts([(d.messages, d.result) for d in parts])
            self._account(outcome, write_refusing(self.sink, batches, None, token=lambda t, k=key: f"{t}:{k}"), run)
        for d in decoded:
            if d.known is None or not d.known.insert_id:
                if d.known is not None:  # recorded alone (by an earlier release): its own token
                    self._account(outcome, write_refusing(self.sink, d.result.batches, d.source), d.messages)
            elif decisions.get(d.known.insert_id) == MISSING:
                self._account(outcome, self._write_missing(d), d.messages)
        for d in decoded:
            m.MESSAGES_DECODED.labels(self.signal).inc(d.result.decoded_messages)
            outcome.dead_letters.extend(d.result.dead_letters)
            outcome.alerts.extend(d.result.alerts)
            if self._owned(d.source.topic, d.source.partition):
                outcome.done.extend(d.messages)
        # Only now, with every segment written, does the held state move forward.
        self._held = {tp: held for tp, held in new_held.items() if self._owned(*tp)}
        outcome.held = self.held_count()
        m.HELD_MESSAGES.labels(self.signal).set(outcome.held)
        return outcome

    def _account(self, outcome: WriteOutcome, written: Written, run: Sequence[RawMessage]) -> None:
        for key, n in written.rows.items():
            table = key.split("#", 1)[0]  # batches of one table kept apart (merge_parts) count as the table
            m.ROWS_WRITTEN.labels(table).inc(n)
            outcome.rows[table] = outcome.rows.get(table, 0) + n
        outcome.dead_letters.extend(written.letters(run))

    def _write_missing(self, part: "Part") -> Written:
        """One range of an insert whose other ranges are gone elsewhere: only the rows its tables lack.

        Tables without record ids (otelpipe's own) get the range's own token. A refusal falls back
        to writing the range alone, setting the refused messages aside.
        """
        written = Written()
        key = part.known.insert_id if part.known is not None else ""
        token = f"{key}/{part.source.topic}:{part.source.partition}:{part.source.first_offset}-{part.source.last_offset}"
        m.PARTIAL_INSERTS.labels(self.signal).inc()
        try:
            self._write_missing_tables(part, token, written)
        finally:
            self.sink.drop_stages(f"w{self.signal}")
        return written

    def _write_missing_tables(self, part: "Part", token: str, written: Written) -> None:
        for table, batch in part.result.batches.items():
            if not len(batch):
                continue
            try:
                if table in PARTITION_TIME_COLUMN:
                    inserted, _ = self.sink.write_missing(batch, f"{table}:{token}", stage_name=f"w{self.signal}")
                    written.rows[table] = inserted
                else:
                    self.sink.write(batch, f"{table}:{token}")
                    written.rows[table] = len(batch)
            except Exception as exc:
                if error_kind(exc) == RETRY:
                    raise
                alone = write_refusing(self.sink, {table: batch}, None, token=lambda t: f"{t}:{token}")
                written.rows[table] = alone.rows.get(table, 0)
                written.refused.update(alone.refused)


@dataclass
class Part:
    """A cut of one partition's messages: its range, the ledger's record of it (None: new), the
    messages, and what the stages made of them."""

    source: SourceRange
    known: RecordedRange | None
    messages: list[RawMessage]
    result: DecodeResult


def merge_parts(parts: Sequence[tuple[Sequence[RawMessage], DecodeResult]]
                ) -> tuple[list[RawMessage], dict[str, ColumnBatch]]:
    """The messages of several cuts as one run, and their table batches as one batch per table
    (message indices shifted to the run's). Batches of one table with other columns (stages that
    add columns for some rows only) stay apart, in a stable order."""
    run: list[RawMessage] = []
    pieces: dict[tuple[Any, ...], list[ColumnBatch]] = {}
    for messages, result in parts:
        base = len(run)
        run.extend(messages)
        for table, batch in result.batches.items():
            if not len(batch):
                continue
            batch = batch.shifted(base)
            pieces.setdefault((table, batch.has_origins, tuple(batch.column_names)), []).append(batch)
    merged: dict[str, ColumnBatch] = {}
    for i, ((table, *_), batches) in enumerate(pieces.items()):
        merged[table if table not in merged else f"{table}#{i}"] = concat(batches)
    return run, merged
