"""The faust app of one worker, built from a settings object: ``create_app(settings)``.

Importing this module reads no settings, builds no state and opens no connection; everything
is made by ``create_app``, so one process can build several apps (tests do) and ``otelpipe run``
passes its settings directly. The agents are thin wiring:

- ``otelpipe.spans`` / ``otelpipe.logs``: writers (streams.agents.writers), or with
  ``sampling.tail`` routers by trace id (streams.agents.routers) and ``otelpipe.tail`` deciding
  traces (streams.agents.tail_worker);
- ``otelpipe.metrics``: router by metric name; ``otelpipe.metrics.routed``: the metrics writer
  with series-budget state;
- timers: consumer lag, SLO evaluation on the leader, the label policy file; tasks: the
  control-topic followers (streams.agents.followers); pages: ``/metrics``, ``/query``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faust

from streams.agents import worker_metrics as m
from streams.agents.control_key import control_key
from streams.agents.followers import ControlFollowers, follow_compacted_topic
from streams.agents.routers import route_by_trace, route_metrics
from streams.agents.routing import decode_envelope, virtual_message
from streams.agents.runtime import Runtime, trim_heap
from streams.agents.slo_evaluator import SloEvaluator
from streams.agents.web import add_pages
from streams.agents.writers import commit_stage_state, consume_signal
from streams.config import Settings, resolve_path
from streams.tools.kafka_clients import faust_credentials


PRODUCER_BATCH_BYTES = 512 * 1024


def faust_app(settings: Settings) -> faust.App:
    """The bare faust app: broker, web server, commit and buffer settings."""
    k, w = settings.kafka, settings.worker
    return faust.App(
        w.app_id,
        broker=[f"kafka://{server.strip()}" for server in k.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(k),  # kafka.security_protocol, SASL, TLS
        store="memory://",
        datadir=str(resolve_path(w.data_dir)),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=k.partitions,
        consumer_auto_offset_reset="earliest",
        web_host=w.web_host,
        web_port=w.web_port,
        web_bind=w.web_host,
        web_in_thread=False,
        producer_acks=-1,
        producer_max_request_size=settings.record_max_bytes(),  # dead letters and routed parts of the largest message
        # Routed records (a source message's parts for one tail partition) are tens of KiB: faust's
        # 16 KiB default makes each its own batch, and a produce request carries one batch per
        # partition, so the routers paid a request (encoded in Python) per record. Half of Kafka's
        # default record limit, which also bounds a batch on a topic otelpipe did not create.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=min(3.0, w.session_timeout_s / 3),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, 4 * w.batch_max_messages),
        # A revoke must not wait for every delivered message to be acked: held messages (a recorded
        # range only partly re-delivered) and a write blocked on ClickHouse never would be. Writers
        # instead stop writing the partitions they lost (``Runtime.owns``, checked before inserts).
        stream_wait_empty=False,
        autodiscover=False,
    )


@dataclass(frozen=True)
class BuiltWorker:
    """A built worker: the faust app to run, and the runtime its agents share (stages, sink)."""

    app: faust.App
    runtime: Runtime


def create_app(settings: Settings) -> faust.App:
    """The worker's app with every topic, agent, timer, task and page. An invalid label policy or
    tail policy file raises here, with every problem listed, and so does a control key file that
    cannot be read (the default one is made here when there is none)."""
    return build_worker(settings).app


def build_worker(settings: Settings) -> BuiltWorker:
    """``create_app``, also handing back the runtime (for tests and tools that look inside)."""
    app = faust_app(settings)
    rt = Runtime(settings, app)
    k = settings.kafka

    spans_topic = rt.topic(k.spans_topic)
    logs_topic = rt.topic(k.logs_topic)
    metrics_topic = rt.topic(k.metrics_topic)
    metrics_routed_topic = rt.topic(settings.routed_topic(k.metrics_topic))

    @app.on_partitions_assigned.connect
    async def hold_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        rt.assigned = {(tp.topic, tp.partition) for tp in assigned}

    @app.on_partitions_revoked.connect
    async def forget_revoked_state(sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Another worker may own these partitions next and change their state: re-read it if they return."""
        rt.assigned = rt.assigned - {(tp.topic, tp.partition) for tp in revoked}
        rt.series_state.forget({tp.partition for tp in revoked
                                if tp.topic == metrics_routed_topic.get_topic_name()})

    if settings.sampling.tail:
        _add_tail_sampling(app, rt, spans_topic, logs_topic)
    else:
        @app.agent(spans_topic, name="otelpipe.spans", concurrency=1)
        async def spans_agent(stream: Any) -> None:
            await consume_signal(rt, "traces", stream)

        @app.agent(logs_topic, name="otelpipe.logs", concurrency=1)
        async def logs_agent(stream: Any) -> None:
            await consume_signal(rt, "logs", stream)

    @app.agent(metrics_topic, name="otelpipe.metrics", concurrency=1)
    async def metrics_agent(stream: Any) -> None:
        """Route: cut each metrics request by metric name onto the routed topic."""
        await route_metrics(rt, metrics_routed_topic, stream)

    @app.agent(metrics_routed_topic, name="otelpipe.metrics.routed", concurrency=1)
    async def routed_metrics_agent(stream: Any) -> None:
        """Write the metrics routed to this worker's partitions: every point of a metric is here."""

        async def restore_state(events: list) -> None:
            await rt.series_state.restore({event.message.partition for event in events})

        async def after_write() -> None:
            await commit_stage_state(rt)

        await consume_signal(rt, "metrics", stream,
                             unwrap=lambda raw: virtual_message(decode_envelope(raw.value), raw),
                             before_write=restore_state, after_write=after_write)

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

    if settings.slo.evaluate_every_s > 0:
        # One evaluator per consumer group: the leader worker's.
        app.timer(interval=settings.slo.evaluate_every_s, on_leader=True)(SloEvaluator(rt).tick)

    _add_followers(app, rt)
    add_pages(app, rt)
    return BuiltWorker(app, rt)


def _add_followers(app: faust.App, rt: Runtime) -> None:
    settings = rt.settings
    control = ControlFollowers(settings, rt.stages, control_key(settings))
    servers = settings.kafka

    @app.timer(interval=2.0)
    async def follow_policy_file() -> None:
        control.check_policy_file()

    @app.task
    async def follow_policy_topic() -> None:
        if rt.stages.labels is not None:  # label_policy = off ignores pushed policies
            await follow_compacted_topic(servers, settings.worker.policy_topic, control.apply_policy_records)

    @app.task
    async def follow_sampling_topic() -> None:
        await follow_compacted_topic(servers, settings.sampling.control_topic, control.apply_sampling_records)

    @app.task
    async def follow_catalog_topic() -> None:
        await follow_compacted_topic(servers, settings.worker.catalog_topic, control.apply_catalog_records)


def _add_tail_sampling(app: faust.App, rt: Runtime, spans_topic: faust.TopicT, logs_topic: faust.TopicT) -> None:
    from streams.agents.keyed_state import ChangelogState
    from streams.agents.tail_worker import TailWorker, part_partition, state_partition
    from streams.stages.tail_policies import load_policies

    settings = rt.settings
    k, w, s = settings.kafka, settings.worker, settings.sampling
    tail_topic = rt.topic(settings.tail_topic())
    partition_of_part = part_partition(k.partitions)
    store_dir = resolve_path(w.data_dir) / "state" if w.state_store == "rocksdict" else None
    tail_worker = TailWorker(
        stages=rt.stages, policies=load_policies(s.tail_policy_file or None),
        parts=ChangelogState(k, settings.tail_topic(), partition_of_part, store_dir=store_dir),
        state=ChangelogState(k, settings.state_topic("tail-sampling"), state_partition(k.partitions)),
        decision_wait_s=s.decision_wait_s, max_traces=s.max_traces, max_spans_per_trace=s.max_spans_per_trace,
        decision_cache_s=s.decision_cache_s, keep_log_severity=s.keep_log_severity, late_default=s.late_default,
        group_rounds=s.tail_group_rounds, run_blocking=rt.on_clickhouse_thread, write=rt.write_with_token_until_done,
        dead_letters=lambda dead: rt.publish_dead_letters("traces", dead),
    )

    @app.agent(spans_topic, name="otelpipe.spans", concurrency=1)
    async def spans_router(stream: Any) -> None:
        await route_by_trace(rt, tail_topic, partition_of_part, "traces", stream)

    @app.agent(logs_topic, name="otelpipe.logs", concurrency=1)
    async def logs_router(stream: Any) -> None:
        await route_by_trace(rt, tail_topic, partition_of_part, "logs", stream)

    @app.agent(tail_topic, name="otelpipe.tail", concurrency=1)
    async def tail_agent(stream: Any) -> None:
        """Index the parts of the traces this worker owns; decide the due ones."""
        await rt.sink_when_reachable("traces")
        async for events in stream.noack_take(w.batch_max_messages, within=w.batch_within_s):
            records = [(e.message.partition, e.message.offset, (e.message.key or b"").decode("utf-8", "replace"),
                        e.message.value) for e in events]
            await tail_worker.take(records, int(time.time() * 1000), owned=owned)
            for event in events:  # indexed; the part itself is durable on the routed topic
                await stream.ack(event)
            del events, records  # the fetched copies: the index keeps the values it needs
            trim_heap()

    # The tail partitions this worker owns, from the rebalance callbacks: consumer.assignment()
    # keeps answering the old assignment until SyncGroup completes, so a tick during a rebalance
    # would restore a partition just released, and its next owner restores it too.
    owned: set[int] = set()
    tail_name = settings.tail_topic()

    @app.on_partitions_assigned.connect
    async def own_assigned_traces(sender: Any, assigned: Any, **kwargs: Any) -> None:
        owned.clear()
        owned.update(tp.partition for tp in assigned if tp.topic == tail_name)

    @app.timer(interval=1.0)
    async def tail_decisions() -> None:
        if owned or tail_worker.indexes:
            await tail_worker.tick(owned=owned)  # the live set: read under the tail worker's lock

    @app.on_partitions_revoked.connect
    async def forget_revoked_traces(sender: Any, revoked: Any, **kwargs: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == tail_name}
        owned.difference_update(gone)  # before waiting for the round in flight: no tick claims them again
        await tail_worker.release(gone)
