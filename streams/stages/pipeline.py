"""The stages every record passes through, in order, shared by the worker and by replays.

``Stages.run(signal, messages)`` turns a run of Kafka messages of one signal into table batches and
dead letters: decoding (``streams.otlp.decode``), head sampling of spans and logs
(``streams.stages.sampling``: consistent by trace id, per-service rates), then the label stage (``streams.stages.labels``:
redaction, templating, cardinality rules, allowed metric names), then, for metrics, the naming
conventions (``streams.stages.naming``), whose violations become rows of ``otelpipe_violations``, and
the series budgets (``streams.stages.series_budget``), whose crossings become rows of ``otelpipe_alerts``;
last, the service catalog (``streams.stages.catalog``). A replay builds the same ``Stages`` from the same
settings, so it makes the same decisions as the worker: stages use seeded hashes and record time,
never the wall clock. Two stages keep state: ``top_k`` rules and the series budgets. The worker
keeps the budgets in a changelogged table (see ``streams.agents.app``) and commits their changes only
after a batch's rows are written; a replay keeps them in memory for the replay.
Every change and drop is counted by stage and reason (``otelpipe_stage_changes_total``).

Spans and log records in protobuf go through the native core where it is built
(``worker.native_spans``, ``worker.native_logs``; ``streams.stages.native_stages``): the same
stages, decided once per distinct value, the same rows (a ``NativeBatch``), the same counts. A run
it declines (another encoding, a ``top_k`` rule for the signal) or fails on takes the Python path
below.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from streams.agents import worker_metrics as m
from streams.stages.alerts import ALERTS_TABLE
from streams.stages.alerts import table_columns as alert_table_columns
from streams.otlp.batch import ColumnBatch, DeadLetter, DecodeResult, RawMessage, concat
from streams.stages.catalog import CatalogStage, load_catalog
from streams.stages.labels import LabelStage
from streams.stages.naming import VIOLATION_COLUMNS, VIOLATIONS_TABLE, NamingStage
from streams.otlp import native
from streams.otlp.decode import choose_encoding, decode_messages
from streams.stages.label_policy import load_policy
from streams.stages.native_stages import run_native
from streams.stages.sampling import HeadRates, HeadSampler
from streams.stages.series_budget import DEFAULT_CLOCK_SKEW_S, SeriesBudgetStage

log = logging.getLogger("otelpipe.stages")


def merge_results(results: Sequence[DecodeResult]) -> DecodeResult:
    """One result from the results of running messages one at a time: the i-th result's rows are
    the i-th message's (``ORIGIN`` set to i), tables in the order they first appear."""
    merged = DecodeResult()
    parts: dict[str, list[ColumnBatch]] = {}
    for index, result in enumerate(results):
        for table, batch in result.batches.items():
            parts.setdefault(table, []).append(batch.shifted(index))  # a run of one: every ORIGIN is 0
        merged.dead_letters.extend(result.dead_letters)
        merged.decoded_messages += result.decoded_messages
        merged.alerts.extend(result.alerts)
    merged.batches = {table: concat(batches) for table, batches in parts.items()}
    return merged


class Stages:
    def __init__(self, encoding_for: Callable[[str], str], max_message_bytes: int, labels: LabelStage | None,
                 catalog: CatalogStage | None = None, budget: SeriesBudgetStage | None = None,
                 head: HeadSampler | None = None, clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
                 clock: Callable[[], float] = time.time, native_spans: bool = True, native_logs: bool = True):
        self.encoding_for = encoding_for
        self.clock_skew_s = clock_skew_s
        self.clock = clock
        self.head = head if head is not None else HeadSampler(HeadRates())
        self.max_message_bytes = max_message_bytes
        self.labels = labels
        self.catalog = catalog if catalog is not None else CatalogStage({})
        if budget is None and labels is not None:
            budget = SeriesBudgetStage.in_memory(labels.policy.budgets, clock_skew_s)
        self.budget = budget
        # the signals taken through the native core (streams.stages.native_stages) where it is built
        self.native_signals = {signal for signal, on in (("traces", native_spans), ("logs", native_logs))
                               if on and native.available()}

    def begin(self, signal: str) -> None:
        """Before a (re)try of a write of this signal: forget its stages' uncommitted state changes."""
        if signal == "metrics" and self.budget is not None:
            self.budget.begin()

    @classmethod
    def from_settings(cls, settings) -> "Stages":
        """Raises PolicyError (every problem listed) when the policy file is invalid."""
        choice = settings.worker.label_policy
        labels = None if choice == "off" else LabelStage(load_policy(None if choice == "default" else choice))
        catalog = CatalogStage(load_catalog(settings.worker.catalog_file or None))
        sampling = settings.sampling
        head = HeadSampler(HeadRates(sampling.head_rate, sampling.rates(), sampling.min_rate), sampling.keep_log_severity)
        return cls(settings.kafka.encoding_for, settings.worker.max_message_bytes, labels, catalog, head=head,
                   clock_skew_s=settings.worker.max_clock_skew_s, native_spans=settings.worker.native_spans,
                   native_logs=settings.worker.native_logs)

    def now_ns(self, messages: Sequence[RawMessage]) -> int:
        """The time of a run of messages: the newest Kafka timestamp among them, never later than
        this machine's clock. Windows follow it rather than what the records claim, and a replay of
        the same messages finds the same time (their Kafka timestamps are stored with them)."""
        wall_ms = int(self.clock() * 1000)
        stamps = [m.timestamp_ms for m in messages if m.timestamp_ms is not None and m.timestamp_ms > 0]
        return min(max(stamps), wall_ms) * 1_000_000 if stamps else wall_ms * 1_000_000

    def run(self, signal: str, messages: Sequence[RawMessage]) -> DecodeResult:
        """Never raises for what a message holds: decoding sets refused messages aside itself, and if
        a later stage fails on the run, each message is run alone, and those that still fail become
        dead letters (``internal``, naming the exception class). A message run again that way
        counts twice in ``top_k`` tallies (series budgets count distinct series, so they do not).

        Spans and logs in protobuf take the native core where it is built (``worker.native_spans``
        and ``worker.native_logs``): their rows come in a ``NativeBatch``, the same rows the Python
        path makes."""
        if not messages:
            return DecodeResult()
        if signal in self.native_signals:
            done = self._run_native(signal, messages)
            if done is not None:
                return done
        try:
            return self._run(signal, messages)
        except Exception as exc:
            log.warning("a stage failed on a run of %d %s messages (%s); running them one by one",
                        len(messages), signal, type(exc).__name__)
        return merge_results([self._run_alone(signal, msg) for msg in messages])

    def _run_alone(self, signal: str, message: RawMessage) -> DecodeResult:
        try:
            return self._run(signal, [message])
        except Exception as exc:  # the class only: the text may quote the message
            m.STAGE_CHANGES.labels("pipeline", "internal").inc()
            return DecodeResult(dead_letters=[DeadLetter(message, "internal", f"{type(exc).__name__} in the stages")])

    def _run_native(self, signal: str, messages: Sequence[RawMessage]) -> DecodeResult | None:
        """The run through the native core, or None for the Python path: a message in another
        encoding than protobuf, a policy whose decisions are not per value, or a failure (logged;
        the Python path then makes the same rows or names the message at fault)."""
        default = self.encoding_for(messages[0].topic)
        if any(choose_encoding(msg, default) != "otlp_proto" for msg in messages):
            return None
        latest_ns = self.now_ns(messages) + self.clock_skew_s * 1_000_000_000
        try:
            ran = run_native(signal, messages, self.max_message_bytes, self.head, self.labels, self.catalog, latest_ns)
        except Exception as exc:
            m.STAGE_CHANGES.labels("pipeline", "native_fallback").inc()
            log.warning("the native %s stages failed on a run of %d messages (%s); the Python path takes it",
                        signal, len(messages), type(exc).__name__)
            return None
        if ran is None:
            return None
        result, counts = ran
        for (stage, reason), n in counts.items():
            m.STAGE_CHANGES.labels(stage, reason).inc(n)
        return result

    def _run(self, signal: str, messages: Sequence[RawMessage]) -> DecodeResult:
        result = decode_messages(signal, messages, self.encoding_for(messages[0].topic), self.max_message_bytes)
        now_ns = self.now_ns(messages)
        skew_ns = self.clock_skew_s * 1_000_000_000
        if signal != "metrics":
            head = self.head  # each stage read once: a swap during this run applies to the next
            for table, batch in list(result.batches.items()):
                sampled, counts = head.apply(batch)
                for (stage, reason), n in counts.items():
                    m.STAGE_CHANGES.labels(stage, reason).inc(n)
                result.batches[table] = sampled
        labels, catalog, budget = self.labels, self.catalog, self.budget
        if labels is not None:
            naming = NamingStage(labels.policy.naming)
            violations: list[ColumnBatch] = []
            alerts: list[dict] = []
            for table, batch in list(result.batches.items()):
                cleaned, counts = labels.apply(batch, now_ns + skew_ns)
                if signal == "metrics":
                    cleaned, found, naming_counts = naming.apply(cleaned)
                    counts.update(naming_counts)
                    if found is not None:
                        violations.append(found)
                    if budget is not None:
                        cleaned, budget_counts, crossed = budget.apply(cleaned, now_ns)
                        counts.update(budget_counts)
                        alerts.extend(crossed)
                for (stage, reason), n in counts.items():
                    m.STAGE_CHANGES.labels(stage, reason).inc(n)
                if len(cleaned):
                    result.batches[table] = cleaned
                else:
                    del result.batches[table]
            if violations:
                result.batches[VIOLATIONS_TABLE] = ColumnBatch(
                    VIOLATIONS_TABLE, {c: [v for b in violations for v in b.columns[c]] for c in VIOLATION_COLUMNS})
            if alerts:
                names, columns = alert_table_columns(alerts)
                result.batches[ALERTS_TABLE] = ColumnBatch(ALERTS_TABLE, dict(zip(names, columns)))
                result.alerts.extend(alerts)
        if catalog.entries:
            for table, batch in list(result.batches.items()):
                if table not in (VIOLATIONS_TABLE, ALERTS_TABLE):
                    result.batches[table] = catalog.apply(batch)
        return result
