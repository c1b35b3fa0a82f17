"""Control that changes a running worker: the label policy (file and topic), head-sampling rates
and the service catalog (compacted topics every worker reads whole, with no consumer group).

Every control record is verified before it is parsed (``streams.control_auth``): unsigned, badly
signed, oversized and stale records (not newer than the one already applied for their key) are
refused, logged with their reason only and counted in ``otelpipe_control_refused_total{topic,
reason}``. A label policy from the topic must also redact at least as much as the worker's own
(``streams.stages.policy_floor``) unless ``control.topic_policy_may_relax``.

A new policy, rate set or catalog is validated first; an invalid one is refused, logged and
counted, and the current one stays. A follower that loses the broker reconnects with capped
backoff and reads the topic again from the start (``otelpipe_follower_up{topic}`` shows it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import tomllib
from pathlib import Path
from typing import Any, Callable

from streams.agents import worker_metrics as m
from streams.config import Settings
from streams.control_auth import MAX_POLICY_BYTES, ControlAuthError, RecordGuard
from streams.stages.catalog import CatalogError, CatalogStage, entry_from_record
from streams.stages.label_policy import PolicyError, parse_policy
from streams.stages.labels import LabelStage
from streams.stages.pipeline import Stages
from streams.stages.policy_floor import relaxations
from streams.stages.sampling import HeadRates, HeadSampler, SamplingError, rate_from_record, rates_with_overrides
from streams.tools.kafka_clients import Target, connect_args

log = logging.getLogger("otelpipe.worker")


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


def admitted(guard: RecordGuard, records: list) -> list:
    """The records of a batch that verify and are new (in topic order); the others are refused,
    logged by offset and reason (never their content) and counted."""
    out = []
    for record in records:
        try:
            if guard.admit(record):
                out.append(record)
        except ControlAuthError as exc:
            m.CONTROL_REFUSED.labels(guard.topic, exc.reason).inc()
            log.error("control record at offset %s of %s refused: %s", getattr(record, "offset", "?"), guard.topic,
                      exc)
    return out


async def follow_compacted_topic(kafka: Target, topic: str, on_records: Callable[[list], None], *,
                                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                                 consumer_factory: Callable[..., Any] | None = None) -> None:
    """Read a one-partition compacted topic whole, then follow it, handing each non-empty batch of
    records to ``on_records``. Any failure (broker away, topic deleted) reconnects with capped
    backoff and reads the topic from the start again, so the folded state is rebuilt whole."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    make = consumer_factory or AIOKafkaConsumer
    delay = retry_initial_s
    m.FOLLOWER_UP.labels(topic).set(0)
    while True:
        consumer = make(**connect_args(kafka), group_id=None, enable_auto_commit=False)
        try:
            await consumer.start()
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            m.FOLLOWER_UP.labels(topic).set(1)
            while True:
                records = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                if records:
                    on_records(records)
                delay = retry_initial_s
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker keeps running on what it has, and tries again
            m.FOLLOWER_UP.labels(topic).set(0)
            m.FOLLOWER_RESTARTS.labels(topic).inc()
            log.error("following the topic %s failed, reconnecting in %.1fs: %s", topic, delay, exc)
        finally:
            try:
                await consumer.stop()
            except Exception:
                pass
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, retry_max_s)


async def read_compacted_topic(kafka: Target, topic: str) -> list:
    """A one-partition compacted topic's records, from the start to its current end (an absent or
    empty topic: none). For tools that need what the workers follow, once."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.tools.kafka_admin import topic_partitions

    if not await topic_partitions(kafka, topic):
        return []
    consumer = AIOKafkaConsumer(**connect_args(kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list = []
        while await consumer.position(tp) < end:
            records.extend(r for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []) if r.offset < end)
        return records
    finally:
        await consumer.stop()


def _file_mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


class ControlFollowers:
    """Applies control records to one worker's ``Stages`` by reference swaps; ``key`` verifies them
    (``streams.agents.control_key.control_key``)."""

    def __init__(self, settings: Settings, stages: Stages, key: bytes):
        self.settings = settings
        self.stages = stages
        path = settings.worker.label_policy
        # The version of the file the stages were built from (read right after building them).
        self.policy_file_mtime = None if path in ("default", "off") else _file_mtime(path)
        # What a topic policy may not redact less than: the file's policy, or the defaults.
        self.base_policy = stages.labels.policy if stages.labels is not None else None
        self.sampling_overrides: dict[str, float] = {}
        self.policy_guard = RecordGuard(key, settings.worker.policy_topic, MAX_POLICY_BYTES)
        self.sampling_guard = RecordGuard(key, settings.sampling.control_topic)
        self.catalog_guard = RecordGuard(key, settings.worker.catalog_topic)

    def apply_policy_text(self, text: str, source: str) -> bool:
        """Validate and swap in a new label policy; an invalid one (or, from the topic, one that
        redacts less than the base policy) is refused and the old one stays."""
        if self.stages.labels is None:  # label_policy = off
            return False
        try:
            policy = parse_policy(tomllib.loads(text))
        except (PolicyError, tomllib.TOMLDecodeError) as exc:
            m.POLICY_RELOADS.labels(source, "rejected").inc()
            log.error("label policy from %s refused, the current one stays: %s", source, exc)
            return False
        weaker = relaxations(self.base_policy, policy) if source == "topic" and self.base_policy else []
        if weaker and not self.settings.control.topic_policy_may_relax:
            m.POLICY_RELOADS.labels(source, "rejected").inc()
            m.CONTROL_REFUSED.labels(self.settings.worker.policy_topic, "weaker_policy").inc()
            log.error("label policy from %s refused, it redacts less than the worker's own (weaker_policy; "
                      "control.topic_policy_may_relax allows it): %s", source, "; ".join(weaker))
            return False
        if source == "file":
            self.base_policy = policy
        self.stages.labels = LabelStage(policy)  # one reference swap: the next batch uses it
        if self.stages.budget is not None:
            self.stages.budget.set_policy(policy.budgets)
        m.POLICY_RELOADS.labels(source, "applied").inc()
        log.warning("label policy from %s applied (%d cardinality rules)", source, len(policy.rules))
        return True

    def check_policy_file(self) -> None:
        path = self.settings.worker.label_policy
        if path in ("default", "off"):
            return
        mtime = _file_mtime(path)
        if mtime is not None and mtime != self.policy_file_mtime:
            self.policy_file_mtime = mtime
            self.apply_policy_text(Path(path).read_text(), "file")

    def apply_policy_records(self, records: list) -> None:
        verified = admitted(self.policy_guard, records)
        if verified and verified[-1].value is not None:  # the newest policy that verifies wins
            self.apply_policy_text(verified[-1].value.decode("utf-8", "replace"), "topic")

    def apply_catalog_records(self, records: list) -> None:
        records = admitted(self.catalog_guard, records)
        if not records:
            return
        entries = fold_keyed_records(records, self.stages.catalog.entries, entry_from_record, CatalogError,
                                     m.CATALOG_UPDATES, "catalog")
        self.stages.catalog = CatalogStage(entries)  # one reference swap

    def apply_sampling_records(self, records: list) -> None:
        records = admitted(self.sampling_guard, records)
        if not records:
            return
        s = self.settings.sampling
        self.sampling_overrides = fold_keyed_records(records, self.sampling_overrides,
                                                     functools.partial(rate_from_record, floor=s.min_rate),
                                                     SamplingError, m.SAMPLING_UPDATES, "sampling rate")
        rates = rates_with_overrides(HeadRates(s.head_rate, s.rates(), s.min_rate), self.sampling_overrides)
        self.stages.head = HeadSampler(rates, s.keep_log_severity)  # one reference swap
        log.warning("head sampling rates: default %g, %s", rates.default,
                    ", ".join(f"{k}={v:g}" for k, v in sorted(rates.services.items())) or "no per-service rates")
