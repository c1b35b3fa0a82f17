"""Control-topic followers: records folded over the current entries; a follower that fails reconnects."""

import asyncio
from types import SimpleNamespace

from streams.agents import worker_metrics as m
from streams.agents.followers import fold_keyed_records, follow_compacted_topic
from tests.standins import CONTROL_KEY, control_record


def record(key, value):
    return SimpleNamespace(key=key.encode(), value=value)


def test_fold_applies_in_order_tombstones_remove_and_bad_records_are_refused():
    def parse(key, value):
        if value is None:
            return None
        if value == b"bad":
            raise ValueError("not a rate")
        return float(value)

    entries = fold_keyed_records([record("a", b"0.5"), record("b", b"bad"), record("c", b"1"), record("a", None)],
                                 {"z": 0.1}, parse, ValueError, m.SAMPLING_UPDATES, "sampling rate")
    assert entries == {"z": 0.1, "c": 1.0}


class FlakyConsumer:
    """Fails on its first getmany for the first two connections, then serves one batch."""

    made = 0

    def __init__(self, **kwargs):
        FlakyConsumer.made += 1
        self.number = FlakyConsumer.made

    async def start(self):
        if self.number == 1:
            raise ConnectionError("broker away")

    def assign(self, tps):
        pass

    async def seek_to_beginning(self, tp):
        pass

    async def getmany(self, tp, timeout_ms):
        if self.number == 2:
            raise RuntimeError("topic deleted")
        await asyncio.sleep(0.01)
        return {tp: [record("k", b"v")]}

    async def stop(self):
        pass


def test_a_follower_reconnects_after_any_failure_and_reads_again():
    seen = []

    async def run():
        task = asyncio.create_task(follow_compacted_topic(
            "127.0.0.1:1", "otelpipe.test-follower", seen.extend, retry_initial_s=0.01, retry_max_s=0.02,
            consumer_factory=FlakyConsumer))
        while not seen:
            await asyncio.sleep(0.01)
        up = m.FOLLOWER_UP.labels("otelpipe.test-follower")._value.get()
        task.cancel()
        return up

    up = asyncio.run(asyncio.wait_for(run(), 10))
    assert FlakyConsumer.made == 3 and seen and up == 1
    assert m.FOLLOWER_RESTARTS.labels("otelpipe.test-follower")._value.get() == 2


# ------------------------------------------------------------------ signed control records

def _followers(tmp_path, **env):
    from streams.agents.followers import ControlFollowers
    from streams.config import load_settings
    from streams.stages.pipeline import Stages

    settings = load_settings(env={"OTELPIPE_WORKER_DATA_DIR": str(tmp_path), **env})
    return ControlFollowers(settings, Stages.from_settings(settings), CONTROL_KEY)


def _refused(topic, reason):
    return m.CONTROL_REFUSED.labels(topic, reason)._value.get()


def test_only_verified_sampling_records_change_the_rates(tmp_path):
    control = _followers(tmp_path)
    topic = control.settings.sampling.control_topic
    head = control.stages.head
    before = _refused(topic, "unsigned")
    control.apply_sampling_records([control_record(topic, b"*", b"0.01", signed=False)])
    assert control.stages.head is head and control.sampling_overrides == {}
    assert _refused(topic, "unsigned") == before + 1
    forged = control_record(topic, b"*", b"0.01", key=b"not-the-fleet-key-0123456789")
    control.apply_sampling_records([forged])
    assert control.stages.head is head

    control.apply_sampling_records([control_record(topic, b"*", b"0.5", signed_at_ms=10, offset=1),
                                    control_record(topic, b"cart", b"0.25", signed_at_ms=10, offset=2)])
    assert control.sampling_overrides == {"*": 0.5, "cart": 0.25}
    assert control.stages.head.rates.default == 0.5
    stale = _refused(topic, "stale")
    control.apply_sampling_records([control_record(topic, b"*", b"0.01", signed_at_ms=9, offset=3),
                                    control_record(topic, b"cart", None, signed_at_ms=11, offset=4)])
    assert control.sampling_overrides == {"*": 0.5} and _refused(topic, "stale") == stale + 1


def test_catalog_records_must_verify_for_the_catalog_topic(tmp_path):
    control = _followers(tmp_path)
    catalog, sampling = control.settings.worker.catalog_topic, control.settings.sampling.control_topic
    control.apply_catalog_records([control_record(sampling, b"cart", b'team = "shop"')])  # signed for another topic
    assert control.stages.catalog.entries == {}
    assert _refused(catalog, "bad_signature") >= 1
    control.apply_catalog_records([control_record(catalog, b"cart", b'team = "shop"', signed_at_ms=5, offset=1)])
    assert control.stages.catalog.entries["cart"].team == "shop"
    control.apply_catalog_records([control_record(catalog, b"cart", b"x" * (64 * 1024 + 1), signed_at_ms=6, offset=2)])
    assert control.stages.catalog.entries["cart"].team == "shop" and _refused(catalog, "too_large") >= 1


TIGHTER = b'[[cardinality.rules]]\ntype = "drop"\nkey = "user.id"\n'
LOOSER = b'[redaction]\ndetect = []\n'


def test_the_newest_policy_that_verifies_wins(tmp_path):
    control = _followers(tmp_path)
    topic = control.settings.worker.policy_topic
    base = control.stages.labels
    control.apply_policy_records([control_record(topic, b"policy", TIGHTER, signed_at_ms=1, offset=0),
                                  control_record(topic, b"policy", LOOSER, offset=1, signed=False)])
    assert control.stages.labels is not base and control.stages.labels.policy.rules[0].type == "drop"
    applied = control.stages.labels
    control.apply_policy_records([control_record(topic, b"policy", TIGHTER, signed_at_ms=1, offset=0),
                                  control_record(topic, b"policy", LOOSER, offset=1, signed=False)])
    assert control.stages.labels is applied  # read again after a reconnect: nothing new


def test_a_topic_policy_may_not_redact_less_than_the_workers_own(tmp_path):
    control = _followers(tmp_path)
    topic = control.settings.worker.policy_topic
    base, weaker = control.stages.labels, _refused(topic, "weaker_policy")
    control.apply_policy_records([control_record(topic, b"policy", LOOSER, signed_at_ms=1)])
    assert control.stages.labels is base and _refused(topic, "weaker_policy") == weaker + 1

    relaxed = _followers(tmp_path, OTELPIPE_CONTROL_TOPIC_POLICY_MAY_RELAX="true")
    relaxed.apply_policy_records([control_record(topic, b"policy", LOOSER, signed_at_ms=1)])
    assert relaxed.stages.labels.policy.redaction.detect == ()


def test_the_floor_is_the_policy_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[redaction]\ndetect = ["email"]\n')
    control = _followers(tmp_path, OTELPIPE_WORKER_LABEL_POLICY=str(path))
    topic = control.settings.worker.policy_topic
    control.apply_policy_records([control_record(topic, b"policy", b'[redaction]\ndetect = ["email", "card"]\n',
                                                 signed_at_ms=1)])
    assert control.stages.labels.policy.redaction.detect == ("email", "card")
    control.apply_policy_records([control_record(topic, b"policy", b'[redaction]\ndetect = ["card"]\n',
                                                 signed_at_ms=2, offset=1)])
    assert control.stages.labels.policy.redaction.detect == ("email", "card")
