"""Topic administration over aiokafka: create what otelpipe reads and writes, list what exists."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.tools.kafka_clients import Target, check_connection, connect_args


async def _admin(kafka: Target, **options: object) -> AIOKafkaAdminClient:
    """A started admin client; settings the brokers refuse (a wrong password, an untrusted
    certificate) fail here, with the setting named, instead of in a retry loop."""
    await check_connection(kafka)
    admin = AIOKafkaAdminClient(**connect_args(kafka), **options)
    await admin.start()
    return admin


async def list_topics(kafka: Target, timeout_s: float = 10.0) -> list[str]:
    admin = await _admin(kafka, request_timeout_ms=int(timeout_s * 1000))
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def ensure_topics(kafka: Target, topics: list[str], partitions: int, replication: int = 1,
                        configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = await _admin(kafka, request_timeout_ms=30000)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                response = await admin.create_topics(
                    [NewTopic(name=t, num_partitions=partitions, replication_factor=replication,
                              topic_configs=configs or {}) for t in missing]
                )
            except TopicAlreadyExistsError:
                return missing  # another process created them between the list and the create
            problems = [f"{err[0]}: error {err[1]} {err[2] if len(err) > 2 else ''}".strip()
                        for err in getattr(response, "topic_errors", []) if err[1] not in (0, 36)]  # 36: exists
            if problems:
                raise RuntimeError("creating topics failed: " + "; ".join(problems))
        return missing
    finally:
        await admin.close()


async def delete_topics(kafka: Target, topics: list[str]) -> None:
    admin = await _admin(kafka, request_timeout_ms=30000)
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def topic_partitions(kafka: Target, topic: str) -> list[int]:
    """The partition numbers of a topic; empty when it does not exist."""
    admin = await _admin(kafka, request_timeout_ms=30000)
    try:
        [described] = await admin.describe_topics([topic])
        if described.get("error_code"):
            return []
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


async def topic_max_message_bytes(kafka: Target, topics: list[str]) -> dict[str, int]:
    """``max.message.bytes`` of each existing topic (its own setting, or the broker's default)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = await _admin(kafka, request_timeout_ms=30000)
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t in existing]
        if not wanted:
            return {}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=["max.message.bytes"]) for t in wanted])
        found: dict[str, int] = {}
        for response in responses:
            for resource in getattr(response, "resources", []):
                name, entries = resource[3], resource[4]
                for entry in entries:
                    if entry[0] == "max.message.bytes" and entry[1] is not None:
                        found[name] = int(entry[1])
        return found
    finally:
        await admin.close()


def undersized_topics(limits: dict[str, int], needed: int) -> list[str]:
    """Warnings for topics that refuse records otelpipe may write (a routed part or a dead letter
    of a message of ``worker.max_message_bytes``)."""
    return [f"topic {topic} accepts records of at most {limit} bytes (max.message.bytes) but otelpipe writes up "
            f"to {needed} with the current worker.max_message_bytes: larger dead letters are stored cut and "
            f"larger routed parts dead-letter their source; raise it (kafka-configs --alter --entity-type topics "
            f"--entity-name {topic} --add-config max.message.bytes={needed})"
            for topic, limit in sorted(limits.items()) if limit < needed]
