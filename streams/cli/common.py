"""Shared by the command modules: settings from --config, the worker's /query client, durations."""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from typing import Any, Sequence

import orjson

from streams.config import Settings, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The configuration, and from then on every log line and uncaught error of this command has its
    secrets masked (secret settings, the token and key files, URL passwords, credentials). Invalid
    settings and a /query token file that cannot be read are both ``ConfigError``: the command
    prints the problem and exits 2."""
    from streams import masking

    settings = load_settings(getattr(args, "config", None) or None)
    masking.install(settings, extra=_secret_files(settings))
    return settings


def _secret_files(settings: Settings) -> list[str]:
    from streams.agents.control_key import default_key_path
    from streams.agents.query_access import query_token
    from streams.config import resolve_path

    found = [query_token(settings)]
    named = [settings.control.key_file, settings.kafka.sasl_password_file]
    for path in [default_key_path(settings)] + [resolve_path(p) for p in named if p]:
        try:
            if path is not None and path.is_file():
                found.append(path.read_text(errors="replace").strip())
        except OSError:
            pass
    return found


def local_broker(settings: Settings) -> Any:
    from streams.tools.local_kafka import LocalBroker

    return LocalBroker.from_settings(settings)


def all_topics(settings: Settings) -> list[str]:
    """Every topic otelpipe reads or writes: sources, routed topics, their dead-letter topics, alerts."""
    topics = settings.source_topics() + settings.routed_topics()
    return topics + [settings.dlq_topic(t) for t in topics] + [settings.slo.alerts_topic]


class QueryFailed(RuntimeError):
    pass


class WrongStore(QueryFailed):
    """The worker answering on the configured port serves another store than the configuration names."""


def worker_address(settings: Settings) -> str:
    from streams.agents.query_access import reachable_host

    return f"{reachable_host(settings)}:{settings.worker.web_port}"


def worker_url(settings: Settings) -> str:
    return f"http://{worker_address(settings)}"


def wrong_store_message(address: str, served: str, wanted: str) -> str:
    return (f"the worker on {address} serves {served}, not {wanted} that this configuration names; "
            "stop it or set worker.web_port")


def query_worker(settings: Settings, sql: str, parameters: dict[str, Any] | None = None,
                 timeout_s: float = 60.0) -> tuple[list[str], list[list[Any]]] | None:
    """Ask a running worker's read-only /query; None when no worker answers. The request names
    the store of ``settings`` (``X-Otelpipe-Store``): a worker serving another one refuses, and
    this raises ``WrongStore`` rather than return that store's rows."""
    from streams.agents.query_access import STORE_HEADER, query_token, store_header, store_identity

    wanted = store_identity(settings)
    body = orjson.dumps({"sql": sql, "parameters": parameters or {}})
    request = urllib.request.Request(worker_url(settings) + "/query", data=body, method="POST",
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {query_token(settings)}",
                                              STORE_HEADER: store_header(wanted)})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = orjson.loads(exc.read())
        except Exception:
            answer = None
        answer = answer if isinstance(answer, dict) else {}
        if exc.code == 409 and isinstance(answer.get("store"), str):
            raise WrongStore(wrong_store_message(worker_address(settings), answer["store"], wanted)) from None
        raise QueryFailed(str(answer.get("error", exc))) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return payload["columns"], payload["rows"]


def run_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None
              ) -> tuple[list[str], list[list[Any]]]:
    """Read-only SQL: through the running worker when there is one, else directly."""
    if settings.clickhouse.dsn.startswith("chdb://"):
        answer = query_worker(settings, sql, parameters)
        if answer is not None:
            return answer
    from sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink.open(settings.clickhouse, settings.worker.app_id)
    try:
        result = sink.query(sql, parameters, readonly=True)
    except Exception as exc:
        raise QueryFailed(str(exc)) from None
    finally:
        sink.close()
    return list(result.column_names), [list(r) for r in result.result_rows]


def parse_params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param takes NAME=VALUE, got {item!r}")
        params[name] = value
    return params


def as_dicts(columns: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row)) for row in rows]


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 15m, 1h or 7d, got {text!r}")
    return int(text[:-1]) * units[text[-1]]


METRIC_TABLES = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


# The signal is named as OTLP names it (traces, logs, metrics) in every command; "spans" is
# accepted as another name of traces, as older releases spelled it.
REPLAY_SIGNALS = {"traces": ["traces"], "spans": ["traces"], "logs": ["logs"], "metrics": ["metrics"],
                  "all": ["traces", "logs", "metrics"]}


def open_sink_or_explain(settings: Settings) -> Any:
    from sinks.clickhouse import ClickHouseSink

    try:
        return ClickHouseSink.open(settings.clickhouse, settings.worker.app_id)
    except Exception as exc:
        if "lock" in str(exc).lower() and settings.clickhouse.dsn.startswith("chdb://"):
            raise SystemExit(
                f"the embedded store {settings.clickhouse.dsn} is held by another process (a running worker?): "
                "stop it first, or point clickhouse.dsn at a ClickHouse server") from None
        raise
