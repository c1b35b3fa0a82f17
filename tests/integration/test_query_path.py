"""The worker's /query is locked: its own host names, loopback peers, the store the caller names,
a token, JSON only, read-only within limits that keep ingestion going."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from streams.agents.query_access import query_token, store_identity
from streams.tools.producer import produce_workload
from tests.conftest import ROOT, free_port

TOKEN = "t" * 40


def post(worker, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    url = f"http://{worker.settings.worker.web_host}:{worker.settings.worker.web_port}/query"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_query_needs_the_token_json_and_stays_within_its_limits(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_QUERY_TIMEOUT_S="2").start()
    token = query_token(worker.settings)
    assert len(token) >= 32
    token_file = Path(worker.settings.worker.data_dir) / "query.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    body = orjson.dumps({"sql": "SELECT 1"})
    assert post(worker, body, {"content-type": "application/json"})[0] == 401
    assert post(worker, body, {"content-type": "application/json", "authorization": "Bearer wrong"})[0] == 401
    auth = {"authorization": f"Bearer {token}"}
    assert post(worker, body, {**auth, "content-type": "application/x-www-form-urlencoded"})[0] == 415
    assert post(worker, body, {**auth, "content-type": "application/json"}) == (
        200, {"columns": ["1"], "types": ["UInt8"], "rows": [[1]]})

    started = time.monotonic()
    status, answer = post(worker, orjson.dumps({"sql": "SELECT count() FROM system.numbers"}),
                          {**auth, "content-type": "application/json"})
    assert status == 400 and "TIMEOUT_EXCEEDED" in answer["error"]
    assert time.monotonic() - started < 20
    status, answer = post(worker, orjson.dumps({"sql": "SELECT 1 SETTINGS max_execution_time = 100000"}),
                          {**auth, "content-type": "application/json"})
    assert status == 400 and "READONLY" in answer["error"]
    status, answer = post(worker, orjson.dumps({"sql": "SELECT number FROM system.numbers LIMIT 1000000"}),
                          {**auth, "content-type": "application/json"})
    assert status == 400 and "TOO_MANY_ROWS" in answer["error"]

    summary = asyncio.run(produce_workload(worker.settings, messages=20, traces_per_message=2, seed=9))
    worker.wait_for("SELECT count() FROM {db}.otel_traces", summary.spans)  # ingestion went on


def request(address: str, port: int, method: str, path: str, headers: dict[str, str],
            body: bytes | None = None) -> tuple[int, dict | str]:
    """One request to ``address:port`` with exactly these headers (Host included)."""
    connection = http.client.HTTPConnection(address, port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, orjson.loads(data) if is_json else data.decode()
    finally:
        connection.close()


def otelpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def non_loopback_address() -> str:
    """An address of this host that is not on loopback (the route to the outside world's source)."""
    candidates = []
    for target in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((target, 9))  # UDP: picks the route, sends nothing
                candidates.append(sock.getsockname()[0])
            except OSError:
                pass
    try:
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    found = [a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"]
    assert found, "this host has no non-loopback IPv4 address to test remote peers from"
    return found[0]


def test_query_answers_only_the_names_of_this_worker(worker_factory):
    worker = worker_factory(OTELPIPE_WORKER_QUERY_TOKEN=TOKEN, OTELPIPE_WORKER_QUERY_HOSTS="pipe.internal").start()
    port = worker.settings.worker.web_port
    body = orjson.dumps({"sql": "SELECT 1"})
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "pipe.internal", f"pipe.internal:{port}"):
        assert request("127.0.0.1", port, "POST", "/query", {**auth, "Host": host}, body)[0] == 200, host
    # A page on a name rebound to 127.0.0.1 sends its own name: refused, even with the token.
    for host in (f"evil.example:{port}", "evil.example", f"localhost:{port + 1}", f"0.0.0.0:{port}"):
        status, answer = request("127.0.0.1", port, "POST", "/query", {**auth, "Host": host}, body)
        assert status == 421 and "worker.query_hosts" in answer["error"], (host, answer)
    status, answer = request("127.0.0.1", port, "GET", "/identity", {"Host": f"evil.example:{port}"})
    assert status == 421
    # /metrics answers every name (Prometheus scrapes it by whatever name it knows).
    status, text = request("127.0.0.1", port, "GET", "/metrics", {"Host": f"evil.example:{port}"})
    assert status == 200 and "otelpipe_" in text
    assert request("127.0.0.1", port, "GET", "/identity", {"Host": f"localhost:{port}"}) == (
        200, {"app_id": worker.settings.worker.app_id, "store": store_identity(worker.settings)})


def test_query_answers_only_loopback_peers_unless_query_remote(worker_factory):
    address = non_loopback_address()
    worker = worker_factory(OTELPIPE_WORKER_QUERY_TOKEN=TOKEN, OTELPIPE_WORKER_WEB_HOST=address)
    worker.start(ready="metrics")
    port = worker.settings.worker.web_port
    body = orjson.dumps({"sql": "SELECT 1"})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Host": f"{address}:{port}"}
    status, answer = request(address, port, "POST", "/query", headers, body)
    assert status == 403 and "worker.query_remote" in answer["error"] and address in answer["error"], answer
    assert request(address, port, "GET", "/identity", {"Host": f"{address}:{port}"})[0] == 403
    assert request(address, port, "GET", "/metrics", {"Host": f"{address}:{port}"})[0] == 200  # open to all
    # The CLI refuses clearly too: the worker's answer, not "no worker".
    proc = otelpipe(worker.env, "query", "SELECT 1")
    assert proc.returncode == 1 and "worker.query_remote" in proc.stderr, proc.stderr

    worker.stop()
    worker.reconfigure(OTELPIPE_WORKER_QUERY_REMOTE="true").start(ready="metrics")
    assert request(address, port, "POST", "/query", headers, body) == (
        200, {"columns": ["1"], "types": ["UInt8"], "rows": [[1]]})


def test_the_cli_never_queries_another_configurations_store(worker_factory, tmp_path):
    """Two configurations, two chDB paths and data directories, one web port and one token: the
    CLI of the second finds the first one's worker on the port and refuses, naming both stores."""
    first = worker_factory(OTELPIPE_WORKER_QUERY_TOKEN=TOKEN).start()
    summary = asyncio.run(produce_workload(first.settings, messages=5, traces_per_message=2, seed=3))
    first.wait_for("SELECT count() FROM {db}.otel_traces", summary.spans)
    # The session database is the configured one: unqualified names work through the worker.
    proc = otelpipe(first.env, "query", "SELECT count() AS n FROM otel_traces", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == [{"n": summary.spans}]

    second_env = {**first.env, "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'second' / 'chdb'}",
                  "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "second" / "worker")}
    port = first.settings.worker.web_port
    first_store = f"chdb:{(tmp_path / 'chdb').resolve()} (database otel)"
    second_store = f"chdb:{(tmp_path / 'second' / 'chdb').resolve()} (database otel)"
    expected = (f"the worker on 127.0.0.1:{port} serves {first_store}, not {second_store} that this "
                "configuration names; stop it or set worker.web_port")
    proc = otelpipe(second_env, "query", "SELECT count() FROM otel_traces")
    assert proc.returncode == 1 and expected in proc.stderr and str(summary.spans) not in proc.stdout, (
        proc.stdout + proc.stderr)
    # Without a configured token (each configuration its own token file) the answer is the same.
    without_token = {k: v for k, v in second_env.items() if k != "OTELPIPE_WORKER_QUERY_TOKEN"}
    proc = otelpipe(without_token, "query", "SELECT 1")
    assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "second" / "chdb").exists()  # the second store was not opened either

    # The worker refuses by itself too: a caller naming another store gets 409 and the worker's store.
    status, answer = request("127.0.0.1", port, "POST", "/query",
                             {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                              "Host": f"127.0.0.1:{port}", "X-Otelpipe-Store": "chdb:/elsewhere (database otel)"},
                             orjson.dumps({"sql": "SELECT 1"}))
    assert status == 409 and answer["store"] == first_store, answer


def test_unqualified_names_resolve_in_the_configured_database_without_a_worker(tmp_path):
    env = {**os.environ, "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
           "OTELPIPE_CLICKHOUSE_DATABASE": "telemetry", "OTELPIPE_WORKER_WEB_PORT": str(free_port()),
           "OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "worker")}
    assert otelpipe(env, "migrate").returncode == 0
    proc = otelpipe(env, "query", "SELECT currentDatabase() AS db, (SELECT count() FROM otel_traces) AS n",
                    "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == [{"db": "telemetry", "n": 0}]
