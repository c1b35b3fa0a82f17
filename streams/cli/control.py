"""Control of running workers: config, policy, sampling and catalog (check files, push to topics)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from streams.cli.common import settings_from
from streams.cli.render import FORMATS, format_table
from streams.config import Settings, describe


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


async def _push_policy(settings: Settings, text: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.tools.kafka_admin import ensure_topics

    await ensure_topics(settings.kafka.bootstrap_servers, [settings.worker.policy_topic], 1,
                        configs=settings.topic_configs(**{"cleanup.policy": "compact"}))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.worker.policy_topic, text, key=b"policy", partition=0)
    finally:
        await producer.stop()


async def _read_compacted(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """The latest value per key of a one-partition compacted topic (empty when it does not exist)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    latest: dict[str, bytes | None] = {}
    try:
        if topic not in await consumer.topics():
            return latest
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                latest[(record.key or b"").decode("utf-8", "replace")] = record.value
    finally:
        await consumer.stop()
    return latest


def cmd_sampling(args: argparse.Namespace) -> int:
    """Head sampling rates at runtime: every worker follows the compacted control topic."""
    from aiokafka import AIOKafkaProducer

    from streams.stages.sampling import SamplingError, probability_to_threshold, threshold_to_th
    from streams.tools.kafka_admin import ensure_topics

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

    async def send(value: bytes | None) -> None:
        await ensure_topics(settings.kafka.bootstrap_servers, [topic], 1, configs=settings.topic_configs(**{"cleanup.policy": "compact"}))
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
        finally:
            await producer.stop()

    if args.action == "set":
        if args.rate is None:
            print("sampling set needs a rate, e.g. otelpipe sampling set 0.1", file=sys.stderr)
            return 2
        try:
            probability_to_threshold(args.rate)
        except SamplingError as exc:
            print(exc, file=sys.stderr)
            return 2
        asyncio.run(send(repr(args.rate).encode()))
        print(f"head sampling rate of {'every service without a rate' if key == '*' else key}: {args.rate:g}")
        return 0
    if args.action == "clear":
        asyncio.run(send(None))
        print(f"runtime rate of {key} removed; the configured rate applies")
        return 0
    overrides = {k: v for k, v in asyncio.run(_read_compacted(settings.kafka.bootstrap_servers, topic)).items()
                 if v is not None}
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
    from aiokafka import AIOKafkaProducer

    from streams.stages.catalog import load_catalog
    from streams.tools.kafka_admin import ensure_topics

    settings = settings_from(args)
    entries = load_catalog(args.file)  # CatalogError lists every problem
    if args.action == "check":
        print(f"{args.file}: valid — {len(entries)} services")
        return 0

    async def push() -> None:
        await ensure_topics(settings.kafka.bootstrap_servers, [settings.worker.catalog_topic], 1,
                            configs=settings.topic_configs(**{"cleanup.policy": "compact"}))
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for name, entry in entries.items():
                fields = (("team", entry.team), ("tier", entry.tier), ("owner", entry.owner),
                          ("availability", entry.availability), ("latency_ms", entry.latency_ms),
                          ("latency_target", entry.latency_target))
                body = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in fields if v not in (None, ""))
                await producer.send_and_wait(settings.worker.catalog_topic, body.encode(), key=name.encode(),
                                             partition=0)
        finally:
            await producer.stop()

    asyncio.run(push())
    print(f"{len(entries)} services sent to {settings.worker.catalog_topic}; running workers apply them within seconds")
    return 0


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
        asyncio.run(_push_policy(settings, open(args.file, "rb").read()))
        print(f"{args.file}: valid, sent to {settings.worker.policy_topic}; running workers apply it within seconds")
        return 0
    print(f"{args.file}: valid — {len(policy.rules)} cardinality rules, redaction mode {policy.redaction.mode}, "
          f"values {policy.redaction.value_action}ed, span names {'templated' if policy.template_span_names else 'kept'}, "
          f"{len(policy.allowed_metric_names) or 'all'} metric name patterns allowed")
    return 0
