"""Control of running workers: config, policy, sampling and catalog (check files, push to topics).

Everything written to a control topic is signed with the control key (``control.key``,
``control.key_file`` or ``<worker.data_dir>/control.key``), with a signed_at after that of the
newest record of the same key already there, so the workers apply it (``streams.control_auth``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

import orjson

from streams.cli.common import settings_from
from streams.cli.render import FORMATS, format_table
from streams.config import Settings, describe
from streams.control_auth import (MAX_ENTRY_BYTES, MAX_POLICY_BYTES, ControlAuthError, RecordGuard, check_size,
                                  next_signed_at, sign, signed_at, verify)
from streams.tools.kafka_clients import connect_args


def _print_schema(schema: dict) -> int:
    print(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.schema:
        from streams.config import config_json_schema

        return _print_schema(config_json_schema())
    settings = settings_from(args)
    print(format_table(["setting", "value", "unit", "meaning"], describe(settings), max_width=90))
    return 0


def newest_signed(key: bytes, topic: str, records: list) -> dict[bytes, int]:
    """Per record key, the signed_at of the newest record on ``topic`` that verifies with ``key``."""
    newest: dict[bytes, int] = {}
    for record in records:
        try:
            verify(key, topic, record, max_value_bytes=MAX_POLICY_BYTES)
        except ControlAuthError:
            continue
        at = signed_at(record)
        newest[bytes(record.key)] = max(at, newest.get(bytes(record.key), at))
    return newest


def verified_latest(key: bytes, topic: str, records: list,
                    max_value_bytes: int = MAX_ENTRY_BYTES) -> tuple[dict[str, bytes | None], Counter]:
    """What the workers apply from a compacted topic's records: the latest value per key among the
    records they accept, and how many they refuse, by reason."""
    guard, latest, refused = RecordGuard(key, topic, max_value_bytes), {}, Counter()
    for record in records:
        try:
            if guard.admit(record):
                latest[bytes(record.key).decode("utf-8", "replace")] = record.value
        except ControlAuthError as exc:
            refused[exc.reason] += 1
    return latest, refused


async def send_signed(settings: Settings, topic: str, records: list[tuple[bytes, bytes | None]],
                      max_value_bytes: int = MAX_ENTRY_BYTES) -> None:
    """Sign ``records`` (key, value or None for a tombstone) and send them, in order, to the
    one-partition compacted control ``topic`` (made when missing). Raises ControlAuthError
    (``too_large``) before sending anything when a record is over the bounds workers accept."""
    from aiokafka import AIOKafkaProducer

    from streams.agents.control_key import control_key
    from streams.agents.followers import read_compacted_topic
    from streams.tools.kafka_admin import ensure_topics

    for record_key, value in records:
        check_size(record_key, value, max_value_bytes)
    key = control_key(settings)
    bootstrap = settings.kafka
    await ensure_topics(bootstrap, [topic], 1, configs=settings.topic_configs(**{"cleanup.policy": "compact"}))
    newest = newest_signed(key, topic, await read_compacted_topic(bootstrap, topic))
    producer = AIOKafkaProducer(**connect_args(bootstrap), acks="all")
    await producer.start()
    try:
        for record_key, value in records:
            at = next_signed_at(time.time_ns() // 1_000_000, newest.get(record_key))
            newest[record_key] = at
            await producer.send_and_wait(topic, value, key=record_key, partition=0,
                                         headers=sign(key, topic, record_key, value, at))
    finally:
        await producer.stop()


def _send_or_explain(settings: Settings, topic: str, records: list[tuple[bytes, bytes | None]],
                     max_value_bytes: int = MAX_ENTRY_BYTES) -> bool:
    try:
        asyncio.run(send_signed(settings, topic, records, max_value_bytes))
    except ControlAuthError as exc:
        print(f"not sent to {topic}, workers would refuse it: {exc}", file=sys.stderr)
        return False
    return True


def cmd_sampling(args: argparse.Namespace) -> int:
    """Head sampling rates at runtime: every worker follows the compacted control topic."""
    from streams.stages.sampling import SamplingError, probability_to_threshold, threshold_to_th

    if args.action == "schema":
        from streams.stages.tail_policies import tail_policy_json_schema

        return _print_schema(tail_policy_json_schema())
    settings = settings_from(args)
    if args.action == "check":
        from streams.stages.tail_policies import TailPolicyError, load_policies

        path = args.policies or settings.sampling.tail_policy_file
        try:
            policies = load_policies(path or None)
        except TailPolicyError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{path or '(default tail policies)'}: valid — " + ", ".join(f"{p.name} ({p.type})" for p in policies))
        return 0
    topic = settings.sampling.control_topic
    key = args.service or "*"

    if args.action == "set":
        if args.rate is None:
            print("sampling set needs a rate, e.g. otelpipe sampling set 0.1", file=sys.stderr)
            return 2
        try:
            probability_to_threshold(args.rate)
        except SamplingError as exc:
            print(exc, file=sys.stderr)
            return 2
        if not _send_or_explain(settings, topic, [(key.encode(), repr(args.rate).encode())]):
            return 2
        print(f"head sampling rate of {'every service without a rate' if key == '*' else key}: {args.rate:g}")
        return 0
    if args.action == "clear":
        if not _send_or_explain(settings, topic, [(key.encode(), None)]):
            return 2
        print(f"runtime rate of {key} removed; the configured rate applies")
        return 0
    from streams.agents.control_key import control_key
    from streams.agents.followers import read_compacted_topic

    latest, refused = verified_latest(control_key(settings), topic,
                                      asyncio.run(read_compacted_topic(settings.kafka, topic)))
    overrides = {k: v for k, v in latest.items() if v is not None}
    if refused:
        print(f"{sum(refused.values())} records on {topic} are not applied by the workers and not shown ("
              + ", ".join(f"{reason}: {n}" for reason, n in sorted(refused.items())) + ")", file=sys.stderr)
    rows = [["* (default)", f"{settings.sampling.head_rate:g}", overrides.get("*", b"").decode() or "-"]]
    configured = settings.sampling.rates()
    for name in sorted(set(configured) | {k for k in overrides if k != "*"}):
        rows.append([name, f"{configured[name]:g}" if name in configured else "-",
                     overrides.get(name, b"").decode() or "-"])
    for row in rows:
        effective = float(row[2]) if row[2] != "-" else float(row[1]) if row[1] != "-" else None
        row.append("" if effective is None else f"{effective:g} (th:{threshold_to_th(probability_to_threshold(effective))})")
    print(FORMATS[args.format](["service", "configured", "runtime", "effective"], rows))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from streams.stages.catalog import load_catalog

    settings = settings_from(args)
    entries = load_catalog(args.file)  # CatalogError lists every problem
    if args.action == "check":
        print(f"{args.file}: valid — {len(entries)} services")
        return 0

    records = []
    for name, entry in entries.items():
        fields = (("team", entry.team), ("tier", entry.tier), ("owner", entry.owner),
                  ("availability", entry.availability), ("latency_ms", entry.latency_ms),
                  ("latency_target", entry.latency_target))
        body = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in fields if v not in (None, ""))
        records.append((name.encode(), body.encode()))
    if not _send_or_explain(settings, settings.worker.catalog_topic, records):
        return 2
    print(f"{len(entries)} services sent to {settings.worker.catalog_topic}; running workers apply them within seconds")
    return 0


def _warn_if_weaker(settings: Settings, policy) -> None:
    """Workers refuse a topic policy that redacts less than their own: say so when it does than
    the one this configuration names (the workers' may differ, so the policy is sent anyway)."""
    from streams.stages.label_policy import PolicyError, load_policy
    from streams.stages.policy_floor import relaxations

    choice = settings.worker.label_policy
    if choice == "off" or settings.control.topic_policy_may_relax:
        return
    try:
        base = load_policy(None if choice == "default" else choice)
    except PolicyError:  # the workers report their own file; the pushed policy is what is checked here
        print(f"warning: worker.label_policy ({choice}) is invalid here, so whether workers refuse this policy "
              "as weaker than theirs is not checked", file=sys.stderr)
        return
    weaker = relaxations(base, policy)
    if weaker:
        print("warning: this policy redacts less than worker.label_policy "
              f"({choice}), so workers configured like this refuse it (weaker_policy) unless "
              "control.topic_policy_may_relax is true:\n  " + "\n  ".join(weaker), file=sys.stderr)


def cmd_policy(args: argparse.Namespace) -> int:
    from streams.stages.label_policy import load_policy, policy_json_schema

    if args.action == "schema":
        return _print_schema(policy_json_schema())
    if not args.file:
        print(f"otelpipe policy {args.action}: name the policy file", file=sys.stderr)
        return 2
    policy = load_policy(args.file)  # PolicyError lists every problem
    if args.action == "push":
        settings = settings_from(args)
        _warn_if_weaker(settings, policy)
        with open(args.file, "rb") as f:
            text = f.read()
        if not _send_or_explain(settings, settings.worker.policy_topic, [(b"policy", text)], MAX_POLICY_BYTES):
            return 2
        print(f"{args.file}: valid, sent to {settings.worker.policy_topic}; running workers apply it within seconds")
        return 0
    print(f"{args.file}: valid — {len(policy.rules)} cardinality rules, redaction mode {policy.redaction.mode}, "
          f"values {policy.redaction.value_action}ed, span names {'templated' if policy.template_span_names else 'kept'}, "
          f"{len(policy.allowed_metric_names) or 'all'} metric name patterns allowed")
    return 0
