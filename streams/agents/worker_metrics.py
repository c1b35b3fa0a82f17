"""Prometheus metrics of the worker, served at ``/metrics`` on the worker's web port.

Names follow the conventions otelpipe asks of others: ``otelpipe_`` prefix, base units
(seconds, bytes), ``_total`` for counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_CONSUMED = Counter(
    "otelpipe_messages_consumed_total", "Kafka messages taken from source topics.", ["signal"], registry=REGISTRY
)
MESSAGES_ROUTED = Counter(
    "otelpipe_messages_routed_total", "Parts of source messages sent to a routed topic (by key).", ["signal"],
    registry=REGISTRY,
)
MESSAGES_DECODED = Counter(
    "otelpipe_messages_decoded_total", "Kafka messages decoded into rows.", ["signal"], registry=REGISTRY
)
ROWS_WRITTEN = Counter(
    "otelpipe_rows_written_total",
    "Rows sent to ClickHouse (a deduplicated retry counts again).",
    ["table"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "otelpipe_dead_letters_total", "Messages sent to a dead-letter topic, by reason.", ["signal", "reason"],
    registry=REGISTRY,
)
WRITE_RETRIES = Counter(
    "otelpipe_write_retries_total", "Failed ClickHouse writes that will be retried.", ["signal"], registry=REGISTRY
)
INSERT_SECONDS = Histogram(
    "otelpipe_insert_duration_seconds",
    "Time of one ClickHouse insert.",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
BATCH_MESSAGES = Histogram(
    "otelpipe_batch_messages",
    "Kafka messages per processed batch.",
    ["signal"],
    buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000, 5000),
    registry=REGISTRY,
)
HELD_MESSAGES = Gauge(
    "otelpipe_held_messages",
    "Messages held back until a recorded offset range is complete again (after a restart).",
    ["signal"],
    registry=REGISTRY,
)
WRITER_BLOCKED = Gauge(
    "otelpipe_writer_blocked",
    "1 while a signal's writes are failing and being retried (consumption paused).",
    ["signal"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "otelpipe_consumer_lag_messages",
    "Messages in a partition not yet committed by this worker (high watermark minus committed offset).",
    ["topic", "partition"],
    registry=REGISTRY,
)
ALERTS_PUBLISHED = Counter(
    "otelpipe_alerts_published_total", "Alert records written, by kind and state.", ["kind", "state"],
    registry=REGISTRY,
)
SLO_EVALUATIONS = Counter(
    "otelpipe_slo_evaluations_total", "SLO burn-rate evaluations, by outcome.", ["outcome"], registry=REGISTRY
)
STAGE_CHANGES = Counter(
    "otelpipe_stage_changes_total",
    "Values and rows changed or dropped by a stage, by reason (redaction, templating, cardinality, metrics).",
    ["stage", "reason"],
    registry=REGISTRY,
)
POLICY_RELOADS = Counter(
    "otelpipe_policy_reloads_total", "Label policies received while running, by source and outcome.",
    ["source", "outcome"], registry=REGISTRY,
)
STALE_RANGES = Counter(
    "otelpipe_stale_ranges_total",
    "Recorded offset ranges ignored because other messages now sit at those offsets (topic recreated).",
    ["signal"], registry=REGISTRY,
)
CATALOG_UPDATES = Counter(
    "otelpipe_catalog_updates_total", "Service catalog records received while running, by outcome.", ["outcome"],
    registry=REGISTRY,
)
SAMPLING_UPDATES = Counter(
    "otelpipe_sampling_updates_total", "Head sampling rates received on the control topic, by outcome.", ["outcome"],
    registry=REGISTRY,
)
BUFFERED_TRACES = Gauge(
    "otelpipe_tail_buffered_traces", "Traces buffered by tail sampling, waiting for their decision.", registry=REGISTRY
)
BUFFERED_SPANS = Gauge(
    "otelpipe_tail_buffered_spans", "Spans buffered by tail sampling, waiting for their trace's decision.",
    registry=REGISTRY,
)
TAIL_DECISIONS = Counter(
    "otelpipe_tail_decisions_total",
    "Tail sampling decisions: why the trace was decided then (wait, overflow_spans, overflow_traces, decided "
    "for late parts, untraced logs) and what was decided.",
    ["reason", "decision"], registry=REGISTRY,
)
FOLLOWER_UP = Gauge(
    "otelpipe_follower_up", "1 while the follower of a compacted control topic is reading it, 0 while it reconnects.",
    ["topic"], registry=REGISTRY,
)
FOLLOWER_RESTARTS = Counter(
    "otelpipe_follower_restarts_total", "Times a control-topic follower failed and reconnected.", ["topic"],
    registry=REGISTRY,
)
CONTROL_REFUSED = Counter(
    "otelpipe_control_refused_total",
    "Control records not applied, by topic and reason: unsigned, bad_signature, stale (not newer than the "
    "record already applied for its key), too_large, weaker_policy (redacts less than the worker's policy).",
    ["topic", "reason"], registry=REGISTRY,
)
DEAD_LETTERS_TRUNCATED = Counter(
    "otelpipe_dead_letters_truncated_total",
    "Dead letters stored cut to what their topic accepts (header otelpipe.dlq.truncated_from has the size).",
    ["signal"], registry=REGISTRY,
)
REFUSED_MESSAGES = Counter(
    "otelpipe_refused_messages_total",
    "Messages whose rows ClickHouse refused (found by cutting the insert in halves), dead-lettered",
    ["table"], registry=REGISTRY,
)
REVOKED_SEGMENTS = Counter(
    "otelpipe_revoked_segments_total",
    "Segments whose partition a rebalance took away while they were being written: their rows go in with "
    "the rest of their insert, their messages are left unacked to the next owner (which finds the rows stored).",
    ["signal"], registry=REGISTRY,
)
HELD_INSERTS = Counter(
    "otelpipe_held_inserts_total",
    "Recorded inserts of several ranges met again with some ranges elsewhere, held for a grace period "
    "(their first writer may still be inserting).",
    ["signal"], registry=REGISTRY,
)
PARTIAL_INSERTS = Counter(
    "otelpipe_partial_inserts_total",
    "Ranges of a recorded insert whose other ranges went to another worker, written by inserting only the "
    "rows the tables lack (by RecordId).",
    ["signal"], registry=REGISTRY,
)
LEDGER_CONFLICTS = Counter(
    "otelpipe_ledger_conflicts_total",
    "Writes planned again because another writer had recorded other cuts of the same messages first.",
    ["signal"], registry=REGISTRY,
)
ROUTED_PIECES = Counter(
    "otelpipe_routed_pieces_total",
    "Pieces sent in place of routed parts their topic refused as too large (max.message.bytes).",
    ["signal"], registry=REGISTRY,
)
