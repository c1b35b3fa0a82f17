"""The faust app: topics, agents and the worker's web pages. Thin wiring around the stages.

One agent per signal takes batches with ``stream.noack_take`` and hands them to a
``SignalWriter`` on the single ClickHouse thread; only after every row of a message is inserted
(and its dead letters published) is the message acked, so faust never commits an offset ahead of
the data. ``take``/``take_events`` are not used: they ack even when the body raised.

Settings come from ``load_settings()`` (``OTELPIPE_CONFIG`` and ``OTELPIPE_*`` variables) when this
module is imported; ``otelpipe run`` sets them before importing it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path
import random
import time
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

import faust
import orjson
from prometheus_client import generate_latest

from sinks.clickhouse import ClickHouseSink, is_retryable
from streams.agents import worker_metrics as m
from streams.stages.alerts import ALERTS_TABLE, AlertTracker, encode_avro, from_burn, latest_states_query
from streams.stages.alerts import table_columns as alert_table_columns
from streams.otlp.batch import DeadLetter, RawMessage
from streams.otlp.decode import BadMessage
from streams.agents.routing import decode_envelope, encode_envelope, route_partition, split_metrics, virtual_message
from streams.agents.keyed_state import ChangelogState
from streams.stages.series_budget import SeriesBudgetStage, metric_of_key
from streams.config import load_settings, resolve_path
from streams.stages.catalog import CatalogError, CatalogStage, entry_from_record
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.label_policy import PolicyError, parse_policy
from streams.agents.signal_writer import SignalWriter
from streams.stages.slo import counts_query, evaluate_rows, query_parameters, with_catalog_objectives

log = logging.getLogger("otelpipe.worker")

settings = load_settings()
K, W = settings.kafka, settings.worker

app = faust.App(
    W.app_id,
    broker=[f"kafka://{server.strip()}" for server in K.bootstrap_servers.split(",")],
    store="memory://",
    datadir=str(resolve_path(W.data_dir)),
    value_serializer="raw",
    key_serializer="raw",
    topic_partitions=K.partitions,
    consumer_auto_offset_reset="earliest",
    web_host=W.web_host,
    web_port=W.web_port,
    web_bind=W.web_host,
    web_in_thread=False,
    producer_acks=-1,
    broker_session_timeout=W.session_timeout_s,
    broker_heartbeat_interval=min(3.0, W.session_timeout_s / 3),
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    stream_buffer_maxsize=max(4096, 4 * W.batch_max_messages),
)


def _topic(name: str) -> faust.TopicT:
    return app.topic(name, value_type=bytes, key_type=bytes, partitions=K.partitions, internal=False)


spans_topic = _topic(K.spans_topic)
logs_topic = _topic(K.logs_topic)
metrics_topic = _topic(K.metrics_topic)
metrics_routed_topic = _topic(settings.routed_topic(K.metrics_topic))
dlq_topics = {name: _topic(settings.dlq_topic(name)) for name in settings.source_topics() + settings.routed_topics()}
alerts_topic = _topic(settings.slo.alerts_topic)


# Series budget state: (metric, window) → the series seen (streams.stages.series_budget), changelogged to a
# compacted topic whose partition is the metric's routed partition (streams.agents.keyed_state).
series_state = ChangelogState(K.bootstrap_servers, settings.state_topic("series-budget"),
                              lambda key: route_partition(metric_of_key(key), K.partitions))


@app.on_partitions_revoked.connect
async def forget_revoked_state(sender: Any, revoked: Any, **kwargs: Any) -> None:
    """Another worker may own these partitions next and change their state: re-read it if they return."""
    series_state.forget({tp.partition for tp in revoked if tp.topic == metrics_routed_topic.get_topic_name()})

# chDB and clickhouse-connect block: every call runs on this one thread (calls serialise anyway).
clickhouse_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
_sink: ClickHouseSink | None = None


def _open_sink() -> ClickHouseSink:
    global _sink
    if _sink is None:
        _sink = ClickHouseSink.open(settings.clickhouse, W.app_id)
    return _sink


async def on_clickhouse_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(clickhouse_thread, fn, *args)


def _raw(event: Any) -> RawMessage:
    msg = event.message
    headers = msg.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    return RawMessage(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        value=msg.value if msg.value is not None else b"",
        key=msg.key,
        headers=tuple((k, bytes(v) if v is not None else b"") for k, v in headers),
        timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
    )


async def until_done(signal: str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` on the ClickHouse thread until it succeeds: capped exponential backoff with
    jitter, never giving up (a write, opening the sink). Every failure is retried; its kind
    decides only the log level.

    While this waits the agent takes no new batch, its stream buffer fills and faust stops
    fetching: backpressure, with memory bounded by the buffer size.
    """
    delay = W.retry_initial_s
    attempt = 0
    while True:
        try:
            result = await on_clickhouse_thread(fn, *args)
            m.WRITER_BLOCKED.labels(signal).set(0)
            return result
        except Exception as exc:
            attempt += 1
            m.WRITE_RETRIES.labels(signal).inc()
            m.WRITER_BLOCKED.labels(signal).set(1)
            level = logging.WARNING if is_retryable(exc) else logging.ERROR
            log.log(level, "%s failed (attempt %d, retrying in %.1fs): %s", what, attempt, delay, exc,
                    exc_info=level >= logging.ERROR)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, W.retry_max_s)


async def publish_dead_letters(signal: str, dead: list[DeadLetter]) -> None:
    futures = []
    for letter in dead:
        topic = dlq_topics.get(letter.message.topic) or _topic(settings.dlq_topic(letter.message.topic))
        futures.append(
            await topic.send(key=letter.message.key, value=letter.message.value, headers=letter.headers())
        )
        m.DEAD_LETTERS.labels(signal, letter.reason).inc()
        log.warning(
            "dead letter %s[%d]@%d: %s: %s",
            letter.message.topic, letter.message.partition, letter.message.offset, letter.reason, letter.detail,
        )
    for fut in futures:
        await fut  # delivered to the broker before the source offset is acked


async def _sink_when_reachable(signal: str) -> ClickHouseSink:
    """Open the sink (and apply migrations), retrying while ClickHouse is unreachable.

    Until it succeeds this agent takes nothing from Kafka: its partitions wait, nothing is lost.
    """
    from sinks.migrations import migrate

    def open_and_migrate() -> ClickHouseSink:
        sink = _open_sink()
        migrate(sink.client, settings.clickhouse)
        return sink

    where = settings.clickhouse.dsn.split("@")[-1]
    return await until_done(signal, f"opening ClickHouse at {where}", open_and_migrate)


stages = Stages.from_settings(settings)  # an invalid policy stops the worker here, every problem listed
if stages.labels is not None:
    stages.budget = SeriesBudgetStage(stages.labels.policy.budgets, series_state.get)


async def consume_signal(signal: str, stream: Any, unwrap: Callable[[RawMessage], RawMessage] | None = None,
                         before_write: Callable[[list], Awaitable[None]] | None = None,
                         after_write: Callable[[], Awaitable[None]] | None = None) -> None:
    """Take batches, write them (``SignalWriter``), publish dead letters, ack what is done.

    ``unwrap`` turns a record into the message the writer sees (routed parts: the part at its source
    coordinates) or raises BadMessage; records that unwrap to the same coordinates (a part routed
    again after a crash) are acked together, and dead letters name the record as read.
    """
    writer = SignalWriter(signal, await _sink_when_reachable(signal), K.encoding_for, W.max_message_bytes, stages)
    pending: dict[tuple[str, int, int], list[tuple[Any, RawMessage]]] = {}
    async for events in stream.noack_take(W.batch_max_messages, within=W.batch_within_s):
        msgs, dead, ack_now = [], [], []
        for event in events:
            raw = _raw(event)
            try:
                msg = unwrap(raw) if unwrap is not None else raw
            except BadMessage as exc:
                dead.append(DeadLetter(raw, exc.reason, exc.detail))
                ack_now.append(event)
                continue
            pending.setdefault((msg.topic, msg.partition, msg.offset), []).append((event, raw))
            msgs.append(msg)
        if unwrap is None:
            m.MESSAGES_CONSUMED.labels(signal).inc(len(msgs))
        m.BATCH_MESSAGES.labels(signal).observe(len(msgs))
        if before_write is not None:
            await before_write(events)
        outcome = await until_done(signal, f"writing {len(msgs)} {signal} messages", writer.write, msgs)
        if after_write is not None:
            await after_write()
        for letter in outcome.dead_letters:
            sources = pending.get((letter.message.topic, letter.message.partition, letter.message.offset), [])
            if unwrap is None or not sources:
                dead.append(letter)
            else:  # the routed record is what the dead-letter topic can hold; name the source too
                msg = letter.message
                dead.append(DeadLetter(sources[0][1], letter.reason, f"{letter.detail} (source "
                                       f"{msg.topic.split('@')[0]}[{msg.partition}]@{msg.offset})"))
        if dead:
            await publish_dead_letters(signal, dead)
        for event in ack_now:
            await stream.ack(event)
        for msg in outcome.done:
            for event, _ in pending.pop((msg.topic, msg.partition, msg.offset), []):
                await stream.ack(event)


async def _write_with_token_until_done(batch: Any, token: str) -> None:
    """Insert one batch under a given token (tail sampling's rounds), retrying until it lands."""
    started = time.perf_counter()
    await until_done("traces", f"writing {len(batch)} rows of {batch.table}",
                     lambda: _open_sink().write(batch, token))  # opened on the ClickHouse thread, if need be
    m.INSERT_SECONDS.labels(batch.table).observe(time.perf_counter() - started)
    m.ROWS_WRITTEN.labels(batch.table).inc(len(batch))


if not settings.sampling.tail:
    @app.agent(spans_topic, name="otelpipe.spans", concurrency=1)
    async def spans_agent(stream: Any) -> None:
        await consume_signal("traces", stream)

    @app.agent(logs_topic, name="otelpipe.logs", concurrency=1)
    async def logs_agent(stream: Any) -> None:
        await consume_signal("logs", stream)
else:
    from streams.agents.routing import PROTOBUF_HEADER, split_by_trace
    from streams.stages.tail import chunk_key
    from streams.stages.tail_policies import load_policies
    from streams.agents.tail_worker import TailWorker, chunk_partition, state_partition

    tail_topic = _topic(settings.tail_topic())
    part_of_chunk = chunk_partition(K.partitions)
    S = settings.sampling
    tail_worker = TailWorker(
        stages=stages, policies=load_policies(S.tail_policy_file or None),
        chunks=ChangelogState(K.bootstrap_servers, settings.tail_topic(), part_of_chunk,
                              store_dir=(resolve_path(W.data_dir) / "state" if W.state_store == "rocksdict" else None)),
        state=ChangelogState(K.bootstrap_servers, settings.state_topic("tail-sampling"), state_partition(K.partitions)),
        decision_wait_s=S.decision_wait_s, max_traces=S.max_traces, max_spans_per_trace=S.max_spans_per_trace,
        decision_cache_s=S.decision_cache_s, keep_log_severity=S.keep_log_severity, late_default=S.late_default,
        run_blocking=on_clickhouse_thread, write=_write_with_token_until_done,
        dead_letters=lambda dead: publish_dead_letters("traces", dead),
    )

    async def route_by_trace(signal: str, stream: Any) -> None:
        """Cut each request into one part per trace, onto the partition that owns the trace. Logs
        without a trace id have nothing to wait for: they are written here, exactly once, through a
        ``SignalWriter`` lane of their own (``<topic>@untraced``)."""
        writer = None
        waiting: dict[tuple[str, int, int], tuple[Any, RawMessage]] = {}  # untraced part → (event, source)
        async for events in stream.noack_take(W.batch_max_messages, within=W.batch_within_s):
            futures, dead, direct, ack_now = [], [], [], []
            for event in events:
                raw = _raw(event)
                if len(raw.value) > W.max_message_bytes:
                    dead.append(DeadLetter(raw, "too_large", f"{len(raw.value)} bytes is over the limit of "
                                                             f"{W.max_message_bytes}"))
                    ack_now.append(event)
                    continue
                try:
                    parts = split_by_trace(signal, raw, K.encoding_for(raw.topic))
                except BadMessage as exc:
                    dead.append(DeadLetter(raw, exc.reason, exc.detail))
                    ack_now.append(event)
                    continue
                except (ValueError, TypeError, OverflowError) as exc:
                    dead.append(DeadLetter(raw, "invalid_value", f"{type(exc).__name__}: {exc}"))
                    ack_now.append(event)
                    continue
                untraced = parts.pop("", None)
                for trace_id, (payload, records, end_ms) in parts.items():
                    key = chunk_key(trace_id, signal, raw.topic, raw.partition, raw.offset)
                    route = part_of_chunk(key)
                    futures.append(await tail_topic.send(
                        key=key.encode(), partition=route,
                        value=encode_envelope(signal, raw, route, payload, records, trace_id, end_ms)))
                if untraced is None:
                    ack_now.append(event)
                else:
                    part = RawMessage(f"{raw.topic}@untraced", raw.partition, raw.offset, untraced[0], raw.key,
                                      (PROTOBUF_HEADER,), raw.timestamp_ms)
                    waiting[(part.topic, part.partition, part.offset)] = (event, raw)
                    direct.append(part)
            m.MESSAGES_CONSUMED.labels(signal).inc(len(events))
            m.MESSAGES_ROUTED.labels(signal).inc(len(futures))
            for fut in futures:
                await fut  # every part is on the broker (the durable buffer) before its source is acked
            if direct or (writer is not None and writer.held_count()):
                if writer is None:
                    writer = SignalWriter(signal, await _sink_when_reachable(signal), K.encoding_for,
                                          W.max_message_bytes, stages)
                outcome = await until_done(signal, f"writing {len(direct)} untraced {signal} parts", writer.write,
                                           direct)
                for letter in outcome.dead_letters:  # name the source message, which is what the DLQ holds
                    source = waiting.get((letter.message.topic, letter.message.partition, letter.message.offset))
                    if source is not None:
                        dead.append(DeadLetter(source[1], letter.reason, letter.detail))
                for part in outcome.done:
                    done = waiting.pop((part.topic, part.partition, part.offset), None)
                    if done is not None:
                        ack_now.append(done[0])
            if dead:
                await publish_dead_letters(signal, dead)
            for event in ack_now:
                await stream.ack(event)

    @app.agent(spans_topic, name="otelpipe.spans", concurrency=1)
    async def spans_router(stream: Any) -> None:
        await route_by_trace("traces", stream)

    @app.agent(logs_topic, name="otelpipe.logs", concurrency=1)
    async def logs_router(stream: Any) -> None:
        await route_by_trace("logs", stream)

    @app.agent(tail_topic, name="otelpipe.tail", concurrency=1)
    async def tail_agent(stream: Any) -> None:
        """Index the parts of the traces this worker owns; decide the due ones (streams.agents.tail_worker)."""
        await _sink_when_reachable("traces")
        async for events in stream.noack_take(W.batch_max_messages, within=W.batch_within_s):
            records = [(e.message.partition, e.message.offset, (e.message.key or b"").decode("utf-8", "replace"),
                        e.message.value) for e in events]
            await tail_worker.take(records, int(time.time() * 1000))
            for event in events:  # indexed; the part itself is durable on the routed topic
                await stream.ack(event)

    @app.timer(interval=1.0)
    async def tail_decisions() -> None:
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.tail_topic()}
        if owned or tail_worker.indexes:
            await tail_worker.tick(owned=owned)

    @app.on_partitions_revoked.connect
    async def forget_revoked_traces(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await tail_worker.release({tp.partition for tp in revoked if tp.topic == settings.tail_topic()})


@app.agent(metrics_topic, name="otelpipe.metrics", concurrency=1)
async def metrics_agent(stream: Any) -> None:
    """Route: cut each metrics request by metric name onto the routed topic (streams.agents.routing)."""
    async for events in stream.noack_take(W.batch_max_messages, within=W.batch_within_s):
        futures, dead = [], []
        for event in events:
            raw = _raw(event)
            if len(raw.value) > W.max_message_bytes:
                dead.append(DeadLetter(raw, "too_large", f"{len(raw.value)} bytes is over the limit of "
                                                         f"{W.max_message_bytes}"))
                continue
            try:
                parts = split_metrics(raw, K.encoding_for(raw.topic), K.partitions)
            except BadMessage as exc:
                dead.append(DeadLetter(raw, exc.reason, exc.detail))
                continue
            except (ValueError, TypeError, OverflowError) as exc:
                dead.append(DeadLetter(raw, "invalid_value", f"{type(exc).__name__}: {exc}"))
                continue
            for route, payload in sorted(parts.items()):
                futures.append(await metrics_routed_topic.send(
                    key=raw.key, value=encode_envelope("metrics", raw, route, payload), partition=route))
        m.MESSAGES_CONSUMED.labels("metrics").inc(len(events))
        m.MESSAGES_ROUTED.labels("metrics").inc(len(futures))
        for fut in futures:
            await fut  # every part is on the broker before its source message is acked
        if dead:
            await publish_dead_letters("metrics", dead)
        for event in events:
            await stream.ack(event)


async def commit_stage_state() -> None:
    """After a batch's rows are written: store the budget state changes, announce crossings."""
    if stages.budget is None:
        return
    done = stages.budget.commit()
    await series_state.put(done.set, done.delete)  # on the broker before the offsets are acked
    for rec in done.alerts:  # at least once: a crash before the ack announces a crossing again
        fut = await alerts_topic.send(key=f"{rec['Kind']}/{rec['Name']}".encode(), value=encode_avro(rec))
        await fut
        m.ALERTS_PUBLISHED.labels(rec["Kind"], rec["State"]).inc()
        log.warning("alert %s: %s %s (%s)", rec["State"], rec["Kind"], rec["Name"],
                    ", ".join(f"{k}={v}" for k, v in sorted(rec["Details"].items())))


@app.agent(metrics_routed_topic, name="otelpipe.metrics.routed", concurrency=1)
async def routed_metrics_agent(stream: Any) -> None:
    """Write the metrics routed to this worker's partitions: every point of a metric is here."""

    async def restore_state(events: list) -> None:
        await series_state.restore({event.message.partition for event in events})

    await consume_signal("metrics", stream, unwrap=lambda raw: virtual_message(decode_envelope(raw.value), raw),
                         before_write=restore_state, after_write=commit_stage_state)


@app.timer(interval=5.0)
async def measure_consumer_lag() -> None:
    consumer = app.consumer
    for tp in list(consumer.assignment()):
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # not fetched yet
            continue
        if highwater is None:
            continue
        committed = consumer._committed_offset.get(tp)  # last committed offset, None before the first commit
        lag = highwater - (committed + 1 if committed is not None else 0)
        m.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


_alert_tracker = AlertTracker()
_alert_tracker_seeded = False


def _evaluate_slos_now() -> list[dict]:
    """On the ClickHouse thread: burn rates now, alert transitions, rows into otelpipe_alerts."""
    global _alert_tracker_seeded
    sink = _open_sink()
    db = settings.clickhouse.database
    if not _alert_tracker_seeded:
        result = sink.query(latest_states_query(db))
        _alert_tracker.seed(dict(zip(result.column_names, row)) for row in result.result_rows)
        _alert_tracker_seeded = True
    now = datetime.now(timezone.utc)
    slo = with_catalog_objectives(settings.slo, stages.catalog.entries)
    result = sink.query(counts_query(db), query_parameters(now, slo))
    verdicts = evaluate_rows(list(result.column_names), [list(r) for r in result.result_rows], slo)
    firing = [from_burn(alert) for verdict in verdicts for alert in verdict.alerts]
    records = _alert_tracker.transitions(firing, int(now.timestamp() * 1000), kinds={"slo_burn"})
    if records:
        names, columns = alert_table_columns(records)
        sink.client.insert(f"{db}.{ALERTS_TABLE}", columns, column_names=names, column_oriented=True)
    return records


async def evaluate_slos() -> None:
    try:
        records = await on_clickhouse_thread(_evaluate_slos_now)
    except Exception as exc:  # an evaluation that fails is retried at the next tick
        m.SLO_EVALUATIONS.labels("failed").inc()
        log.warning("SLO evaluation failed: %s", exc)
        return
    m.SLO_EVALUATIONS.labels("ok").inc()
    for rec in records:
        fut = await alerts_topic.send(key=f"{rec['Service']}/{rec['Name']}".encode(), value=encode_avro(rec))
        await fut
        m.ALERTS_PUBLISHED.labels(rec["Kind"], rec["State"]).inc()
        log.warning("alert %s: %s %s %s (value %.2f, threshold %.2f)", rec["State"], rec["Kind"],
                    rec["Service"], rec["Name"], rec["Value"], rec["Threshold"])


if settings.slo.evaluate_every_s > 0:
    # One evaluator per consumer group: the leader worker's.
    app.timer(interval=settings.slo.evaluate_every_s, on_leader=True)(evaluate_slos)


# ------------------------------------------------------------------ label policy, hot reloaded


def apply_policy_text(text: str, source: str) -> bool:
    """Validate and swap in a new label policy; an invalid one is refused and the old one stays."""
    if stages.labels is None:  # label_policy = off
        return False
    try:
        policy = parse_policy(tomllib.loads(text))
    except (PolicyError, tomllib.TOMLDecodeError) as exc:
        m.POLICY_RELOADS.labels(source, "rejected").inc()
        log.error("label policy from %s refused, the current one stays: %s", source, exc)
        return False
    stages.labels = LabelStage(policy)  # one reference swap: the next batch uses it
    if stages.budget is not None:
        stages.budget.set_policy(policy.budgets)
    m.POLICY_RELOADS.labels(source, "applied").inc()
    log.warning("label policy from %s applied (%d cardinality rules)", source, len(policy.rules))
    return True


def _file_mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


# The version of the file `stages` was built from (taken at import, right after loading it).
_policy_file_mtime: int | None = None if W.label_policy in ("default", "off") else _file_mtime(W.label_policy)


@app.timer(interval=2.0)
async def follow_policy_file() -> None:
    global _policy_file_mtime
    path = W.label_policy
    if path in ("default", "off"):
        return
    mtime = _file_mtime(path)
    if mtime is not None and mtime != _policy_file_mtime:
        _policy_file_mtime = mtime
        apply_policy_text(Path(path).read_text(), "file")


async def follow_compacted_topic(topic: str, on_records: Any) -> None:
    """Read a one-partition compacted topic whole (no consumer group: every worker sees every
    record), then follow it, handing each non-empty batch of records to ``on_records``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=K.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        while True:
            records = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            if records:
                on_records(records)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the worker keeps running on what it has
        log.error("following the topic %s stopped: %s", topic, exc)
    finally:
        await consumer.stop()


def _apply_policy_records(records: list) -> None:
    if records[-1].value is not None:  # the newest policy wins
        apply_policy_text(records[-1].value.decode("utf-8", "replace"), "topic")


def fold_keyed_records(records: list, current: dict, parse: Any, errors: type[Exception], counter: Any,
                       what: str) -> dict:
    """A compacted topic's records over the current entries: key → ``parse(key, value)``; None
    (a tombstone) removes the key; a record that does not parse is refused, logged and counted."""
    entries = dict(current)
    for record in records:
        key = (record.key or b"").decode("utf-8", "replace")
        try:
            value = parse(key, record.value)
        except errors as exc:
            counter.labels("rejected").inc()
            log.error("%s record refused: %s", what, exc)
            continue
        if value is None:
            entries.pop(key, None)
        else:
            entries[key] = value
        counter.labels("applied").inc()
    return entries


def _apply_catalog_records(records: list) -> None:
    entries = fold_keyed_records(records, stages.catalog.entries, entry_from_record, CatalogError, m.CATALOG_UPDATES,
                                 "catalog")
    stages.catalog = CatalogStage(entries)  # one reference swap


@app.task
async def follow_policy_topic() -> None:
    if stages.labels is not None:  # label_policy = off ignores pushed policies
        await follow_compacted_topic(W.policy_topic, _apply_policy_records)


_sampling_overrides: dict[str, float] = {}


def _apply_sampling_records(records: list) -> None:
    from streams.stages.sampling import HeadRates, HeadSampler, SamplingError, rate_from_record, rates_with_overrides

    global _sampling_overrides
    _sampling_overrides = fold_keyed_records(records, _sampling_overrides, rate_from_record, SamplingError,
                                             m.SAMPLING_UPDATES, "sampling rate")
    base = HeadRates(settings.sampling.head_rate, settings.sampling.rates())
    rates = rates_with_overrides(base, _sampling_overrides)
    stages.head = HeadSampler(rates, settings.sampling.keep_log_severity)  # one reference swap
    log.warning("head sampling rates: default %g, %s", rates.default,
                ", ".join(f"{k}={v:g}" for k, v in sorted(rates.services.items())) or "no per-service rates")


@app.task
async def follow_sampling_topic() -> None:
    await follow_compacted_topic(settings.sampling.control_topic, _apply_sampling_records)


@app.task
async def follow_catalog_topic() -> None:
    await follow_compacted_topic(W.catalog_topic, _apply_catalog_records)


@app.page("/metrics")
async def metrics_page(web: Any, request: Any) -> Any:
    # Prometheus text exposition format 0.0.4 (aiohttp takes the charset separately).
    return web.bytes(generate_latest(m.REGISTRY), content_type="text/plain; version=0.0.4")


@app.page("/query")
class QueryView(faust.web.View):
    """Read-only SQL for other processes while this one holds the embedded chDB path.

    POST {"sql": "...", "parameters": {...}} → {"columns": [...], "types": [...], "rows": [[...]]}.
    Queries run with ``readonly=1``: nothing sent here can change data.
    """

    async def post(self, request: Any) -> Any:
        try:
            body = orjson.loads(await request.read())
            sql = body["sql"]
            parameters = body.get("parameters") or {}
        except Exception as exc:
            return self.bytes(orjson.dumps({"error": f"bad request: {exc}"}), status=400,
                              content_type="application/json")

        def run() -> Any:
            return _open_sink().query(sql, parameters, readonly=True)

        try:
            result = await on_clickhouse_thread(run)
        except Exception as exc:
            return self.bytes(orjson.dumps({"error": str(exc)}), status=400, content_type="application/json")
        payload = {
            "columns": list(result.column_names),
            "types": [t.name for t in result.column_types],
            "rows": [list(row) for row in result.result_rows],
        }
        return self.bytes(
            orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS), content_type="application/json"
        )
