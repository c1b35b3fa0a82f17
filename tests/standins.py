"""In-memory stand-ins of the tail worker's compacted topics (ChangelogState's interface), for
unit tests and fuzz targets that run rounds without a broker; and control records as a consumer
hands them over, signed the way the CLI signs them (``control_record``)."""

from types import SimpleNamespace

from streams.control_auth import sign

CONTROL_KEY = b"test-control-key-0123456789abcdef"


class TopicStandIn:
    """One compacted topic: the latest value per key, per partition (what a restore reads)."""

    def __init__(self):
        self.records: dict[int, dict[str, bytes]] = {}


class StateStandIn:
    """ChangelogState's interface over a TopicStandIn."""

    def __init__(self, topic: TopicStandIn, partition_of):
        self.topic, self.partition_of = topic, partition_of
        self._data: dict[int, dict[str, bytes]] = {}
        self.end_offsets: dict[int, int] = {}

    async def restore(self, partitions):
        for p in partitions:
            self._data.setdefault(p, dict(self.topic.records.get(p, {})))
            self.end_offsets[p] = 0

    def get(self, key):
        return self._data.get(self.partition_of(key), {}).get(key)

    def keys(self, partition=None):
        return list(self._data.get(partition, {}))

    def apply_local(self, partition, key, value):
        if partition in self._data:
            self._data[partition][key] = value

    def forget(self, partitions):
        for p in partitions:
            self._data.pop(p, None)

    async def put_atomic(self, sets):
        """A transaction: every record, at once (a crash inside one leaves none)."""
        await self.put(sets)

    async def put(self, sets, deletes=()):
        for key, value in sets.items():
            p = self.partition_of(key)
            self.topic.records.setdefault(p, {})[key] = value
            if p in self._data:
                self._data[p][key] = value
        for key in deletes:
            p = self.partition_of(key)
            self.topic.records.get(p, {}).pop(key, None)
            self._data.get(p, {}).pop(key, None)


def control_record(topic, record_key, value, signed_at_ms=1, offset=0, key=CONTROL_KEY, signed=True):
    """A record of a control topic, as aiokafka's consumer gives it (key, value, headers, offset),
    with the headers ``sign`` makes (none when not ``signed``)."""
    headers = sign(key, topic, record_key, value, signed_at_ms) if signed else []
    return SimpleNamespace(key=record_key, value=value, headers=tuple(headers), offset=offset, topic=topic)
