"""One typed, validated configuration for every otelpipe process.

Sources, later ones winning:
1. the defaults below,
2. a TOML file (``--config FILE`` or ``OTELPIPE_CONFIG``), sections named after the dataclasses
   (``[kafka]``, ``[clickhouse]``, ``[worker]``),
3. environment variables ``OTELPIPE_<SECTION>_<FIELD>`` (``OTELPIPE_CLICKHOUSE_DSN=...``).

``load_settings`` validates everything at once and raises ``ConfigError`` listing every problem
with its path (``worker.batch_max_messages: must be > 0``), never just the first.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENCODINGS = ("otlp_proto", "otlp_json")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def doc(text: str, unit: str = "") -> dict[str, str]:
    return {"doc": text, "unit": unit}


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = field(
        default="127.0.0.1:9092", metadata=doc("Kafka bootstrap servers, comma separated.")
    )
    partitions: int = field(
        default=6,
        metadata=doc("Partitions for topics otelpipe creates (source topics and dead-letter topics)."),
    )
    spans_topic: str = field(default="otlp_spans", metadata=doc("Topic holding OTLP trace requests."))
    logs_topic: str = field(default="otlp_logs", metadata=doc("Topic holding OTLP log requests."))
    metrics_topic: str = field(default="otlp_metrics", metadata=doc("Topic holding OTLP metric requests."))
    spans_encoding: str = field(
        default="otlp_proto",
        metadata=doc("Encoding of the spans topic when a message has no content-type header: otlp_proto or otlp_json."),
    )
    logs_encoding: str = field(default="otlp_proto", metadata=doc("Encoding of the logs topic (see spans_encoding)."))
    metrics_encoding: str = field(
        default="otlp_proto", metadata=doc("Encoding of the metrics topic (see spans_encoding).")
    )
    dlq_suffix: str = field(
        default=".dlq", metadata=doc("Suffix of a source topic's dead-letter topic: otlp_spans.dlq.")
    )
    routed_suffix: str = field(
        default=".routed",
        metadata=doc("Suffix of the internal topic a source's records are routed through by key "
                     "(metrics by metric name): otlp_metrics.routed."),
    )
    # Local broker (otelpipe kafka up); ignored when bootstrap_servers points elsewhere.
    local_data_dir: str = field(
        default=".otelpipe/kafka", metadata=doc("Data and log directory of the local broker.")
    )
    local_controller_port: int = field(
        default=9093, metadata=doc("Controller listener port of the local KRaft broker.")
    )
    local_heap: str = field(default="512m", metadata=doc("JVM heap of the local broker (-Xmx/-Xms)."))
    jar_cache: str = field(
        default="~/.cache/otelpipe/kafka-3.9.2",
        metadata=doc("Where the broker's jars resolved from Maven Central are cached (outside the repo)."),
    )

    def encoding_for(self, topic: str) -> str:
        return {
            self.spans_topic: self.spans_encoding,
            self.logs_topic: self.logs_encoding,
            self.metrics_topic: self.metrics_encoding,
        }.get(topic, "otlp_proto")


@dataclass(frozen=True)
class ClickHouseSettings:
    dsn: str = field(
        default="chdb://.otelpipe/chdb",
        metadata=doc(
            "Where rows go. chdb:///PATH embeds ClickHouse in the worker (relative PATH is taken from "
            "the current directory); http(s)://user:pass@host:8123/db reaches a server."
        ),
    )
    database: str = field(default="otel", metadata=doc("Database holding the otel_* tables."))
    cluster: str = field(
        default="", metadata=doc("Server only: render DDL ON CLUSTER this cluster with Replicated engines.")
    )
    ttl_days: int = field(
        default=0, metadata=doc("Server only: drop parts older than this many days (0 keeps data forever).", "days")
    )
    dedup_window: int = field(
        default=10000,
        metadata=doc(
            "non_replicated_deduplication_window of every table: how many recent insert blocks remember "
            "their deduplication token.",
            "blocks",
        ),
    )
    insert_timeout_s: float = field(default=60.0, metadata=doc("Timeout of one insert.", "s"))


@dataclass(frozen=True)
class WorkerSettings:
    app_id: str = field(
        default="otelpipe", metadata=doc("Faust app id: the consumer group and the prefix of internal topics.")
    )
    batch_max_messages: int = field(
        default=200, metadata=doc("Most Kafka messages decoded and inserted as one batch.", "messages")
    )
    batch_within_s: float = field(
        default=1.0, metadata=doc("Longest wait for a batch to fill before it is written anyway.", "s")
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata=doc("Messages larger than this go to the dead-letter topic unread.", "bytes"),
    )
    label_policy: str = field(
        default="default",
        metadata=doc(
            "Label policy (redaction, templating, cardinality rules, allowed metric names): a TOML file, "
            "'default' for the built-in defaults (secrets redacted, span names templated), or 'off'."
        ),
    )
    catalog_file: str = field(
        default="",
        metadata=doc("Service catalog TOML ([[services]] name, team, tier, owner, SLO targets); empty: none."),
    )
    catalog_topic: str = field(
        default="otelpipe.catalog",
        metadata=doc("Compacted topic of catalog entries (key: service name), followed live by every worker "
                     "(`otelpipe catalog push FILE`)."),
    )
    policy_topic: str = field(
        default="otelpipe.policy",
        metadata=doc("Compacted topic of label policies (TOML text): the newest record is applied by every "
                     "running worker within seconds (`otelpipe policy push FILE`)."),
    )
    web_port: int = field(
        default=6066, metadata=doc("Port of the worker's HTTP server: /metrics and the read-only /query.")
    )
    web_host: str = field(default="127.0.0.1", metadata=doc("Address the worker's HTTP server binds."))
    data_dir: str = field(default=".otelpipe/worker",
                          metadata=doc("Local state: faust's, and the RocksDB copies of the tail sampling buffer."))
    state_store: str = field(
        default="memory",
        metadata=doc("Where the tail sampling buffer's local copy lives: memory (faster and smaller for buffers "
                     "that fit, see BENCHMARKS.md) or rocksdict (RocksDB under data_dir, for buffers larger than "
                     "memory). Either way the compacted topic is the durable copy."),
    )
    session_timeout_s: float = field(
        default=60.0,
        metadata=doc(
            "Kafka consumer session timeout: how long a worker that died without leaving keeps its "
            "partitions before the group hands them to others.",
            "s",
        ),
    )
    retry_initial_s: float = field(
        default=0.5, metadata=doc("First wait before retrying a failed ClickHouse write.", "s")
    )
    retry_max_s: float = field(
        default=30.0, metadata=doc("Longest wait between retries of a failed ClickHouse write.", "s")
    )


LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(frozen=True)
class Objective:
    """One service's SLO: availability and latency objectives over the SLO window."""

    service: str
    availability: float = 0.999  # fraction of entry spans (server/consumer) that are not errors
    latency_ms: int = 1000  # threshold; one of LATENCY_BUCKETS_MS
    latency_target: float = 0.99  # fraction of entry spans at or under latency_ms


@dataclass(frozen=True)
class SloSettings:
    window_days: int = field(default=30, metadata=doc("SLO window: error budgets are spent over this many days.", "days"))
    default_availability: float = field(
        default=0.999, metadata=doc("Availability objective of services without an [[slo.objectives]] entry.")
    )
    default_latency_ms: int = field(
        default=1000,
        metadata=doc("Latency threshold of services without an objective; one of " +
                     ", ".join(map(str, LATENCY_BUCKETS_MS)) + ".", "ms"),
    )
    default_latency_target: float = field(
        default=0.99, metadata=doc("Fraction of entry spans that must be under the latency threshold.")
    )
    fast_burn_rate: float = field(
        default=14.4, metadata=doc("Burn rate over 1h and 5m that pages (2% of a 30-day budget in an hour).")
    )
    slow_burn_rate: float = field(
        default=6.0, metadata=doc("Burn rate over 6h and 30m that opens a ticket (5% of the budget in 6 hours).")
    )
    evaluate_every_s: float = field(
        default=60.0, metadata=doc("How often the worker evaluates burn rates (0 turns it off).", "s")
    )
    alerts_topic: str = field(default="otelpipe.alerts", metadata=doc("Topic receiving alert records (Avro)."))
    objectives: tuple[Objective, ...] = field(
        default=(),
        metadata=doc("Per-service objectives: [[slo.objectives]] tables with service, availability, "
                     "latency_ms, latency_target."),
    )

    def objective_for(self, service: str) -> Objective:
        for objective in self.objectives:
            if objective.service == service:
                return objective
        return Objective(service, self.default_availability, self.default_latency_ms, self.default_latency_target)


@dataclass(frozen=True)
class SamplingSettings:
    head_rate: float = field(
        default=1.0,
        metadata=doc("Head sampling probability of services without a rate of their own (1 keeps everything). "
                     "Rates set with `otelpipe sampling set` override it and the per-service rates."),
    )
    service_rates: str = field(
        default="",
        metadata=doc("Per-service head sampling probabilities, comma separated: checkout=0.1,cart=0.5."),
    )
    keep_log_severity: int = field(
        default=13,
        metadata=doc("Logs of dropped traces at this severity number or above are kept (13 = WARN)."),
    )
    tail: bool = field(
        default=False,
        metadata=doc("Tail sampling: route spans and logs by trace id, buffer each trace durably and keep "
                     "or drop it whole by the tail policies."),
    )
    tail_policy_file: str = field(
        default="",
        metadata=doc("TOML file of [[policies]] for tail sampling (empty: keep errors, traces whose root "
                     "lasted 1 s or more, and 1% of the rest)."),
    )
    decision_wait_s: float = field(
        default=10.0, metadata=doc("Tail sampling decides a trace this long after its last span arrived.", "s")
    )
    max_traces: int = field(
        default=20000, metadata=doc("Traces buffered per worker at most; past it the oldest are decided early.")
    )
    max_spans_per_trace: int = field(
        default=5000,
        metadata=doc("A trace with this many spans buffered is decided early; its later spans follow the decision."),
    )
    decision_cache_s: float = field(
        default=300.0,
        metadata=doc("How long a tail decision is remembered, so late spans and logs follow their trace.", "s"),
    )
    late_default: str = field(
        default="policies",
        metadata=doc("Spans and logs that reach Kafka more than decision_cache_s after they ended, when their "
                     "trace's decision has left the cache: keep, drop, or policies (decide them like a new trace; "
                     "probabilistic policies then repeat the trace's decision)."),
    )
    control_topic: str = field(
        default="otelpipe.sampling",
        metadata=doc("Compacted topic of runtime sampling rates (key: service, or * for the default) "
                     "that every worker follows."),
    )

    def rates(self) -> dict[str, float]:
        out = {}
        for item in filter(None, (part.strip() for part in self.service_rates.split(","))):
            name, _, value = item.rpartition("=")
            out[name.strip()] = float(value)
        return out


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    slo: SloSettings = field(default_factory=SloSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def dlq_topic(self, topic: str) -> str:
        return topic + self.kafka.dlq_suffix

    def source_topics(self) -> list[str]:
        return [self.kafka.spans_topic, self.kafka.logs_topic, self.kafka.metrics_topic]

    def routed_topic(self, topic: str) -> str:
        return topic + self.kafka.routed_suffix

    def state_topic(self, name: str) -> str:
        """The compacted changelog topic of a stage's state (per consumer group)."""
        return f"{self.worker.app_id}.{name}"

    def tail_topic(self) -> str:
        """Tail sampling: spans and logs routed by trace id (compacted: the durable trace buffer)."""
        return self.routed_topic(self.kafka.spans_topic)

    def routed_topics(self) -> list[str]:
        """Internal topics of routed records (Avro envelopes, ``schemas/avro/routed_otlp.avsc``)."""
        return [self.routed_topic(self.kafka.metrics_topic)]


SECTIONS: dict[str, type] = {
    "kafka": KafkaSettings,
    "clickhouse": ClickHouseSettings,
    "worker": WorkerSettings,
    "slo": SloSettings,
    "sampling": SamplingSettings,
}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _objectives(raw: Any, path: str, problems: list[str]) -> tuple[Objective, ...] | None:
    if not isinstance(raw, list):
        problems.append(f"{path}: expected a list of tables ([[slo.objectives]])")
        return None
    out = []
    hints = typing.get_type_hints(Objective)
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table")
            continue
        unknown = set(item) - set(hints)
        for name in sorted(unknown):
            problems.append(f"{where}.{name}: unknown setting")
        if "service" not in item:
            problems.append(f"{where}.service: required")
            continue
        values = {}
        for name, value in item.items():
            if name in hints:
                coerced = _coerce(value, hints[name], f"{where}.{name}", problems)
                if coerced is not None:
                    values[name] = coerced
        if "service" in values:
            out.append(Objective(**values))
    return tuple(out)


def _coerce(raw: Any, typ: Any, path: str, problems: list[str]) -> Any:
    """Turn a TOML value or an environment string into the field's type, or note why not."""
    if typ == tuple[Objective, ...]:
        return _objectives(raw, path, problems)
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if typ is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        pass
    problems.append(f"{path}: expected {typ.__name__}, got {raw!r}")
    return None


def _validate(s: Settings) -> list[str]:
    problems: list[str] = []
    k, c, w = s.kafka, s.clickhouse, s.worker

    def positive(path: str, value: float) -> None:
        if value <= 0:
            problems.append(f"{path}: must be > 0, got {value!r}")

    if not k.bootstrap_servers.strip():
        problems.append("kafka.bootstrap_servers: must not be empty")
    positive("kafka.partitions", k.partitions)
    for name in ("spans_topic", "logs_topic", "metrics_topic"):
        value = getattr(k, name)
        if not _TOPIC.match(value):
            problems.append(f"kafka.{name}: {value!r} is not a valid Kafka topic name")
    topics = [k.spans_topic, k.logs_topic, k.metrics_topic]
    if len(set(topics)) != len(topics):
        problems.append("kafka: spans_topic, logs_topic and metrics_topic must be distinct")
    for name in ("spans_encoding", "logs_encoding", "metrics_encoding"):
        value = getattr(k, name)
        if value not in ENCODINGS:
            problems.append(f"kafka.{name}: must be one of {', '.join(ENCODINGS)}, got {value!r}")
    if not k.dlq_suffix:
        problems.append("kafka.dlq_suffix: must not be empty (dead letters would loop into the source topic)")
    if not k.routed_suffix or k.routed_suffix == k.dlq_suffix:
        problems.append("kafka.routed_suffix: must not be empty nor equal to dlq_suffix")
    for name in ("local_controller_port",):
        value = getattr(k, name)
        if not 0 < value < 65536:
            problems.append(f"kafka.{name}: must be a TCP port, got {value!r}")
    if not re.match(r"^\d+[mMgG]$", k.local_heap):
        problems.append(f"kafka.local_heap: must look like 512m or 1g, got {k.local_heap!r}")

    if not (c.dsn.startswith("chdb://") or c.dsn.startswith("http://") or c.dsn.startswith("https://")):
        problems.append(f"clickhouse.dsn: must start with chdb://, http:// or https://, got {c.dsn!r}")
    if not _IDENT.match(c.database):
        problems.append(f"clickhouse.database: {c.database!r} is not a plain identifier")
    if c.cluster and not _IDENT.match(c.cluster):
        problems.append(f"clickhouse.cluster: {c.cluster!r} is not a plain identifier")
    if c.dsn.startswith("chdb://") and (c.cluster or c.ttl_days):
        problems.append("clickhouse: cluster and ttl_days apply to a ClickHouse server, not the embedded chdb:// store")
    if c.ttl_days < 0:
        problems.append(f"clickhouse.ttl_days: must be >= 0, got {c.ttl_days!r}")
    positive("clickhouse.dedup_window", c.dedup_window)
    positive("clickhouse.insert_timeout_s", c.insert_timeout_s)

    if not w.app_id.strip():
        problems.append("worker.app_id: must not be empty")
    positive("worker.batch_max_messages", w.batch_max_messages)
    positive("worker.batch_within_s", w.batch_within_s)
    positive("worker.max_message_bytes", w.max_message_bytes)
    if not 0 < w.web_port < 65536:
        problems.append(f"worker.web_port: must be a TCP port, got {w.web_port!r}")
    if not 6 <= w.session_timeout_s <= 1800:
        problems.append(f"worker.session_timeout_s: must be between 6 and 1800 (the broker's limits), got {w.session_timeout_s!r}")
    positive("worker.retry_initial_s", w.retry_initial_s)

    slo = s.slo
    positive("slo.window_days", slo.window_days)
    positive("slo.fast_burn_rate", slo.fast_burn_rate)
    positive("slo.slow_burn_rate", slo.slow_burn_rate)
    if slo.evaluate_every_s < 0:
        problems.append(f"slo.evaluate_every_s: must be >= 0, got {slo.evaluate_every_s!r}")
    if not _TOPIC.match(slo.alerts_topic):
        problems.append(f"slo.alerts_topic: {slo.alerts_topic!r} is not a valid Kafka topic name")
    defaults = Objective("(default)", slo.default_availability, slo.default_latency_ms, slo.default_latency_target)
    seen = set()
    for i, objective in enumerate((defaults, *slo.objectives)):
        where = "slo.default_" if i == 0 else f"slo.objectives[{i - 1}]."
        for name in ("availability", "latency_target"):
            value = getattr(objective, name)
            if not 0 < value < 1:
                problems.append(f"{where}{name}: must be between 0 and 1 (exclusive), got {value!r}")
        if objective.latency_ms not in LATENCY_BUCKETS_MS:
            problems.append(
                f"{where}latency_ms: must be one of {', '.join(map(str, LATENCY_BUCKETS_MS))}, got {objective.latency_ms!r}"
            )
        if i and objective.service in seen:
            problems.append(f"{where}service: {objective.service!r} has two objectives")
        seen.add(objective.service)
    if w.state_store not in ("rocksdict", "memory"):
        problems.append(f"worker.state_store: must be rocksdict or memory, got {w.state_store!r}")
    if w.retry_max_s < w.retry_initial_s:
        problems.append("worker.retry_max_s: must be >= worker.retry_initial_s")
    sampling = s.sampling
    if not 2**-56 <= sampling.head_rate <= 1:
        problems.append(f"sampling.head_rate: must be in [2^-56, 1], got {sampling.head_rate!r}")
    for item in filter(None, (part.strip() for part in sampling.service_rates.split(","))):
        name, eq, value = item.rpartition("=")
        try:
            ok = bool(eq and name.strip()) and 2**-56 <= float(value) <= 1
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"sampling.service_rates: {item!r} is not SERVICE=RATE with a rate in (0, 1]")
    if not 1 <= sampling.keep_log_severity <= 25:
        problems.append(f"sampling.keep_log_severity: must be a severity number 1..25, got {sampling.keep_log_severity!r}")
    if sampling.decision_wait_s <= 0:
        problems.append(f"sampling.decision_wait_s: must be > 0, got {sampling.decision_wait_s!r}")
    if sampling.max_traces < 1:
        problems.append(f"sampling.max_traces: must be >= 1, got {sampling.max_traces!r}")
    if sampling.max_spans_per_trace < 1:
        problems.append(f"sampling.max_spans_per_trace: must be >= 1, got {sampling.max_spans_per_trace!r}")
    if sampling.late_default not in ("keep", "drop", "policies"):
        problems.append(f"sampling.late_default: must be keep, drop or policies, got {sampling.late_default!r}")
    if sampling.decision_cache_s < sampling.decision_wait_s:
        problems.append("sampling.decision_cache_s: must be >= sampling.decision_wait_s")
    if not _TOPIC.match(sampling.control_topic):
        problems.append(f"sampling.control_topic: {sampling.control_topic!r} is not a valid Kafka topic name")
    return problems


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build and validate the settings; raise ConfigError naming every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}

    path = path or env.get("OTELPIPE_CONFIG") or None
    if path:
        data = read_toml(path, "config", ConfigError)
        for section, values in data.items():
            if section not in SECTIONS:
                problems.append(f"{section}: unknown section (known: {', '.join(SECTIONS)})")
            elif not isinstance(values, dict):
                problems.append(f"{section}: must be a table")
            else:
                raw[section].update(values)

    prefix = "OTELPIPE_"
    for key, value in env.items():
        if not key.startswith(prefix) or key == "OTELPIPE_CONFIG":
            continue
        rest = key[len(prefix):].lower()
        section, _, name = rest.partition("_")
        if section in SECTIONS and name:
            raw[section][name] = value
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in raw.get(section, {}).items():
            if name not in fields:
                problems.append(f"{section}.{name}: unknown setting")
                continue
            coerced = _coerce(value, hints[name], f"{section}.{name}", problems)
            if coerced is not None:
                kwargs[name] = coerced
        built[section] = cls(**kwargs)
    settings = Settings(**built)
    problems.extend(_validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def describe(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(path, value, unit, meaning) of every setting, for `otelpipe config`."""
    rows = []
    for section in SECTIONS:
        obj = getattr(settings, section)
        for f in dataclasses.fields(obj):
            rows.append(
                (f"{section}.{f.name}", repr(getattr(obj, f.name)), f.metadata.get("unit", ""), f.metadata.get("doc", ""))
            )
    return rows


def resolve_path(path: str) -> Path:
    return Path(os.path.expanduser(path)).resolve()
