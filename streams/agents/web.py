"""The worker's web pages: ``/metrics`` (Prometheus) and ``/query`` (read-only SQL for the CLI
while this process holds the embedded chDB path)."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from prometheus_client import generate_latest

from streams.agents import worker_metrics as m
from streams.agents.runtime import Runtime


def add_pages(app: faust.App, rt: Runtime) -> None:
    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # Prometheus text exposition format 0.0.4 (aiohttp takes the charset separately).
        return web.bytes(generate_latest(m.REGISTRY), content_type="text/plain; version=0.0.4")

    @app.page("/query")
    class QueryView(faust.web.View):
        """POST {"sql": "...", "parameters": {...}} → {"columns": [...], "types": [...], "rows": [[...]]}.
        Queries run with ``readonly=1``: nothing sent here can change data."""

        async def post(self, request: Any) -> Any:
            try:
                body = orjson.loads(await request.read())
                sql = body["sql"]
                parameters = body.get("parameters") or {}
            except Exception as exc:
                return self.bytes(orjson.dumps({"error": f"bad request: {exc}"}), status=400,
                                  content_type="application/json")

            def run() -> Any:
                return rt.open_sink().query(sql, parameters, readonly=True)

            try:
                result = await rt.on_clickhouse_thread(run)
            except Exception as exc:
                return self.bytes(orjson.dumps({"error": str(exc)}), status=400, content_type="application/json")
            payload = {
                "columns": list(result.column_names),
                "types": [t.name for t in result.column_types],
                "rows": [list(row) for row in result.result_rows],
            }
            return self.bytes(
                orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS), content_type="application/json"
            )
