"""Topic administration over aiokafka: create what otelpipe reads and writes, list what exists."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def list_topics(bootstrap: str, timeout_s: float = 10.0) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication: int = 1,
                        configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
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


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of a topic; empty when it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        if described.get("error_code"):
            return []
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()
