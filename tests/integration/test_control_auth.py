"""Signed control topics over the real broker: the followers a worker runs apply only records the
CLI signed, refuse and count the rest, and refuse an old signed record produced again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

from aiokafka import AIOKafkaProducer

from streams.agents import worker_metrics as m
from streams.agents.control_key import control_key
from streams.agents.followers import ControlFollowers, follow_compacted_topic, read_compacted_topic
from streams.cli.control import send_signed
from streams.config import load_settings
from streams.control_auth import MAX_POLICY_BYTES
from streams.stages.pipeline import Stages
from streams.tools.kafka_admin import ensure_topics
from tests.conftest import ROOT

TIGHTER = b'[[cardinality.rules]]\ntype = "drop"\nkey = "user.id"\n'
LOOSER = b'[redaction]\ndetect = []\n'


def refused(topic: str, reason: str) -> float:
    return m.CONTROL_REFUSED.labels(topic, reason)._value.get()


async def produce_plain(bootstrap: str, topic: str, key: bytes, value: bytes | None, headers=None) -> None:
    """A record as anyone with write access to the topic can produce it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=0, headers=list(headers or []))
    finally:
        await producer.stop()


async def until(check, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s}s for {what}")
        await asyncio.sleep(0.1)


def test_followers_apply_only_signed_fresh_records(kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = {"OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "worker"),
           "OTELPIPE_WORKER_POLICY_TOPIC": f"c{tag}.policy", "OTELPIPE_WORKER_CATALOG_TOPIC": f"c{tag}.catalog",
           "OTELPIPE_SAMPLING_CONTROL_TOPIC": f"c{tag}.sampling"}
    settings = load_settings(env=env)
    w, sampling = settings.worker, settings.sampling.control_topic
    stages = Stages.from_settings(settings)
    # the worker's key: the default file in its data directory, which the CLI of the same configuration finds
    control = ControlFollowers(settings, stages, control_key(settings))
    base_labels, base_head = stages.labels, stages.head

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)

    async def run() -> None:
        await ensure_topics(kafka_bootstrap, [w.policy_topic, w.catalog_topic, sampling], 1,
                            configs=settings.topic_configs(**{"cleanup.policy": "compact"}))
        tasks = [asyncio.create_task(follow_compacted_topic(kafka_bootstrap, topic, apply, retry_initial_s=0.2))
                 for topic, apply in ((w.policy_topic, control.apply_policy_records),
                                      (w.catalog_topic, control.apply_catalog_records),
                                      (sampling, control.apply_sampling_records))]
        try:
            # 1. Unsigned records, as a plain producer writes them: refused, counted, nothing changes.
            before = {t: refused(t, "unsigned") for t in (w.policy_topic, w.catalog_topic, sampling)}
            await produce_plain(kafka_bootstrap, sampling, b"*", b"0.01")
            await produce_plain(kafka_bootstrap, w.catalog_topic, b"cart", b'team = "forged"')
            await produce_plain(kafka_bootstrap, w.policy_topic, b"policy", LOOSER)
            await until(lambda: all(refused(t, "unsigned") == n + 1 for t, n in before.items()),
                        "the unsigned records to be refused")
            assert stages.head is base_head and stages.catalog.entries == {} and stages.labels is base_labels

            # 2. Signed by the CLI's code path (and by the CLI itself): applied.
            await send_signed(settings, w.catalog_topic, [(b"cart", b'team = "shop"')])
            await send_signed(settings, w.policy_topic, [(b"policy", TIGHTER)], MAX_POLICY_BYTES)
            result = await asyncio.to_thread(cli, "sampling", "set", "0.5")
            assert result.returncode == 0, result.stderr
            await until(lambda: stages.head.rates.default == 0.5, "the signed rate to be applied")
            await until(lambda: "cart" in stages.catalog.entries, "the signed catalog entry to be applied")
            await until(lambda: stages.labels is not base_labels, "the signed policy to be applied")
            assert stages.catalog.entries["cart"].team == "shop"
            assert [r.type for r in stages.labels.policy.rules] == ["drop"]

            # 3. A newer rate, then the record that set 0.5 produced again, headers and all: stale.
            result = await asyncio.to_thread(cli, "sampling", "set", "0.25")
            assert result.returncode == 0, result.stderr
            await until(lambda: stages.head.rates.default == 0.25, "the newer rate to be applied")
            old = next(r for r in await read_compacted_topic(kafka_bootstrap, sampling) if r.value == b"0.5")
            stale = refused(sampling, "stale")
            await produce_plain(kafka_bootstrap, sampling, old.key, old.value, old.headers)
            await until(lambda: refused(sampling, "stale") == stale + 1, "the replayed record to be refused")
            assert stages.head.rates.default == 0.25

            # 4. A signed policy that redacts less than the worker's own: refused, the tighter one stays.
            tighter, weaker = stages.labels, refused(w.policy_topic, "weaker_policy")
            await send_signed(settings, w.policy_topic, [(b"policy", LOOSER)], MAX_POLICY_BYTES)
            await until(lambda: refused(w.policy_topic, "weaker_policy") == weaker + 1, "the weaker policy refused")
            assert stages.labels is tighter
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(asyncio.wait_for(run(), 180))

    # The CLI's listing shows what the workers apply, and says what it left out.
    shown = cli("sampling", "show", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    default = next(row for row in json.loads(shown.stdout) if row["service"] == "* (default)")
    assert default["runtime"] == "0.25"
    assert "are not applied by the workers" in shown.stderr and "unsigned: 1" in shown.stderr
    assert "stale: 1" in shown.stderr
