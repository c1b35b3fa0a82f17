"""The tail sampler of one worker: the routed parts of the partitions it owns, decided in rounds.

Wiring around the pure pieces of ``streams.stages.tail`` (index, decisions, rows). Durability:

- a part is acked as soon as it is indexed: it is already on the compacted routed topic, which is
  the buffer. After a crash or a rebalance, the owner of a partition restores the partition's
  parts (``ChangelogState`` over the routed topic) and its decisions (over the tail state topic)
  before it takes a new record of it;
- a round decides a partition's due traces: (1) the decisions and the round's exact list of parts
  go to the tail state topic as ``b/<partition>/<id>``; (2) the rows are inserted with tokens
  ``tail:<partition>:<id>:<table>``; (3) the parts get tombstones on the routed topic and the
  round's record is deleted. A crash between (1) and (3) leaves the round's record: the next owner
  redoes exactly that round (same parts, same decisions, same tokens), and ClickHouse drops what
  had landed. So each trace is decided once and written once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import orjson

from sinks.clickhouse import Refusal
from streams.agents import worker_metrics as m
from streams.otlp.batch import ColumnBatch, DeadLetter, RawMessage
from streams.agents.keyed_state import ChangelogState
from streams.otlp.values import BadMessage
from streams.stages.pipeline import Stages
from streams.agents.routing import PROTOBUF_HEADER, decode_envelope, route_partition
from streams.stages.tail import Decision, TailIndex, assemble, decide, parse_part_key
from streams.stages.tail_policies import RateLimiter, TailPolicy

log = logging.getLogger("otelpipe.tail")


def round_parts(spec: dict) -> list[str]:
    """The part keys a recorded round lists (rounds recorded by 0.1 name them "chunks")."""
    return spec.get("parts", spec.get("chunks", []))


def part_partition(partitions: int) -> Callable[[str], int]:
    """Partition of a routed part's key (``c/<trace>/...``): its trace's route."""

    def of(key: str) -> int:
        return route_partition(key[2:].split("/", 1)[0], partitions)

    return of


def state_partition(partitions: int) -> Callable[[str], int]:
    """``d/<trace>`` follows its trace; ``b/<partition>/<id>`` names its partition."""

    def of(key: str) -> int:
        kind, rest = key.split("/", 1)
        if kind == "b":
            return int(rest.split("/", 1)[0])
        return route_partition(rest, partitions)

    return of


class TailWorker:
    def __init__(self, *, stages: Stages, policies: tuple[TailPolicy, ...], parts: ChangelogState,
                 state: ChangelogState, decision_wait_s: float, max_traces: int, max_spans_per_trace: int,
                 decision_cache_s: float, keep_log_severity: int, late_default: str = "policies",
                 run_blocking: Callable[..., Awaitable[Any]],
                 write: Callable[[ColumnBatch, str], Awaitable[list[Refusal]]],
                 dead_letters: Callable[[list[DeadLetter]], Awaitable[None]]):
        self.stages = stages
        self.policies = policies
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
                if key.startswith("d/"):
                    index.remember(key[2:], Decision.from_dict(orjson.loads(raw)))
                elif key.startswith("b/"):
                    rounds.append((key, orjson.loads(raw)))
            in_rounds = {k for _, spec in rounds for k in round_parts(spec)}
            copies = []
            for key in self.parts.keys(p):
                value = self.parts.get(key)
                if value is None:
                    continue
                if not self._is_part(key, value):  # anyone can produce to the topic: not ours, cleared
                    copies.append(key)
                    continue
                if key in in_rounds:
                    index.add(key, self._records(value), now_ms)  # the redo below finishes it
                elif not index.add(key, self._records(value), now_ms):
                    copies.append(key)
            if copies:
                await self.parts.put({}, copies)
            log.info("tail partition %d: %d traces buffered, %d decisions cached, %d rounds to redo, "
                     "%d copies of written parts dropped", p, len(index.traces), len(index.decisions), len(rounds),
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

    @staticmethod
    def _is_part(key: str, value: bytes) -> bool:
        """A routed part: a ``c/`` key that parses, and an envelope."""
        if not key.startswith("c/"):
            return False
        try:
            parse_part_key(key)
            decode_envelope(value)
        except (BadMessage, ValueError):
            return False
        return True

    @staticmethod
    def _records(value: bytes) -> int:
        try:
            return int(decode_envelope(value).get("records", 0))
        except BadMessage:
            return 0

    # ------------------------------------------------------------ input

    async def take(self, records: list[tuple[int, int, str, bytes | None]], now_ms: int) -> None:
        """(partition, offset, key, value) records of the routed topic, in order."""
        async with self.lock:
            await self.ensure({p for p, _, _, _ in records}, now_ms)
            copies = []
            for partition, offset, key, value in records:
                if offset < self.parts.end_offsets.get(partition, 0) or value is None or not key.startswith("c/"):
                    continue  # restored already, a tombstone, or not a part
                try:
                    env = decode_envelope(value)
                    parse_part_key(key)
                except (BadMessage, ValueError) as exc:
                    # what the record says stays out of the log: anyone can produce to the topic
                    log.error("a record of partition %d at offset %d is not a routed part, skipped (%s)",
                              partition, offset, type(exc).__name__)
                    continue
                cache_ms = self.settings[3]
                late = bool(self.late_default != "policies" and env["records_end_ms"] and env["source_timestamp_ms"]
                            and env["source_timestamp_ms"] - env["records_end_ms"] > cache_ms)
                if self._index(partition).add(key, int(env.get("records", 0)), now_ms, late=late):
                    self.parts.apply_local(partition, key, value)
                else:
                    copies.append(key)
            if copies:  # parts written already, sent again by a router that crashed before its ack
                m.STAGE_CHANGES.labels("tail", "duplicate_part").inc(len(copies))
                await self.parts.put({}, copies)
            self._gauges()
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
                await self.state.put({}, [f"d/{t}" for t in expired])
                for t in expired:
                    index.forget_decision(t)
        self._gauges()

    def _gauges(self) -> None:
        m.BUFFERED_TRACES.set(sum(i.in_flight() for i in self.indexes.values()))
        m.BUFFERED_SPANS.set(sum(i.buffered_spans() for i in self.indexes.values()))

    def _decode(self, keys: list[str]) -> tuple[ColumnBatch | None, ColumnBatch | None, list[DeadLetter],
                                                 dict[str, list[RawMessage]]]:
        """On the blocking thread: the parts' rows through the worker's stages (and the part
        messages, which the rows' ``ORIGIN`` indices name, per signal)."""
        msgs: dict[str, list[RawMessage]] = {"traces": [], "logs": []}
        for key in keys:
            value = self.parts.get(key)
            if value is None:
                continue
            env = decode_envelope(value)
            _, signal = parse_part_key(key)
            msgs[signal].append(RawMessage(topic=env["source_topic"], partition=env["source_partition"],
                                           offset=env["source_offset"], value=env["payload"],
                                           headers=(PROTOBUF_HEADER,), timestamp_ms=env["source_timestamp_ms"]))
        spans = self.stages.run("traces", msgs["traces"]) if msgs["traces"] else None
        logs = self.stages.run("logs", msgs["logs"]) if msgs["logs"] else None
        dead = (spans.dead_letters if spans else []) + (logs.dead_letters if logs else [])
        return (spans.batches.get("otel_traces") if spans else None,
                logs.batches.get("otel_logs") if logs else None, dead, msgs)

    async def _decide(self, partition: int, index: TailIndex, due: dict[str, str], now_ms: int) -> None:
        keys = [k for t in due for k in index.traces[t].parts]
        spans, logs, dead, msgs = await self.run_blocking(self._decode, keys)
        undecided = [t for t, why in due.items() if t not in index.decisions and why != "late_default"]
        fresh = decide(self.policies, undecided, spans, self.limiter, now_ms)
        defaulted = {t: Decision(self.late_default == "keep", 1.0, "late_default", now_ms) for t, why in due.items()
                     if why == "late_default"}
        decisions = {t: index.decisions[t] for t in due if t in index.decisions} | fresh | defaulted
        keys_of: dict[str, list[str]] = {}
        for t in due:
            keys_of[t] = list(index.traces[t].parts)
        decisions = {t: d.with_parts(keys_of.get(t, [])) for t, d in decisions.items()}
        for t, reason in due.items():
            m.TAIL_DECISIONS.labels(reason, "keep" if decisions[t].keep else "drop").inc()
        spec = {"parts": keys, "new": sorted(fresh), "decisions": {t: d.as_dict() for t, d in decisions.items()}}
        round_key = f"b/{partition}/{uuid.uuid4().hex}"
        sets = {round_key: orjson.dumps(spec)}
        sets.update({f"d/{t}": orjson.dumps(d.as_dict()) for t, d in decisions.items()})
        await self.state.put(sets)  # (1) the round, before any of its rows
        await self._write_round(partition, round_key, spec, now_ms, redo=False, decoded=(spans, logs, dead, msgs))
        for t, d in decisions.items():
            index.remember(t, d)
        index.late.difference_update(defaulted)

    async def _write_round(self, partition: int, round_key: str, spec: dict[str, Any], now_ms: int, redo: bool,
                           decoded: tuple | None = None) -> None:
        keys = [k for k in round_parts(spec) if self.parts.get(k) is not None]
        if decoded is None:
            decoded = await self.run_blocking(self._decode, keys)
        spans, logs, dead, msgs = decoded
        decisions = {t: Decision.from_dict(d) for t, d in spec["decisions"].items()}
        batches, counts = assemble(decisions, set(spec["new"]), spans, logs, self.keep_log_severity)
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
        await self.parts.put({}, keys)  # (3) the parts are done, and so is the round
        await self.state.put({}, [round_key])
        index = self._index(partition)
        index.remove(keys)
        if redo:
            for t, d in decisions.items():
                index.remember(t, d)
            log.warning("tail partition %d: redid round %s (%d parts)", partition, round_key, len(keys))
