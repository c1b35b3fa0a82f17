"""The worker's web pages: ``/metrics`` (Prometheus, open to every peer), ``/query`` (read-only
SQL for the CLI while this process holds the embedded chDB path) and ``/identity`` (the store this
worker serves).

``/query`` and ``/identity`` answer only a Host header naming this worker and, unless
``worker.query_remote``, peers on loopback; ``/query`` then refuses a caller naming another store
(``X-Otelpipe-Store``, 409) and takes only ``application/json`` bodies with ``Authorization: Bearer
<token>`` (``worker.query_token``, or the token the worker writes to ``<data_dir>/query.token``).
Every query runs read-only within ``worker.query_*`` limits (time, rows, bytes, memory), so a query
can neither change data nor hold the ClickHouse thread that ingestion shares. The checks are the
pure functions of ``streams.agents.query_access``.
"""

from __future__ import annotations

import hmac
from typing import Any

import faust
import orjson
from prometheus_client import generate_latest

from streams.agents import worker_metrics as m
from streams.agents.query_access import (
    STORE_HEADER,
    access_refusal,
    allowed_hosts,
    query_limits,
    query_token,
    store_identity,
    store_refusal,
)
from streams.agents.runtime import Runtime


def _error(status: int, message: str, view: Any, **extra: Any) -> Any:
    return view.bytes(orjson.dumps({"error": message, **extra}), status=status, content_type="application/json")


def peer_address(request: Any) -> str | None:
    """The connection's peer address (the socket's, not a header a client could set)."""
    transport = getattr(request, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return getattr(request, "remote", None)


def add_pages(app: faust.App, rt: Runtime) -> None:
    token = query_token(rt.settings, create=True).encode()
    limits = query_limits(rt.settings)
    hosts = allowed_hosts(rt.settings)
    remote = rt.settings.worker.query_remote
    store = store_identity(rt.settings)

    def refused(request: Any, view: Any) -> Any:
        refusal = access_refusal(request.headers.get("Host"), peer_address(request), hosts, remote)
        return None if refusal is None else _error(*refusal, view)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # Prometheus text exposition format 0.0.4 (aiohttp takes the charset separately).
        return web.bytes(generate_latest(m.REGISTRY), content_type="text/plain; version=0.0.4")

    @app.page("/identity")
    class IdentityView(faust.web.View):
        """GET → {"app_id": ..., "store": "<store_identity>"}: which store this worker serves."""

        async def get(self, request: Any) -> Any:
            refusal = refused(request, self)
            if refusal is not None:
                return refusal
            return self.bytes(orjson.dumps({"app_id": rt.settings.worker.app_id, "store": store}),
                              content_type="application/json")

    @app.page("/query")
    class QueryView(faust.web.View):
        """POST {"sql": "...", "parameters": {...}} → {"columns": [...], "types": [...], "rows": [[...]]}.
        Queries run with ``readonly=1``: nothing sent here can change data."""

        async def post(self, request: Any) -> Any:
            refusal = refused(request, self)
            if refusal is not None:
                return refusal
            # Before the token: a CLI of another configuration (another token) learns which store
            # answers here rather than that its token is wrong.
            wrong_store = store_refusal(request.headers.get(STORE_HEADER), store)
            if wrong_store is not None:
                return _error(*wrong_store, self, store=store)
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
