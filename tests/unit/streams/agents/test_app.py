"""The worker app is built from a settings object; importing any module has no side effects."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import streams
import sinks
from streams.agents.app import build_worker, create_app
from streams.config import load_settings

ROOT = Path(__file__).resolve().parents[4]

IMPORT_EVERYTHING = """
import socket, sys, pkgutil, importlib
def refuse(*args, **kwargs):
    raise AssertionError("a connection was opened at import")
socket.socket.connect = refuse
socket.create_connection = refuse
import streams, sinks
names = []
for pkg in (streams, sinks):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names))
"""


def test_importing_any_module_reads_no_settings_and_opens_no_connection(tmp_path):
    bad = tmp_path / "would-fail.toml"
    bad.write_text("this is [not toml")  # reading it would raise ConfigError
    env = {"PATH": "/usr/bin:/bin", "OTELPIPE_CONFIG": str(bad), "OTELPIPE_KAFKA_PARTITIONS": "not a number"}
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = sum(1 for pkg in (streams, sinks) for _ in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."))
    assert int(result.stdout.strip()) >= modules - 2  # every module but the __main__ entry points


def test_two_apps_with_different_settings_in_one_process():
    one = build_worker(load_settings(env={"OTELPIPE_WORKER_APP_ID": "one"}))
    two = build_worker(load_settings(env={"OTELPIPE_WORKER_APP_ID": "two", "OTELPIPE_SAMPLING_TAIL": "true",
                                          "OTELPIPE_KAFKA_SPANS_TOPIC": "other_spans"}))
    plain, tail = one.app, two.app
    assert plain.conf.id == "one" and tail.conf.id == "two"
    assert "otelpipe.tail" in tail.agents and "otelpipe.tail" not in plain.agents
    topics = {a.name: a.channel.get_topic_name() for a in tail.agents.values()}
    assert topics["otelpipe.spans"] == "other_spans"
    assert {a.channel.get_topic_name() for a in plain.agents.values()} >= {"otlp_spans", "otlp_logs", "otlp_metrics"}
    # each app has its own stages: a policy applied to one does not reach the other
    assert one.runtime.stages is not two.runtime.stages
    assert isinstance(create_app(load_settings(env={})), type(plain))


def test_the_sink_takes_its_own_settings_not_the_whole_configuration():
    for path in (ROOT / "sinks").glob("*.py"):
        assert "streams.config" not in path.read_text(), f"{path.name} imports the whole configuration"


def test_every_file_has_a_json_schema_on_the_command_line():
    import json

    for args in (["config", "--schema"], ["policy", "schema"], ["sampling", "schema"]):
        result = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "properties" in json.loads(result.stdout) or "$defs" in json.loads(result.stdout)
