"""Who may use a worker's ``/query``, and within what limits (used by the worker and the CLI)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from streams.config import Settings, resolve_path

TOKEN_FILE = "query.token"


def query_token(settings: Settings, create: bool = False) -> str:
    """The /query token: configured, else the one in ``<data_dir>/query.token`` (made with
    ``create``, readable by this user only). Empty when there is none yet."""
    configured = settings.worker.query_token.get_secret_value()
    if configured:
        return configured
    path = resolve_path(settings.worker.data_dir) / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def query_limits(settings: Settings) -> dict[str, Any]:
    w = settings.worker
    return {"max_execution_time": w.query_timeout_s, "max_result_rows": w.query_max_rows,
            "max_result_bytes": w.query_max_bytes, "result_overflow_mode": "throw",
            "max_memory_usage": w.query_max_memory_bytes}
