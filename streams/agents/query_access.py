"""Who may use a worker's ``/query``, and within what limits (used by the worker and the CLI).

A request is answered only when, in this order:
1. its ``Host`` header names this worker (``allowed_hosts``): a web page whose DNS name was pointed
   at 127.0.0.1 (DNS rebinding) sends its own name and is refused with 421;
2. its peer is on loopback (``is_loopback``), unless ``worker.query_remote``: 403;
3. the store the caller means (header ``X-Otelpipe-Store``, ``store_identity`` of its settings) is
   the one this worker serves: 409, so a CLI never reads another configuration's store;
4. it carries the bearer token (``query_token``): 401.
Every function here is pure over the settings and the request's fields, except ``query_token``,
which reads (or makes) the token file and has its value masked (``streams.masking``) from then on.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import urllib.parse
from typing import Any

from sinks.clickhouse import chdb_path
from streams import masking
from streams.config import ConfigError, Settings, resolve_path

TOKEN_FILE = "query.token"
STORE_HEADER = "X-Otelpipe-Store"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")
DEFAULT_PORTS = {"http": 8123, "https": 8443}


def as_host(address: str) -> str:
    """An address as a Host header names it: lower case, an IPv6 literal in brackets."""
    address = address.strip().lower()
    if ":" in address and not address.startswith("["):
        return f"[{address}]"
    return address


def _has_port(host: str) -> bool:
    return host.rpartition("]")[2].count(":") == 1 if host.startswith("[") else ":" in host


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The Host header values /query answers: localhost, 127.0.0.1, [::1], ``worker.web_host``
    (unless it is the any-address) and ``worker.query_hosts``, each bare or with ``:web_port``
    (an entry of query_hosts that has a port of its own only with it)."""
    w = settings.worker
    names = [*LOOPBACK_NAMES]
    if w.web_host.strip() not in ANY_ADDRESS:
        names.append(as_host(w.web_host))
    allowed = set()
    for name in names:
        allowed |= {name, f"{name}:{w.web_port}"}
    for extra in w.query_hosts:
        extra = extra.lower()
        allowed |= {extra} if _has_port(extra) else {extra, f"{extra}:{w.web_port}"}
    return frozenset(allowed)


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's Host header is one of ``allowed`` (no header: no)."""
    return bool(host) and host.strip().lower() in allowed


def is_loopback(peer: str | None) -> bool:
    """Whether a peer address (``request.remote``) is on loopback: 127.0.0.0/8, ::1, or an
    IPv4-mapped loopback address. Anything unparsable is not."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def access_refusal(host: str | None, peer: str | None, allowed: frozenset[str],
                   remote: bool) -> tuple[int, str] | None:
    """(status, error) when a request may not use /query for who or where it is; None when it may."""
    if not host_allowed(host, allowed):
        shown = (host or "")[:100]
        return 421, (f"/query does not answer to the host {shown!r}: only localhost, 127.0.0.1, [::1], "
                     "worker.web_host and the names in worker.query_hosts (add it there if this worker is "
                     "meant to be reached by that name)")
    if not remote and not is_loopback(peer):
        return 403, (f"/query answers only peers on loopback, not {peer or 'an unknown peer'}: run the CLI on the "
                     "worker's host (or in its container), or set worker.query_remote = true")
    return None


def store_identity(settings: Settings) -> str:
    """Which store a configuration names, as one stable string with no credentials:
    ``chdb:/resolved/path (database otel)`` for the embedded store, ``scheme://host:port/database``
    for a server (never its user or password)."""
    ch = settings.clickhouse
    if ch.dsn.startswith("chdb://"):
        return f"chdb:{chdb_path(ch.dsn)} (database {ch.database})"
    parts = urllib.parse.urlsplit(ch.dsn)
    host = as_host(parts.hostname or "localhost")
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:  # a port that is not a number: name the host alone
        port = 0
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/{ch.database}"


def store_header(identity: str) -> str:
    """``store_identity`` as an HTTP header value (a path may hold any character)."""
    return urllib.parse.quote(identity, safe="/:()[] ")


def store_refusal(claimed: str | None, served: str) -> tuple[int, str] | None:
    """(409, error) when the caller names another store than this worker serves; None when it
    names this one or none."""
    if not claimed:
        return None
    wanted = urllib.parse.unquote(claimed)
    if wanted == served:
        return None
    return 409, f"this worker serves {served}, not {wanted}"


def reachable_host(settings: Settings) -> str:
    """Where a client on this host reaches the worker: ``worker.web_host``, or loopback when it
    binds the any-address (0.0.0.0 → 127.0.0.1, :: → [::1])."""
    host = settings.worker.web_host.strip()
    if host in ANY_ADDRESS:
        return "[::1]" if ":" in host else "127.0.0.1"
    return as_host(host)


def query_token(settings: Settings, create: bool = False) -> str:
    """The /query token: configured, else the one in ``<data_dir>/query.token`` (made with
    ``create``, readable by this user only). Empty when there is none yet. A file that cannot be
    read or made is ``ConfigError`` naming the settings and the path."""
    configured = settings.worker.query_token.get_secret_value()
    if configured:
        return configured
    path = resolve_path(settings.worker.data_dir) / TOKEN_FILE
    where = f"the query token file (worker.query_token unset, worker.data_dir = {settings.worker.data_dir})"
    try:
        token = path.read_text().strip()
        masking.add_secret(token)  # the file may be newer than this process's masking
        return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: {path} is not a token (not UTF-8 text)"]) from None
    if not create:
        return ""
    token = secrets.token_urlsafe(32)
    masking.add_secret(token)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot write {path}: {exc.strerror or exc}"]) from None
    return token


def query_limits(settings: Settings) -> dict[str, Any]:
    w = settings.worker
    return {"max_execution_time": w.query_timeout_s, "max_result_rows": w.query_max_rows,
            "max_result_bytes": w.query_max_bytes, "result_overflow_mode": "throw",
            "max_memory_usage": w.query_max_memory_bytes}
