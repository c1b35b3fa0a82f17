"""The ClickHouse sink's own settings: the ``[clickhouse]`` section of otelpipe's configuration.

The sink takes this object (or its fields as arguments) and nothing else of the configuration.
The small checks here (each raises ValueError naming the problem) serve the other sections too.
"""

from __future__ import annotations

import re
from pathlib import Path

import re2
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

# RE2 (linear time): masked texts may quote what producers sent, and a backtracking engine retries
# the scheme at every letter of a long word (quadratic: a log line of a 1 MB value took minutes).
_URL_PASSWORD = re2.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
_SURROGATE = re.compile("[\ud800-\udfff]")  # RE2 reads UTF-8, which cannot hold a lone surrogate
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def mask_secrets(text: str) -> str:
    """``scheme://user:password@host`` → ``scheme://user:****@host`` anywhere in ``text`` (a lone
    surrogate, which no UTF-8 output holds, becomes U+FFFD)."""
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return _URL_PASSWORD.sub(r"\g<head>****@", text)


def setting(default: Any, doc: str, unit: str = "") -> Any:
    """A documented field: ``doc`` is its meaning, ``unit`` its unit (shown by ``otelpipe config``)."""
    return Field(default=default, description=doc, json_schema_extra={"unit": unit} if unit else None)


def _dsn(value: str) -> str:
    if not value.startswith(("chdb://", "http://", "https://")):
        raise ValueError(f"must start with chdb://, http:// or https://, got {mask_secrets(value)!r}")
    return value


def identifier(value: str) -> str:
    if value and not _IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain identifier")
    return value


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return value


def non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return value


Positive = Annotated[int, AfterValidator(positive)]
PositiveFloat = Annotated[float, AfterValidator(positive)]


class ClickHouseSettings(BaseModel):
    """Where rows go and how the schema is rendered (section ``[clickhouse]`` of the configuration)."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True, validate_default=True)

    dsn: Annotated[str, AfterValidator(_dsn)] = setting(
        "chdb://.otelpipe/chdb",
        "Where rows go. chdb:///PATH embeds ClickHouse in the worker (relative PATH is taken from "
        "the current directory); http(s)://user:pass@host:8123/db reaches a server.")
    password: SecretStr = setting(
        "", "Server only: the password, when the DSN carries none (OTELPIPE_CLICKHOUSE_PASSWORD keeps it out of "
            "files). Never printed; a password inside the DSN is masked wherever the DSN is shown.")
    database: Annotated[str, AfterValidator(identifier), AfterValidator(not_blank)] = setting(
        "otel", "Database holding the otel_* tables.")
    cluster: Annotated[str, AfterValidator(identifier)] = setting(
        "", "Server only: render DDL ON CLUSTER this cluster with Replicated engines.")
    ttl_days: Annotated[int, AfterValidator(non_negative)] = setting(
        0, "Server only: drop parts older than this many days (0 keeps data forever).", "days")
    sharded: bool = setting(
        False, "Server only, with cluster: each table is created on every shard as <table>_local (Replicated) and "
               "<table> becomes a Distributed table over them that queries read and the writer inserts into "
               "(synchronously, sharded by a key of the rows, so a retried insert reaches the same shard).")
    dedup_window: Positive = setting(
        10000, "How many recent insert blocks of each table remember their deduplication token "
               "(non_replicated_deduplication_window, or replicated_deduplication_window on a cluster). It must "
               "cover every insert made into a table between a batch's first attempt and its last retry: about "
               "(writers x batches per second) x the retry horizon (session timeout + restart and state restore). "
               "Changing it reaches existing tables at the next migrate.", "blocks")
    dedup_window_seconds: Positive = setting(
        604800, "Cluster only: replicated_deduplication_window_seconds, how long Keeper keeps a block's token. A retry "
                "later than this after its first attempt (a ClickHouse outage longer than this) could store rows twice.",
        "s")
    insert_timeout_s: PositiveFloat = setting(60.0, "Timeout of one insert.", "s")
    unknown_error_retries: Positive = setting(
        5, "How often an insert failing with an error otelpipe does not know is tried before it is taken for "
           "bad data: the batch is then cut in halves until the refused messages are found and dead-lettered. "
           "Known transient errors (server away, busy, too many parts) are retried forever.", "attempts")

    ca_file: str = setting(
        "", "Server only (https://): PEM file of the CAs that sign the server's certificate; empty: the "
            "system's CAs.")
    client_cert_file: str = setting("", "Server only (https://): PEM client certificate, for mutual TLS.")
    client_key_file: str = setting("", "Server only (https://): PEM private key of client_cert_file.")
    verify: bool = setting(
        True, "Server only (https://): whether the server's certificate is verified (turn off only for testing).")

    @model_validator(mode="after")
    def _related(self) -> ClickHouseSettings:
        tls = (self.ca_file, self.client_cert_file, self.client_key_file)
        if any(tls) or not self.verify:
            if not self.dsn.startswith("https://"):
                raise ValueError("ca_file, client_cert_file, client_key_file and verify apply to an https:// DSN")
            if bool(self.client_cert_file) != bool(self.client_key_file):
                raise ValueError("client_cert_file, client_key_file: set both (a client certificate and its key)")
            missing = [f"{name} {value}" for name, value in zip(("ca_file", "client_cert_file", "client_key_file"), tls)
                       if value and not Path(value).expanduser().is_file()]
            if missing:
                raise ValueError("no such file: " + ", ".join(missing))
        if self.sharded and not self.cluster:
            raise ValueError("sharded needs cluster: the Distributed tables span the cluster's shards")
        if self.dsn.startswith("chdb://") and (self.cluster or self.ttl_days):
            raise ValueError("cluster and ttl_days apply to a ClickHouse server, not the embedded chdb:// store")
        if self.dsn.startswith("chdb://") and self.password.get_secret_value():
            raise ValueError("password applies to a ClickHouse server, not the embedded chdb:// store")
        return self
