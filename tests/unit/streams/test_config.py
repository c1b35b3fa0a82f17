import os

import pytest

from streams.config import ConfigError, describe, load_settings


def test_defaults_are_valid():
    s = load_settings(env={})
    assert s.kafka.partitions == 6
    assert s.clickhouse.dsn.startswith("chdb://")
    assert s.dlq_topic("otlp_spans") == "otlp_spans.dlq"


def test_file_then_environment(tmp_path):
    path = tmp_path / "otelpipe.toml"
    path.write_text('[kafka]\npartitions = 3\nspans_topic = "raw_spans"\n[worker]\nbatch_max_messages = 50\n')
    s = load_settings(path, env={"OTELPIPE_KAFKA_PARTITIONS": "12", "OTELPIPE_WORKER_BATCH_WITHIN_S": "0.25"})
    assert s.kafka.partitions == 12  # the environment wins over the file
    assert s.kafka.spans_topic == "raw_spans"
    assert s.worker.batch_max_messages == 50
    assert s.worker.batch_within_s == 0.25


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[kafka]\npartitions = 0\nspans_encoding = "avro"\nlogs_topic = "otlp_spans"\n'
        '[clickhouse]\ndsn = "mysql://x"\ndatabase = "bad-name"\nttl_days = "soon"\n'
        '[worker]\nbatch_max_messages = -1\nweb_port = 70000\nsurprise = 1\n[extra]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    problems = "\n".join(err.value.problems)
    for expected in [
        "kafka.partitions: must be > 0",
        "kafka.spans_encoding: must be one of otlp_proto, otlp_json",
        "spans_topic, logs_topic and metrics_topic must be distinct",
        "clickhouse.dsn: must start with chdb://",
        "clickhouse.database: 'bad-name' is not a plain identifier",
        "clickhouse.ttl_days: expected int, got 'soon'",
        "worker.batch_max_messages: must be > 0",
        "worker.web_port: must be a TCP port",
        "worker.surprise: unknown setting",
        "extra: unknown section",
    ]:
        assert expected in problems, f"missing {expected!r} in:\n{problems}"


def test_server_only_options_are_refused_for_chdb():
    with pytest.raises(ConfigError, match="cluster and ttl_days apply to a ClickHouse server"):
        load_settings(env={"OTELPIPE_CLICKHOUSE_CLUSTER": "main"})
    s = load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "http://u:p@ch:8123/otel", "OTELPIPE_CLICKHOUSE_TTL_DAYS": "7"})
    assert s.clickhouse.ttl_days == 7


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_every_setting_is_documented():
    rows = describe(load_settings(env={}))
    assert rows and all(meaning for _, _, _, meaning in rows)


def test_secrets_are_never_printed():
    s = load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "https://otel:s3cret@ch:8443/otel",
                           "OTELPIPE_CLICKHOUSE_PASSWORD": "hunter2"})
    assert s.clickhouse.password.get_secret_value() == "hunter2"
    shown = "\n".join(" ".join(row) for row in describe(s)) + repr(s) + str(s)
    assert "hunter2" not in shown and "s3cret" in s.clickhouse.dsn
    assert "s3cret" not in "\n".join(" ".join(row) for row in describe(s))
    with pytest.raises(ConfigError) as err:
        load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "htps://otel:s3cret@ch:8443/otel"})
    assert "s3cret" not in str(err.value) and "otel:****@ch" in str(err.value)


def test_the_control_key_is_a_secret_checked_with_its_setting_named():
    s = load_settings(env={"OTELPIPE_CONTROL_KEY": "a-shared-control-key-0123456789"})
    assert s.control.key.get_secret_value() == "a-shared-control-key-0123456789"
    assert "a-shared-control-key" not in "\n".join(" ".join(row) for row in describe(s)) + repr(s)
    assert load_settings(env={"OTELPIPE_CONTROL_KEY_FILE": "/etc/otelpipe/control.key"}).control.key_file
    with pytest.raises(ConfigError) as err:
        load_settings(env={"OTELPIPE_CONTROL_KEY": "short", "OTELPIPE_CONTROL_KEY_FILE": "/k"})
    assert "control.key: must be at least 16 characters" in err.value.problems
    assert "control.key: set key or key_file, not both" in err.value.problems
    assert "short" not in str(err.value)


def test_schema_of_the_file_lists_every_section():
    from streams.config import config_json_schema

    schema = config_json_schema()
    assert set(schema["properties"]) == {"kafka", "clickhouse", "worker", "slo", "sampling", "control"}
    assert schema["$defs"]["WorkerSettings"]["additionalProperties"] is False


def test_one_setting_sizes_producers_and_topics():
    s = load_settings(env={"OTELPIPE_WORKER_MAX_MESSAGE_BYTES": str(32 * 1024 * 1024)})
    assert s.record_max_bytes() > 32 * 1024 * 1024 and s.letter_max_bytes() >= 32 * 1024 * 1024
    assert s.topic_configs() == {"max.message.bytes": str(s.record_max_bytes())}
    compact = s.topic_configs(**{"cleanup.policy": "compact", "max.message.bytes": "100"})
    assert compact == {"max.message.bytes": str(s.record_max_bytes()), "cleanup.policy": "compact"}
    small = load_settings(env={"OTELPIPE_WORKER_MAX_MESSAGE_BYTES": "4000"})
    assert small.record_max_bytes() == 1048588  # never below Kafka's default: big messages still arrive


def test_the_worker_producer_carries_the_largest_record():
    from streams.agents.app import create_app

    s = load_settings(env={"OTELPIPE_WORKER_MAX_MESSAGE_BYTES": str(20 * 1024 * 1024)})
    assert create_app(s).conf.producer_max_request_size == s.record_max_bytes()


MARKER = "zz-planted-4711"
PLANTED = {  # TOML values, each with the marker: a wrong type or shape, or a value a field may refuse
    "array": f'["{MARKER}"]',
    "table": f'{{ x = "{MARKER}" }}',
    "nested": f'[["{MARKER}"], {{ y = "{MARKER}" }}]',
    "boolean in an array": f'[true, "{MARKER}"]',
    "integer": "4711471147",
    "short": '"zz4711x"',
    "url": f'"u:{MARKER}@h:8123/db"',
    "path": f'"/nowhere/{MARKER}.pem"',
}
WRONG_TYPES = ("array", "table", "nested", "boolean in an array")


def _secret_fields():
    from pydantic import SecretStr

    from streams.config import SECTIONS

    for section, cls in SECTIONS.items():
        for name, info in cls.model_fields.items():
            if info.annotation is SecretStr or set(name.split("_")) & {"password", "token", "key"} or name == "dsn":
                yield section, name


SECRET_FIELDS = list(_secret_fields())


def test_the_secret_fields_are_the_ones_expected():
    assert {"kafka.sasl_password", "kafka.ssl_key_password", "clickhouse.dsn", "clickhouse.password",
            "worker.query_token", "control.key", "control.key_file"} <= {f"{s}.{n}" for s, n in SECRET_FIELDS}


@pytest.mark.parametrize("section, name", SECRET_FIELDS, ids=[f"{s}.{n}" for s, n in SECRET_FIELDS])
@pytest.mark.parametrize("shape", list(PLANTED))
def test_a_problem_of_a_secret_setting_never_shows_its_value(tmp_path, monkeypatch, capsys, section, name, shape):
    path = tmp_path / "otelpipe.toml"
    path.write_text(f"[{section}]\n{name} = {PLANTED[shape]}\n")
    try:
        load_settings(path, env={})
    except ConfigError as err:
        problems = err.problems
    else:
        assert shape not in WRONG_TYPES, "a wrong type was taken"
        return  # a value the field takes: `otelpipe config` shows settings, not problems
    shown = "\n".join(problems)
    assert MARKER not in shown and "4711471147" not in shown and "zz4711x" not in shown, shown
    assert all(p.startswith(f"{section}") for p in problems), shown
    if shape in WRONG_TYPES:
        assert f"{section}.{name}: expected str, got " in shown
    for variable in [v for v in os.environ if v.upper().startswith("OTELPIPE_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("OTELPIPE_WORKER_DATA_DIR", str(tmp_path))
    from streams.cli import main

    assert main(["--config", str(path), "config"]) == 2
    printed = capsys.readouterr()
    assert MARKER not in printed.out + printed.err and "zz4711x" not in printed.out + printed.err
    assert "4711471147" not in printed.out + printed.err
