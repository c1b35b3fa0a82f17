"""The worker's /query is locked: a token, JSON only, read-only within limits that keep ingestion going."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from streams.agents.query_access import query_token
from streams.tools.producer import produce_workload


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
