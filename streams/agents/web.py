"""The worker's web pages: ``/metrics`` (Prometheus) and ``/query`` (read-only SQL for the CLI
while this process holds the embedded chDB path).

``/query`` is locked: it takes only ``application/json`` bodies with ``Authorization: Bearer
<token>`` (``worker.query_token``, or the token the worker writes to ``<data_dir>/query.token``),
and every query runs read-only within ``worker.query_*`` limits (time, rows, bytes, memory), so a
query can neither change data nor hold the ClickHouse thread that ingestion shares.
"""

from __future__ import annotations

import hmac
from typing import Any

import faust
import orjson
from prometheus_client import generate_latest

from streams.agents import worker_metrics as m
from streams.agents.query_access import query_limits, query_token
from streams.agents.runtime import Runtime


def _error(status: int, message: str, view: Any) -> Any:
    return view.bytes(orjson.dumps({"error": message}), status=status, content_type="application/json")


def add_pages(app: faust.App, rt: Runtime) -> None:
    token = query_token(rt.settings, create=True).encode()
    limits = query_limits(rt.settings)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # Prometheus text exposition format 0.0.4 (aiohttp takes the charset separately).
        return web.bytes(generate_latest(m.REGISTRY), content_type="text/plain; version=0.0.4")

    @app.page("/query")
    class QueryView(faust.web.View):
        """POST {"sql": "...", "parameters": {...}} → {"columns": [...], "types": [...], "rows": [[...]]}.
        Queries run with ``readonly=1``: nothing sent here can change data."""

        async def post(self, request: Any) -> Any:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].strip().encode(), token):
                return _error(401, "a bearer token is required (worker.query_token, or <data_dir>/query.token)",
                              self)
            if request.content_type != "application/json":  # no form posts from a browser
                return _error(415, "the body must be application/json", self)
            try:
                body = orjson.loads(await request.read())
                sql = body["sql"]
                parameters = body.get("parameters") or {}
                if not isinstance(sql, str) or not isinstance(parameters, dict):
                    raise TypeError("sql must be a string and parameters an object")
            except Exception as exc:
                return _error(400, f"bad request: {type(exc).__name__}", self)

            def run() -> Any:
                return rt.open_sink().query(sql, parameters, readonly=True, limits=limits)

            try:
                result = await rt.on_clickhouse_thread(run)
            except Exception as exc:
                return _error(400, str(exc), self)
            payload = {
                "columns": list(result.column_names),
                "types": [t.name for t in result.column_types],
                "rows": [list(row) for row in result.result_rows],
            }
            return self.bytes(
                orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS), content_type="application/json"
            )
