"""One typed, validated configuration for every otelpipe process (pydantic-settings).

Sources, later ones winning:
1. the defaults below,
2. a TOML file (``--config FILE`` or ``OTELPIPE_CONFIG``), sections named after the models
   (``[kafka]``, ``[clickhouse]``, ``[worker]``, ``[slo]``, ``[sampling]``, ``[control]``),
3. environment variables ``OTELPIPE_<SECTION>_<FIELD>`` (``OTELPIPE_CLICKHOUSE_DSN=...``).

``load_settings`` validates everything at once and raises ``ConfigError`` listing every problem
with its path (``worker.batch_max_messages: must be > 0``), never just the first; checks that
relate two settings of a section run once each setting of it is valid on its own.
``config_json_schema()`` is the JSON Schema of the file (``otelpipe config --schema``).
Every field's description is its documentation (``otelpipe config`` prints them with the unit).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Sequence

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from sinks.settings import (
    ClickHouseSettings,
    Positive,
    PositiveFloat,
    mask_secrets,
    non_negative,
    not_blank,
    setting,
)

ENCODINGS = ("otlp_proto", "otlp_json")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Room above worker.max_message_bytes in every record otelpipe produces: dead-letter headers (the
# detail is cut at 2000 bytes) or the Avro envelope of a routed part.
RECORD_OVERHEAD_BYTES = 64 * 1024
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588  # the broker's message.max.bytes default


class ProblemsError(ValueError):
    """Every problem found in a file (configuration, policy, catalog), one per line, each with its path."""

    what = "input"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid {self.what}:\n  " + "\n  ".join(problems))


class ConfigError(ProblemsError):
    what = "configuration"


def read_toml(path: str | os.PathLike[str], what: str, error: type[ProblemsError]) -> dict[str, Any]:
    """A TOML file's content; a missing or unparsable file is ``error`` naming the ``what`` file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error([f"{what} file {path}: not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise error([f"{what} file {path}: {exc}"]) from None


# ------------------------------------------------------------------ reusable checks (message = the problem)

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"must be a TCP port, got {value!r}")
    return value


def _topic(value: str) -> str:
    if not _TOPIC.match(value):
        raise ValueError(f"{value!r} is not a valid Kafka topic name")
    return value


def _one_of(*choices: str) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return AfterValidator(check)


def _fraction(value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value!r}")
    return value


def _latency_bucket(value: int) -> int:
    if value not in LATENCY_BUCKETS_MS:
        raise ValueError(f"must be one of {', '.join(map(str, LATENCY_BUCKETS_MS))}, got {value!r}")
    return value


def _rate(value: float) -> float:
    if not 2**-56 <= value <= 1:
        raise ValueError(f"must be in [2^-56, 1], got {value!r}")
    return value


def _service_rates(value: str) -> str:
    bad = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, eq, rate = item.rpartition("=")
        try:
            ok = bool(eq and name.strip()) and 2**-56 <= float(rate) <= 1
        except ValueError:
            ok = False
        if not ok:
            bad.append(repr(item))
    if bad:
        raise ValueError(f"{', '.join(bad)} is not SERVICE=RATE with a rate in (0, 1]")
    return value


_HOST = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def _host_name(value: str) -> str:
    if not _HOST.match(value):
        raise ValueError(f"{value!r} is not a host name: a name or IPv4 address, or an IPv6 address in brackets, "
                         "optionally with :port (no scheme, no path)")
    return value


def _comma_separated(value: Any) -> Any:
    """A list setting given as one string (an environment variable): ``a,b`` or a JSON list."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON list ({exc}): {value!r}") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Port = Annotated[int, AfterValidator(_port)]
HostList = Annotated[tuple[Annotated[str, AfterValidator(_host_name)], ...], NoDecode,
                     BeforeValidator(_comma_separated)]
Topic = Annotated[str, AfterValidator(_topic)]
Encoding = Annotated[str, _one_of(*ENCODINGS)]
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True, validate_default=True)


# ------------------------------------------------------------------ sections


class KafkaSettings(Section):
    bootstrap_servers: Annotated[str, AfterValidator(not_blank)] = setting(
        "127.0.0.1:9092", "Kafka bootstrap servers, comma separated.")
    partitions: Positive = setting(6, "Partitions for topics otelpipe creates (source topics and dead-letter topics).")
    spans_topic: Topic = setting("otlp_spans", "Topic holding OTLP trace requests.")
    logs_topic: Topic = setting("otlp_logs", "Topic holding OTLP log requests.")
    metrics_topic: Topic = setting("otlp_metrics", "Topic holding OTLP metric requests.")
    spans_encoding: Encoding = setting(
        "otlp_proto", "Encoding of the spans topic when a message has no content-type header: otlp_proto or otlp_json.")
    logs_encoding: Encoding = setting("otlp_proto", "Encoding of the logs topic (see spans_encoding).")
    metrics_encoding: Encoding = setting("otlp_proto", "Encoding of the metrics topic (see spans_encoding).")
    dlq_suffix: str = setting(".dlq", "Suffix of a source topic's dead-letter topic: otlp_spans.dlq.")
    routed_suffix: str = setting(
        ".routed", "Suffix of the internal topic a source's records are routed through by key "
                   "(metrics by metric name): otelpipe.otlp_metrics.routed.")
    # Security: every client otelpipe makes (worker, routers, followers, CLI, replay, dlq, produce,
    # exporters, topic admin) takes these (streams/tools/kafka_clients.py).
    security_protocol: Annotated[str, _one_of(*SECURITY_PROTOCOLS)] = setting(
        "PLAINTEXT", "How clients reach the brokers: PLAINTEXT, SSL (TLS; mTLS with ssl_cert_file), "
                     "SASL_PLAINTEXT or SASL_SSL (SASL over TLS: what managed Kafka services want).")
    sasl_mechanism: Annotated[str, _one_of(*SASL_MECHANISMS)] = setting(
        "SCRAM-SHA-512", "SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str = setting("", "SASL user name (SASL_* protocols).")
    sasl_password: SecretStr = setting(
        "", "SASL password (OTELPIPE_KAFKA_SASL_PASSWORD); never printed. Or sasl_password_file.")
    sasl_password_file: str = setting("", "File holding the SASL password (surrounding whitespace ignored).")
    ssl_ca_file: str = setting(
        "", "PEM file of the CAs that sign the brokers' certificates (SSL, SASL_SSL); empty: the system's CAs.")
    ssl_cert_file: str = setting("", "PEM client certificate (chain), for brokers that want mutual TLS.")
    ssl_key_file: str = setting("", "PEM private key of ssl_cert_file.")
    ssl_key_password: SecretStr = setting("", "Password of an encrypted ssl_key_file; never printed.")
    ssl_check_hostname: bool = setting(
        True, "Whether a broker's certificate must name the host it is reached at (turn off only for testing).")
    # Local broker (otelpipe kafka up); ignored when bootstrap_servers points elsewhere.
    local_data_dir: str = setting(".otelpipe/kafka", "Data and log directory of the local broker.")
    local_controller_port: Port = setting(9093, "Controller listener port of the local KRaft broker.")
    local_secure_port: Port = setting(9094, "SASL_SSL listener port of the local broker (kafka up --secure).")
    local_mtls_port: Port = setting(9095, "Mutual-TLS (SSL) listener port of the local broker (kafka up --secure).")
    local_heap: str = setting("512m", "JVM heap of the local broker (-Xmx/-Xms).")
    jar_cache: str = setting("~/.cache/otelpipe/kafka-3.9.2",
                             "Where the broker's jars resolved from Maven Central are cached (outside the repo).")

    @model_validator(mode="after")
    def _related(self) -> KafkaSettings:
        problems = []
        topics = [self.spans_topic, self.logs_topic, self.metrics_topic]
        if len(set(topics)) != len(topics):
            problems.append("spans_topic, logs_topic and metrics_topic must be distinct")
        if not self.dlq_suffix:
            problems.append("dlq_suffix: must not be empty (dead letters would loop into the source topic)")
        if not self.routed_suffix or self.routed_suffix == self.dlq_suffix:
            problems.append("routed_suffix: must not be empty nor equal to dlq_suffix")
        if not re.match(r"^\d+[mMgG]$", self.local_heap):
            problems.append(f"local_heap: must look like 512m or 1g, got {self.local_heap!r}")
        problems.extend(self._security_problems())
        return _raise_related(self, problems)

    def _security_problems(self) -> list[str]:
        problems = []
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        password = self.sasl_password.get_secret_value()
        if sasl:
            if not self.sasl_username:
                problems.append(f"sasl_username: required with security_protocol = {self.security_protocol}")
            if not password and not self.sasl_password_file:
                problems.append(f"sasl_password: required (or sasl_password_file) with security_protocol = "
                                f"{self.security_protocol}")
        elif self.sasl_username or password or self.sasl_password_file:
            problems.append(f"sasl_username, sasl_password: apply to SASL_PLAINTEXT or SASL_SSL, not "
                            f"{self.security_protocol}")
        if password and self.sasl_password_file:
            problems.append("sasl_password: set sasl_password or sasl_password_file, not both")
        names = ("ssl_ca_file", "ssl_cert_file", "ssl_key_file")
        if not tls and any(getattr(self, n) for n in names):
            problems.append(f"ssl_ca_file, ssl_cert_file, ssl_key_file: apply to SSL or SASL_SSL, not "
                            f"{self.security_protocol}")
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            problems.append("ssl_cert_file, ssl_key_file: set both (a client certificate and its key) or neither")
        for name in (*names, "sasl_password_file"):
            value = getattr(self, name)
            if value and not resolve_path(value).is_file():
                problems.append(f"{name}: no file {value}")
        return problems

    def encoding_for(self, topic: str) -> str:
        return {
            self.spans_topic: self.spans_encoding,
            self.logs_topic: self.logs_encoding,
            self.metrics_topic: self.metrics_encoding,
        }.get(topic, "otlp_proto")


class WorkerSettings(Section):
    app_id: Annotated[str, AfterValidator(not_blank)] = setting(
        "otelpipe", "Faust app id: the consumer group and the prefix of internal topics.")
    batch_max_messages: Positive = setting(200, "Most Kafka messages decoded and inserted as one batch.", "messages")
    batch_within_s: PositiveFloat = setting(1.0, "Longest wait for a batch to fill before it is written anyway.", "s")
    max_clock_skew_s: Positive = setting(
        600, "How far a record's own time may be from its Kafka message's time before windows (series budgets, "
             "top_k rules) take the bound instead; late and future records are counted, and stored as they are.",
        "s")
    max_message_bytes: Positive = setting(
        16 * 1024 * 1024, "Messages larger than this go to the dead-letter topic unread.", "bytes")
    label_policy: str = setting(
        "default", "Label policy (redaction, templating, cardinality rules, allowed metric names): a TOML file, "
                   "'default' for the built-in defaults (secrets redacted, span names templated), or 'off'.")
    native_spans: bool = setting(
        True, "Decode spans and run their stages in the native columnar core (streams.otlp.native) where it is "
              "built: same rows, no Python object per value. Off, or where it is not built: the Python decoder.")
    native_logs: bool = setting(
        True, "Decode log records and run their stages in the native columnar core where it is built: same rows, "
              "no Python object per value. Off, or where it is not built: the Python decoder.")
    catalog_file: str = setting(
        "", "Service catalog TOML ([[services]] name, team, tier, owner, SLO targets); empty: none.")
    catalog_topic: Topic = setting(
        "otelpipe.catalog", "Compacted topic of catalog entries (key: service name), followed live by every worker "
                            "(`otelpipe catalog push FILE`).")
    policy_topic: Topic = setting(
        "otelpipe.policy", "Compacted topic of label policies (TOML text): the newest record is applied by every "
                           "running worker within seconds (`otelpipe policy push FILE`).")
    web_port: Port = setting(6066, "Port of the worker's HTTP server: /metrics and the read-only /query.")
    web_host: str = setting("127.0.0.1", "Address the worker's HTTP server binds.")
    query_hosts: HostList = setting(
        (), "Host names /query answers to besides localhost, 127.0.0.1, [::1] and web_host (each also with "
            ":web_port): a request naming another host in its Host header is refused, so a web page cannot "
            "reach /query through a DNS name pointed at this machine. A TOML list; in "
            "OTELPIPE_WORKER_QUERY_HOSTS, comma separated.")
    query_remote: bool = setting(
        False, "Whether /query answers peers that are not on loopback (127.0.0.0/8, ::1). Off: only "
               "processes on this host (or in this container) can query; /metrics answers everyone.")
    query_token: SecretStr = setting(
        "", "Bearer token /query requires (OTELPIPE_WORKER_QUERY_TOKEN). Empty: the worker makes one at start, "
            "in <data_dir>/query.token (mode 0600), which the CLI of the same configuration reads.")
    query_timeout_s: PositiveFloat = setting(
        10.0, "Longest a /query may run (max_execution_time); it shares the ClickHouse thread with ingestion.", "s")
    query_max_rows: Positive = setting(100_000, "Most rows a /query may return (max_result_rows).", "rows")
    query_max_bytes: Positive = setting(
        64 * 1024 * 1024, "Most bytes a /query result may hold (max_result_bytes).", "bytes")
    query_max_memory_bytes: Positive = setting(
        1024 * 1024 * 1024, "Most memory a /query may use (max_memory_usage).", "bytes")
    data_dir: str = setting(".otelpipe/worker",
                            "Local state: faust's, and the RocksDB copies of the tail sampling buffer.")
    state_store: Annotated[str, _one_of("memory", "rocksdict")] = setting(
        "memory", "Where the tail sampling buffer's local copy lives: memory (faster and smaller for buffers "
                  "that fit, see BENCHMARKS.md) or rocksdict (RocksDB under data_dir, for buffers larger than "
                  "memory). Either way the compacted topic is the durable copy.")
    session_timeout_s: float = setting(
        60.0, "Kafka consumer session timeout: how long a worker that died without leaving keeps its "
              "partitions before the group hands them to others.", "s")
    retry_initial_s: PositiveFloat = setting(0.5, "First wait before retrying a failed ClickHouse write.", "s")
    retry_max_s: float = setting(30.0, "Longest wait between retries of a failed ClickHouse write.", "s")

    @model_validator(mode="after")
    def _related(self) -> WorkerSettings:
        problems = []
        if not 6 <= self.session_timeout_s <= 1800:
            problems.append(f"session_timeout_s: must be between 6 and 1800 (the broker's limits), "
                            f"got {self.session_timeout_s!r}")
        if self.retry_max_s < self.retry_initial_s:
            problems.append("retry_max_s: must be >= worker.retry_initial_s")
        return _raise_related(self, problems)


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Objective:
    """One service's SLO: availability and latency objectives over the SLO window."""

    service: str
    availability: Annotated[float, AfterValidator(_fraction)] = 0.999  # fraction of entry spans that are not errors
    latency_ms: Annotated[int, AfterValidator(_latency_bucket)] = 1000  # threshold; one of LATENCY_BUCKETS_MS
    latency_target: Annotated[float, AfterValidator(_fraction)] = 0.99  # fraction at or under latency_ms


class SloSettings(Section):
    window_days: Positive = setting(30, "SLO window: error budgets are spent over this many days.", "days")
    default_availability: Annotated[float, AfterValidator(_fraction)] = setting(
        0.999, "Availability objective of services without an [[slo.objectives]] entry.")
    default_latency_ms: Annotated[int, AfterValidator(_latency_bucket)] = setting(
        1000, "Latency threshold of services without an objective; one of "
              + ", ".join(map(str, LATENCY_BUCKETS_MS)) + ".", "ms")
    default_latency_target: Annotated[float, AfterValidator(_fraction)] = setting(
        0.99, "Fraction of entry spans that must be under the latency threshold.")
    fast_burn_rate: PositiveFloat = setting(
        14.4, "Burn rate over 1h and 5m that pages (2% of a 30-day budget in an hour).")
    slow_burn_rate: PositiveFloat = setting(
        6.0, "Burn rate over 6h and 30m that opens a ticket (5% of the budget in 6 hours).")
    evaluate_every_s: Annotated[float, AfterValidator(non_negative)] = setting(
        60.0, "How often the worker evaluates burn rates (0 turns it off).", "s")
    alerts_topic: Topic = setting("otelpipe.alerts", "Topic receiving alert records (Avro).")
    objectives: tuple[Objective, ...] = setting(
        (), "Per-service objectives: [[slo.objectives]] tables with service, availability, latency_ms, "
            "latency_target.")

    @model_validator(mode="after")
    def _related(self) -> SloSettings:
        problems, seen = [], set()
        for i, objective in enumerate(self.objectives):
            if objective.service in seen:
                problems.append(f"objectives[{i}].service: {objective.service!r} has two objectives")
            seen.add(objective.service)
        return _raise_related(self, problems)

    def objective_for(self, service: str) -> Objective:
        for objective in self.objectives:
            if objective.service == service:
                return objective
        return Objective(service, self.default_availability, self.default_latency_ms, self.default_latency_target)


class SamplingSettings(Section):
    head_rate: Annotated[float, AfterValidator(_rate)] = setting(
        1.0, "Head sampling probability of services without a rate of their own (1 keeps everything). "
             "Rates set with `otelpipe sampling set` override it and the per-service rates.")
    min_rate: Annotated[float, AfterValidator(_rate)] = setting(
        2.0**-20, "The smallest sampling probability accepted anywhere: in this file, on the control topic, and "
                  "from producers (a span arriving with a smaller th counts as 1 / min_rate spans at most, so "
                  "a producer cannot inflate estimates). 2^-20: a kept span stands for about a million.")
    service_rates: Annotated[str, AfterValidator(_service_rates)] = setting(
        "", "Per-service head sampling probabilities, comma separated: checkout=0.1,cart=0.5.")
    keep_log_severity: int = setting(
        13, "Logs of dropped traces at this severity number or above are kept (13 = WARN).")
    tail: bool = setting(
        False, "Tail sampling: route spans and logs by trace id, buffer each trace durably and keep "
               "or drop it whole by the tail policies.")
    tail_policy_file: str = setting(
        "", "TOML file of [[policies]] for tail sampling (empty: keep errors, traces whose root "
            "lasted 1 s or more, and 1% of the rest).")
    decision_wait_s: PositiveFloat = setting(
        10.0, "Tail sampling decides a trace this long after its last span arrived.", "s")
    max_traces: int = setting(20000, "Traces buffered per worker at most; past it the oldest are decided early.")
    max_spans_per_trace: int = setting(
        5000, "A trace with this many spans buffered is decided early; its later spans follow the decision.")
    decision_cache_s: float = setting(
        300.0, "How long a tail decision is remembered, so late spans and logs follow their trace.", "s")
    late_default: Annotated[str, _one_of("keep", "drop", "policies")] = setting(
        "policies", "Spans and logs that reach Kafka more than decision_cache_s after they ended, when their "
                    "trace's decision has left the cache: keep, drop, or policies (decide them like a new trace; "
                    "probabilistic policies then repeat the trace's decision).")
    tail_bulk: bool = setting(
        True, "Tail sampling: the router sends one buffer record per source message and tail partition, holding "
              "the parts of all its traces (fewer Kafka records). Releases before it read only one record per "
              "trace and clear the others as foreign: set false while such workers still run (a rolling "
              "upgrade), then back to true.")
    tail_group_rounds: bool = setting(
        True, "Tail sampling: a worker decides the due traces of all its tail partitions in one round (one insert "
              "per table, not one per partition), recorded in one Kafka transaction. Set false for a broker that "
              "does not allow transactions, and while workers of a release before it still run (they read "
              "uncommitted records and know rounds of one partition only); a failed transaction also sends "
              "rounds partition by partition for a while, on its own.")
    control_topic: Topic = setting(
        "otelpipe.sampling", "Compacted topic of runtime sampling rates (key: service, or * for the default) "
                             "that every worker follows.")

    @model_validator(mode="after")
    def _related(self) -> SamplingSettings:
        problems = []
        if self.head_rate < self.min_rate:
            problems.append(f"head_rate: {self.head_rate!r} is below sampling.min_rate ({self.min_rate!r})")
        for service, rate in self.rates().items():
            if rate < self.min_rate:
                problems.append(f"service_rates: {service}={rate!r} is below sampling.min_rate ({self.min_rate!r})")
        if not 1 <= self.keep_log_severity <= 25:
            problems.append(f"keep_log_severity: must be a severity number 1..25, got {self.keep_log_severity!r}")
        if self.max_traces < 1:
            problems.append(f"max_traces: must be >= 1, got {self.max_traces!r}")
        if self.max_spans_per_trace < 1:
            problems.append(f"max_spans_per_trace: must be >= 1, got {self.max_spans_per_trace!r}")
        if self.decision_cache_s < self.decision_wait_s:
            problems.append("decision_cache_s: must be >= sampling.decision_wait_s")
        return _raise_related(self, problems)

    def rates(self) -> dict[str, float]:
        out = {}
        for item in filter(None, (part.strip() for part in self.service_rates.split(","))):
            name, _, value = item.rpartition("=")
            out[name.strip()] = float(value)
        return out


class ControlSettings(Section):
    key: SecretStr = setting(
        "", "Shared key that signs and verifies control records (label policy, sampling and catalog topics), "
            "OTELPIPE_CONTROL_KEY; at least 16 characters. Empty, with key_file empty too: "
            "<worker.data_dir>/control.key, made on first use (mode 0600) by the worker or the CLI. Every "
            "worker and every machine that runs `otelpipe policy push`, `sampling set` or `catalog push` "
            "needs the same key.")
    key_file: str = setting(
        "", "File holding the control key (instead of key); surrounding whitespace is ignored.")
    topic_policy_may_relax: bool = setting(
        False, "Whether a label policy from the policy topic may redact less than the worker's own "
               "(worker.label_policy or the defaults): fewer detectors, block keys or query secrets, allow "
               "mode back to block. False: such a policy is refused (weaker_policy).")

    @model_validator(mode="after")
    def _related(self) -> ControlSettings:
        problems = []
        key = self.key.get_secret_value()
        if key and self.key_file:
            problems.append("key: set key or key_file, not both")
        if key and len(key.strip()) < 16:
            problems.append("key: must be at least 16 characters")
        return _raise_related(self, problems)


class _Related(ValueError):
    """Problems relating several settings of one section, each ``field: message`` or a sentence."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\x1f".join(problems))


def _raise_related(section: Any, problems: list[str]) -> Any:
    if problems:
        raise _Related(problems)
    return section


# ------------------------------------------------------------------ the whole configuration

# Where load_settings points the sources while it builds one Settings (no process-wide state).
_SOURCES: contextvars.ContextVar[tuple[Mapping[str, str], dict[str, Any]]] = contextvars.ContextVar("otelpipe_sources")


class _MappingEnvSource(EnvSettingsSource):
    """``OTELPIPE_<SECTION>_<FIELD>`` read from a given mapping (``os.environ`` unless a test passes one)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = {k: v for k, v in self._env.items() if k.upper() != "OTELPIPE_CONFIG"}
        return parse_env_vars(env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTELPIPE_", env_nested_delimiter="_", env_nested_max_split=1,
                                      extra="forbid", frozen=True, case_sensitive=False)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka: brokers, topics, encodings.")
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings, description="Where rows go.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="The worker process.")
    slo: SloSettings = Field(default_factory=SloSettings, description="SLOs and burn-rate alerts.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="Head and tail sampling.")
    control: ControlSettings = Field(default_factory=ControlSettings,
                                     description="Signed control topics: the key and what a pushed policy may do.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        env, file_values = _SOURCES.get((os.environ, {}))
        return (init_settings, _MappingEnvSource(settings_cls, env), InitSettingsSource(settings_cls, file_values))

    def record_max_bytes(self) -> int:
        """The largest record otelpipe produces, and every topic it creates accepts: a message of
        ``worker.max_message_bytes`` plus room for the dead-letter headers or the routed envelope,
        never below Kafka's own default (so a smaller limit still lets oversized messages arrive
        and become dead letters)."""
        return max(self.worker.max_message_bytes + RECORD_OVERHEAD_BYTES, KAFKA_DEFAULT_MAX_MESSAGE_BYTES)

    def letter_max_bytes(self) -> int:
        """The most bytes of a message a dead letter carries (the rest of the record is headers)."""
        return self.record_max_bytes() - RECORD_OVERHEAD_BYTES

    def topic_configs(self, **extra: str) -> dict[str, str]:
        """Configs of the topics otelpipe creates: they carry the largest record (and ``extra``)."""
        configs = {"max.message.bytes": str(self.record_max_bytes())}
        for key, value in extra.items():
            if key == "max.message.bytes":
                value = str(max(int(value), self.record_max_bytes()))
            configs[key] = value
        return configs

    def dlq_topic(self, topic: str) -> str:
        return topic + self.kafka.dlq_suffix

    def source_topics(self) -> list[str]:
        return [self.kafka.spans_topic, self.kafka.logs_topic, self.kafka.metrics_topic]

    def routed_topic(self, topic: str) -> str:
        """An internal topic of this deployment: ``<app_id>.<topic><routed_suffix>``. Two
        deployments (app ids) on one broker never read each other's routed records."""
        return f"{self.worker.app_id}.{topic}{self.kafka.routed_suffix}"

    def state_topic(self, name: str) -> str:
        """The compacted changelog topic of a stage's state (per consumer group)."""
        return f"{self.worker.app_id}.{name}"

    def tail_topic(self) -> str:
        """Tail sampling: spans and logs routed by trace id (compacted: the durable trace buffer)."""
        return self.routed_topic(self.kafka.spans_topic)

    def routed_topics(self) -> list[str]:
        """Internal topics of routed records (Avro envelopes, ``schemas/avro/routed_otlp.avsc``)."""
        return [self.routed_topic(self.kafka.metrics_topic)]


SECTIONS: dict[str, type[Section]] = {
    name: info.annotation for name, info in Settings.model_fields.items()  # type: ignore[misc]
}

_EXPECTED = {"int": "int", "float": "float", "bool": "bool", "string": "str"}
_SECRET_WORDS = {"password", "token", "key", "secret", "dsn"}
_SECRET_FIELDS = {name for cls in SECTIONS.values() for name, info in cls.model_fields.items()
                  if info.annotation is SecretStr}
_SHAPES = {dict: "a table", list: "an array", tuple: "an array", bool: "a boolean", int: "an integer",
           float: "a float", str: "a string", type(None): "nothing"}
HIDDEN = "****"


def secret_setting(name: str) -> bool:
    """Whether a setting's value is never shown in a problem: ``SecretStr`` settings and every one
    whose name has the word password, token, key or secret, and the DSN (it may hold a password)."""
    return name in _SECRET_FIELDS or bool(_SECRET_WORDS & set(name.lower().split("_")))


def _leaves(value: Any) -> list[str]:
    """Every scalar inside an input value, as text."""
    if isinstance(value, Mapping):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, (list, tuple, set)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def _secret_inputs(value: Any, secret: Callable[[str], bool]) -> list[str]:
    """The scalars of the secret settings inside an input table (a section a check of several
    settings refused), at any depth."""
    if not isinstance(value, Mapping):
        return []
    found = []
    for name, v in value.items():
        found += _leaves(v) if isinstance(name, str) and secret(name) else _secret_inputs(v, secret)
    return found


def _hide(problem: str, values: Sequence[str]) -> str:
    for text in sorted({v for v in values if v}, key=len, reverse=True):
        problem = re.sub(rf"(?<!\w){re.escape(text)}(?!\w)", HIDDEN, problem)
    return problem


def _never_secret(name: str) -> bool:
    return False


def problems_of(exc: ValidationError, root: str = "", sections: Sequence[str] | None = None,
                required: Mapping[str, str] | None = None, tags: Sequence[str] = (),
                tagged: str = "policy", secret: Callable[[str], bool] = _never_secret) -> list[str]:
    """pydantic's errors as ``path: problem`` lines (``cardinality.rules[2].buckets: must be > 0``),
    in the same words for every file otelpipe reads (configuration, label policy, catalog, tail
    policies).

    ``root`` prefixes every path; ``sections`` are the file's known top-level tables (an unknown
    one is named with them); ``required`` gives the problem of a missing setting, by name; ``tags``
    are the ``type`` values of a discriminated union (``[[policies]]``), whose tag pydantic puts in
    the location: it is left out of the path and named in the problem (``for a latency policy``).
    ``secret`` tells, by name, the settings whose input is never shown (pydantic keeps it in every
    error): their problems name the setting and what is wrong, the type of a wrong value at most.
    """
    out = []
    for err in exc.errors(include_url=False):
        loc, kind, ctx, value = list(err["loc"]), err["type"], err.get("ctx") or {}, err.get("input")
        name = next((str(part) for part in reversed(loc) if isinstance(part, str)), "")
        hidden = _leaves(value) if name and secret(name) else _secret_inputs(value, secret)
        path, tag = root, ""
        for i, part in enumerate(loc):
            if isinstance(part, int):
                path += f"[{part}]"
            elif i and isinstance(loc[i - 1], int) and part in tags:
                tag = str(part)
            else:
                path += f".{part}" if path else str(part)
        of_tag = f" for a {tag} {tagged}" if tag else ""
        cause = ctx.get("error")
        if isinstance(cause, _Related):
            for problem in cause.problems:
                head, sep, _ = problem.partition(": ")
                problem = _hide(problem, hidden)
                out.append(f"{path}.{problem}" if sep and " " not in head else f"{path}: {problem}")
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found") and isinstance(value, dict):
            out.append(f"{path}.type: must be one of {', '.join(tags)}, got {value.get('type')!r}")
            continue
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            if len(loc) == 1 and not root and sections:
                problem = f"unknown section (known: {', '.join(sections)})"
            else:
                problem = "unknown setting" + of_tag
        elif kind == "missing":
            problem = (required or {}).get(str(loc[-1]) if loc else "", "required" + of_tag)
        elif kind in ("model_type", "model_attributes_type", "dataclass_type", "dict_type", "union_tag_invalid",
                      "union_tag_not_found"):
            problem = "must be a table"
        elif kind == "value_error":
            problem = str(cause) if cause is not None else err["msg"]
        elif kind == "literal_error":
            problem = f"must be {str(ctx.get('expected', '')).replace(chr(39), '')}"
        elif kind.split("_")[0] in _EXPECTED and kind.endswith(("_parsing", "_type", "_from_float")):
            shown = _SHAPES.get(type(value), "another type") if name and secret(name) else repr(value)
            problem = f"expected {_EXPECTED[kind.split('_')[0]]}, got {shown}"
        else:
            problem = err["msg"]
        problem = _hide(mask_secrets(problem), hidden)
        out.append(f"{path}: {problem}" if path else problem)
    return out


def deep_update(base: dict[str, Any], *updates: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each update merged in, tables (dicts) merged key by key, later ones winning."""
    out = dict(base)
    for update in updates:
        for key, value in update.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = deep_update(dict(out[key]), value)
            else:
                out[key] = value
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build and validate the settings; raise ConfigError naming every problem."""
    env = os.environ if env is None else env
    path = path or env.get("OTELPIPE_CONFIG") or None
    file_values = read_toml(path, "config", ConfigError) if path else {}
    merged = deep_update(file_values, _MappingEnvSource(Settings, env)(),
                         {k: dict(v) for k, v in (overrides or {}).items()})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = problems_of(exc, sections=list(SECTIONS), secret=secret_setting)
        failed = {tuple(err["loc"][:2]) for err in exc.errors() if len(err["loc"]) >= 2}
    # A section with an invalid setting skipped its checks that relate settings: run them on the
    # settings that are valid (defaults standing in for the others), so every problem is listed.
    for section, cls in SECTIONS.items():
        raw = merged.get(section)
        if not isinstance(raw, dict) or not any((section, name) in failed for name in raw):
            continue
        try:
            cls.model_validate({name: v for name, v in raw.items() if (section, name) not in failed})
        except ValidationError as again:
            problems += [p for p in problems_of(again, section, secret=secret_setting) if p not in problems]
    raise ConfigError(problems)


def with_changes(model: Any, **changes: Any) -> Any:
    """A copy of a settings model (or section) with some fields changed, validated again: an
    invalid change raises ConfigError naming it."""
    values = {name: getattr(model, name) for name in type(model).model_fields}
    try:
        return type(model).model_validate({**values, **changes})
    except ValidationError as exc:
        root = next((name for name, cls in SECTIONS.items() if isinstance(model, cls)), "")
        raise ConfigError(problems_of(exc, root, secret=secret_setting)) from None


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, for editors to complete and check."""
    schema = Settings.model_json_schema()
    schema["title"] = "otelpipe configuration"
    return schema


def describe(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(path, value, unit, meaning) of every setting, for `otelpipe config`; secrets masked."""
    rows = []
    for section in SECTIONS:
        obj = getattr(settings, section)
        for name, info in type(obj).model_fields.items():
            unit = (info.json_schema_extra or {}).get("unit", "") if isinstance(info.json_schema_extra, dict) else ""
            rows.append((f"{section}.{name}", mask_secrets(repr(getattr(obj, name))), unit, info.description or ""))
    return rows


def resolve_path(path: str) -> Path:
    return Path(os.path.expanduser(path)).resolve()
