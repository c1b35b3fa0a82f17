"""Replay and backfill: read a time range of the source topics again and write what is missing.

``replay(...)`` seeks every partition to the first offset at or after ``--from`` and reads up to the
first offset after ``--to`` (both found with Kafka's offsets-for-times), with no consumer group:
the live workers' committed offsets never move. Messages go through the same stages as in the
worker (decoding today) and are written with ``ClickHouseSink.write_missing``: only rows whose
``RecordId`` is not already in the target time range are inserted, so replaying a range twice, or
a range that overlaps stored data, leaves one copy of each record. Inserts are cut so no block
touches more than 90 daily partitions.

Progress per partition is kept in ``otelpipe_replay_progress`` under an id derived from the
replay's arguments: stopping (Ctrl-C) and running the same command again resumes. A progress bar
per signal shows records, rate and ETA on stderr; a summary counts read, written, skipped as already
present and dead-lettered.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sinks.clickhouse import PARTITION_TIME_COLUMN, ClickHouseSink
from streams.agents.signal_writer import gc_paused
from streams.config import Settings
from streams.otlp.batch import RawMessage
from streams.stages.pipeline import Stages
from streams.tools.kafka_admin import topic_partitions
from streams.tools.kafka_clients import Target, connect_args

PROGRESS_TABLE = "otelpipe_replay_progress"
SIGNAL_TOPIC = {"traces": "spans_topic", "logs": "logs_topic", "metrics": "metrics_topic"}


@dataclass
class PartitionPlan:
    topic: str
    partition: int
    start: int  # first offset to read
    stop: int  # first offset not to read

    @property
    def total(self) -> int:
        return max(self.stop - self.start, 0)


@dataclass
class ReplaySummary:
    read: int = 0
    written: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    rows_by_table: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def rows(self) -> list[tuple[str, Any]]:
        out = [("messages read", self.read), ("rows written", self.written),
               ("rows skipped (already stored)", self.skipped), ("messages dead-lettered", self.dead_lettered)]
        out += [(f"rows into {t}", n) for t, n in sorted(self.rows_by_table.items())]
        return out


def replay_id(signals: list[str], from_: object, to: object, partitions: list[int] | None, database: str) -> str:
    """Stable for the same command: the range as the user wrote it (``2h`` stays ``2h``)."""
    key = f"{','.join(sorted(signals))}|{from_}|{to}|{sorted(partitions or [])}|{database}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class ProgressBar:
    """One line per signal, redrawn in place: records done of total, rate, ETA."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr, width: int = 30):
        self.label, self.total, self.out, self.width = label, max(total, 0), out, width
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_draw >= 0.2 or self.done >= self.total:
            self._last_draw = now
            self.draw()

    def draw(self, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        fraction = 1.0 if self.total == 0 else min(self.done / self.total, 1.0)
        filled = int(fraction * self.width)
        eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        line = (f"\r{self.label:<8} [{'█' * filled}{' ' * (self.width - filled)}] {self.done}/{self.total} "
                f"messages {fraction * 100:5.1f}%  {rate:,.0f}/s  ETA {eta:,.0f}s ")
        self.out.write(line + ("\n" if final else ""))
        self.out.flush()


async def plan_partitions(consumer: AIOKafkaConsumer, kafka: Target, topic: str, partitions: list[int] | None,
                          from_ms: int, to_ms: int) -> list[PartitionPlan]:
    available = await topic_partitions(kafka, topic)
    if not available:
        raise ValueError(f"topic {topic} does not exist or has no partitions")
    chosen = available if not partitions else [p for p in partitions if p in available]
    missing = set(partitions or []) - set(available)
    if missing:
        raise ValueError(f"topic {topic} has no partition {sorted(missing)} (it has {available})")
    tps = [TopicPartition(topic, p) for p in chosen]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.offsets_for_times({tp: from_ms for tp in tps})
    stops = await consumer.offsets_for_times({tp: to_ms + 1 for tp in tps})
    plans = []
    for tp in tps:
        start = starts[tp].offset if starts.get(tp) is not None else ends[tp]
        stop = stops[tp].offset if stops.get(tp) is not None else ends[tp]
        plans.append(PartitionPlan(topic, tp.partition, start, stop))
    return plans


async def apply_live_sampling_rates(settings: Settings, stages: Stages) -> int:
    """Head-sampling rates as the workers apply them now: the configured ones with the overrides
    on the sampling control topic (``otelpipe sampling set``) that verify with the control key, as
    the workers check them. Returns the number of overrides."""
    from streams.agents.control_key import control_key
    from streams.agents.followers import ControlFollowers, read_compacted_topic

    records = await read_compacted_topic(settings.kafka, settings.sampling.control_topic)
    if not records:
        return 0
    control = ControlFollowers(settings, stages, control_key(settings))
    control.apply_sampling_records(records)
    return len(control.sampling_overrides)


async def start_from_live_budgets(settings: Settings, stages: Stages) -> int:
    """Seed the replay's series budgets with the live workers' state (their compacted changelog).

    A point the live worker bucketized or dropped is then decided the same way by the replay (the
    window's admitted series and its bucketized label are in that state), so the replayed row has
    the same ``RecordId`` and is skipped instead of written a second time. Windows whose state has
    been overwritten since are counted afresh. The live state is read, never written. Returns the
    number of state keys read."""
    from streams.agents.keyed_state import ChangelogState
    from streams.agents.routing import route_partition
    from streams.stages.series_budget import SeriesBudgetStage, metric_of_key
    from streams.tools.kafka_admin import topic_partitions

    if stages.labels is None or not stages.labels.policy.budgets.enabled:
        return 0
    k = settings.kafka
    topic = settings.state_topic("series-budget")
    available = await topic_partitions(k, topic)
    if not available:
        return 0
    live = ChangelogState(k, topic, lambda key: route_partition(metric_of_key(key), k.partitions))
    await live.restore(set(available))
    budget = SeriesBudgetStage.in_memory(stages.labels.policy.budgets, settings.worker.max_clock_skew_s)
    for key in live.keys():
        value = live.get(key)
        if value is not None:
            budget.store[key] = value  # type: ignore[attr-defined]
    stages.budget = budget
    return len(budget.store)  # type: ignore[attr-defined]


def load_progress(sink: ClickHouseSink, rid: str) -> dict[tuple[str, int], int]:
    result = sink.client.query(
        f"SELECT Topic, Partition, argMax(NextOffset, UpdatedAt) FROM {sink.database}.{PROGRESS_TABLE} "
        "WHERE ReplayId = {r:String} GROUP BY Topic, Partition", parameters={"r": rid})
    return {(t, int(p)): int(o) for t, p, o in result.result_rows}


def save_progress(sink: ClickHouseSink, rid: str, plan: PartitionPlan, next_offset: int) -> None:
    sink.client.insert(f"{sink.database}.{PROGRESS_TABLE}", [[rid, plan.topic, plan.partition, next_offset, plan.stop]],
                       column_names=["ReplayId", "Topic", "Partition", "NextOffset", "StopOffset"])


def write_messages(signal: str, messages: list[RawMessage], sink: ClickHouseSink, stages: Stages, rid: str,
                   summary: ReplaySummary, stage_name: str = "") -> list:
    """The same stages as the worker, then only what the target lacks. Returns the dead letters."""
    with gc_paused():
        result = stages.run(signal, messages)
        first, last = messages[0], messages[-1]
        for table, batch in result.batches.items():
            token = f"replay:{rid}:{table}:{first.topic}:{first.partition}:{first.offset}-{last.offset}"
            if table not in PARTITION_TIME_COLUMN:  # report tables (violations) collapse repeats themselves
                sink.write(batch, token)
                continue
            inserted, skipped = sink.write_missing(batch, token, stage_name)
            summary.written += inserted
            summary.skipped += skipped
            summary.rows_by_table[table] = summary.rows_by_table.get(table, 0) + inserted
    return result.dead_letters


async def replay(settings: Settings, sink: ClickHouseSink, signals: list[str], from_ms: int, to_ms: int,
                 partitions: list[int] | None = None, rate: float = 0.0, batch_messages: int = 100,
                 out: TextIO = sys.stderr, should_stop: Callable[[], bool] = lambda: False,
                 summary: ReplaySummary | None = None, range_text: tuple[str, str] | None = None) -> ReplaySummary:
    """Replay; ``summary`` (if given) is filled as the replay goes, so an interrupted caller keeps it.

    ``range_text`` is the range as the user wrote it; it names the replay, so running the same
    command again (even ``--from 2h``, later) resumes instead of starting over.
    """
    rid = replay_id(signals, *(range_text or (from_ms, to_ms)), partitions, sink.database)
    stages = Stages.from_settings(settings)
    if "metrics" in signals:
        await start_from_live_budgets(settings, stages)
    await apply_live_sampling_rates(settings, stages)
    summary = summary if summary is not None else ReplaySummary()
    consumer = AIOKafkaConsumer(**connect_args(settings.kafka), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    producer = AIOKafkaProducer(**connect_args(settings.kafka), acks="all",
                                max_request_size=settings.record_max_bytes())  # dead letters of any message
    await consumer.start()
    await producer.start()
    started = time.monotonic()
    stage_name = uuid.uuid4().hex[:12]  # this run's staging tables: replays running at once never share one
    try:
        done_before = load_progress(sink, rid)
        for signal in signals:
            topic = getattr(settings.kafka, SIGNAL_TOPIC[signal])
            plans = await plan_partitions(consumer, settings.kafka, topic, partitions, from_ms, to_ms)
            for plan in plans:
                plan.start = max(plan.start, done_before.get((plan.topic, plan.partition), plan.start))
            bar = ProgressBar(signal, sum(p.total for p in plans), out)
            bar.draw()
            for plan in plans:
                if plan.total == 0:
                    continue
                tp = TopicPartition(plan.topic, plan.partition)
                consumer.assign([tp])
                consumer.seek(tp, plan.start)
                position = plan.start
                while position < plan.stop:
                    if should_stop():
                        bar.draw(final=True)
                        return summary
                    records = (await consumer.getmany(tp, timeout_ms=1000, max_records=batch_messages)).get(tp, [])
                    messages = [RawMessage(r.topic, r.partition, r.offset, r.value or b"", r.key,
                                           tuple((k, v) for k, v in (r.headers or ())), r.timestamp)
                                for r in records if r.offset < plan.stop]
                    if not records:
                        # Nothing left to fetch before the stop offset: the rest are transaction
                        # markers or compacted away, and the position has moved past them.
                        position = await consumer.position(tp)
                        continue
                    if messages:
                        dead = write_messages(signal, messages, sink, stages, rid, summary, stage_name)
                        for letter in dead:
                            headers = letter.headers() + [("otelpipe.dlq.replay_id", rid.encode())]
                            await producer.send_and_wait(settings.dlq_topic(letter.message.topic),
                                                         letter.message.value, key=letter.message.key,
                                                         headers=headers)
                        summary.dead_lettered += len(dead)
                        summary.read += len(messages)
                        bar.advance(len(messages))
                    position = records[-1].offset + 1
                    save_progress(sink, rid, plan, min(position, plan.stop))
                    if rate > 0:
                        ahead = summary.read / rate - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
            bar.draw(final=True)
        summary.finished = True
        return summary
    finally:
        await consumer.stop()
        await producer.stop()
        try:
            sink.drop_stages(stage_name)
        except Exception:  # best effort: a leftover staging table holds no data anyone reads
            pass


def parse_time(text: str, now_ms: int | None = None) -> int:
    """'now', '90s'/'-90s', '15m', '2h', '7d' (that long ago), Unix ms, or ISO 8601 (UTC if no zone) → Unix ms."""
    from datetime import datetime, timezone

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = text.strip()
    if value == "now":
        return now_ms
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    relative = value[1:] if value.startswith("-") else value
    if relative[-1:] in units and relative[:-1].isdigit():
        return now_ms - int(relative[:-1]) * units[relative[-1]]
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use now, 15m, 2h, 7d ago, Unix ms or ISO 8601)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)
