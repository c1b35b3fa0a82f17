"""What the CLI reads back from a control topic: only what the workers would apply."""

from streams.cli.control import newest_signed, verified_latest
from tests.standins import CONTROL_KEY, control_record

TOPIC = "otelpipe.sampling"


def test_the_listing_shows_only_verified_records_and_counts_the_others():
    records = [
        control_record(TOPIC, b"*", b"0.5", signed_at_ms=10, offset=0),
        control_record(TOPIC, b"*", b"0.001", offset=1, signed=False),  # not applied by any worker
        control_record(TOPIC, b"cart", b"0.2", signed_at_ms=10, offset=2),
        control_record(TOPIC, b"cart", None, signed_at_ms=20, offset=3),
        control_record(TOPIC, b"cart", b"0.2", signed_at_ms=10, offset=4),  # replayed: stale
        control_record(TOPIC, b"web", b"0.3", signed_at_ms=10, offset=5, key=b"not-the-fleet-key-0123456789"),
    ]
    latest, refused = verified_latest(CONTROL_KEY, TOPIC, records)
    assert latest == {"*": b"0.5", "cart": None}
    assert refused == {"unsigned": 1, "stale": 1, "bad_signature": 1}


def test_a_new_record_is_signed_after_the_newest_verified_one_of_its_key():
    records = [control_record(TOPIC, b"*", b"0.5", signed_at_ms=10, offset=0),
               control_record(TOPIC, b"*", b"0.1", signed_at_ms=30, offset=1),
               control_record(TOPIC, b"*", b"0.1", offset=2, signed=False),
               control_record(TOPIC, b"cart", b"0.1", signed_at_ms=5, offset=3)]
    assert newest_signed(CONTROL_KEY, TOPIC, records) == {b"*": 30, b"cart": 5}
    assert newest_signed(CONTROL_KEY, "otelpipe.catalog", records) == {}


def test_a_push_warns_when_workers_configured_alike_would_refuse_it(tmp_path, capsys):
    from dataclasses import replace

    from streams.cli.control import _warn_if_weaker
    from streams.config import load_settings
    from streams.stages.label_policy import LabelPolicy

    looser = LabelPolicy(redaction=replace(LabelPolicy().redaction, detect=()))
    _warn_if_weaker(load_settings(env={}), LabelPolicy())
    assert capsys.readouterr().err == ""
    _warn_if_weaker(load_settings(env={}), looser)
    assert "weaker_policy" in capsys.readouterr().err
    _warn_if_weaker(load_settings(env={"OTELPIPE_CONTROL_TOPIC_POLICY_MAY_RELAX": "1"}), looser)
    assert capsys.readouterr().err == ""
    broken = tmp_path / "broken.toml"
    broken.write_text("[redaction]\nmode = 3\n")
    _warn_if_weaker(load_settings(env={"OTELPIPE_WORKER_LABEL_POLICY": str(broken)}), looser)
    assert "is invalid here" in capsys.readouterr().err
