"""The ``otelpipe`` command line: one module per command group, wired here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from streams.cli.backfill import cmd_dlq, cmd_replay
from streams.cli.common import REPLAY_SIGNALS, parse_duration
from streams.cli.control import cmd_catalog, cmd_config, cmd_policy, cmd_sampling
from streams.cli.kafka import cmd_kafka
from streams.cli.questions import cmd_alerts, cmd_cardinality, cmd_query, cmd_services, cmd_slo, cmd_trace
from streams.cli.render import FORMATS
from streams.cli.worker import cmd_demo, cmd_migrate, cmd_produce, cmd_run
from streams.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otelpipe", description="OTLP on Kafka → ClickHouse, exact and crash-safe.")
    parser.add_argument("--config", help="TOML settings file (else $OTELPIPE_CONFIG; OTELPIPE_* variables override)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the worker")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema in place (idempotent; adopts "
                                       "a database the Collector's ClickHouse exporter made)")
    p.add_argument("--plan", action="store_true", help="print what migrate would do and change nothing")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("kafka", help="the local single-node Kafka broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--secure", action="store_true",
                   help="up: add a SASL_SSL listener (SCRAM, PLAIN) and a mutual-TLS listener, with certificates "
                        "made under kafka.local_data_dir; later restarts keep them")
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("query", help="read-only SQL against the configured ClickHouse")
    p.add_argument("sql")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="query parameter, used as {NAME:Type} in the SQL (never pasted into it)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("produce", help="send a synthetic OTLP workload, or an OTLP file (--file)")
    p.add_argument("--messages", type=int, default=200, help="steps to send (a spans, a logs, sometimes a metrics "
                   "message each); 0 with --duration sends until the duration ends")
    p.add_argument("--traces-per-message", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="makes the workload repeatable (default: random, printed)")
    p.add_argument("--encoding", choices=["otlp_proto", "otlp_json"], default="otlp_proto")
    p.add_argument("--extra-attributes", type=int, default=0, help="extra attributes per span")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--file", help="send this OTLP file instead: JSON lines (Collector file exporter) or protobuf")
    p.add_argument("--signal", choices=["traces", "logs", "metrics"], help="the signal of a protobuf --file")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("trace", help="one trace as a waterfall, with its logs")
    p.add_argument("trace_id")
    p.add_argument("--width", type=int, default=40, help="width of the time bars")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("services", help="rate, error ratio and latency per service (from the rollup)")
    p.add_argument("--since", type=parse_duration, default=3600, metavar="DURATION", help="e.g. 15m, 1h, 7d")
    p.add_argument("--by-operation", action="store_true", help="one row per service and span name")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("slo", help="SLIs, error budgets and burn rates; exits 1 when a service is burning")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_slo)

    p = sub.add_parser("cardinality", help="metrics with the most series, and the labels driving them")
    p.add_argument("--since", type=parse_duration, default=3600, metavar="DURATION")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_cardinality)

    p = sub.add_parser("alerts", help="latest alert records")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("replay", help="read a time range of the source topics again; write what is missing")
    p.add_argument("--signal", choices=sorted(REPLAY_SIGNALS), default="all")
    p.add_argument("--from", dest="from_", required=True, metavar="TIME",
                   help="start: 15m, 2h, 7d (ago), Unix ms, or ISO 8601 (UTC unless a zone is given)")
    p.add_argument("--to", default="now", metavar="TIME", help="end, inclusive (default: now)")
    p.add_argument("--partitions", help="comma-separated partitions (default: all)")
    p.add_argument("--rate", type=float, default=0.0, help="at most this many messages per second")
    p.add_argument("--target-db", help="write into this database instead (created and migrated if needed)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dlq", help="dead letters: show them with their reasons, or re-feed them")
    p.add_argument("action", choices=["show", "replay"])
    p.add_argument("--signal", choices=sorted(REPLAY_SIGNALS), default="all")
    p.add_argument("--limit", type=int, default=50, help="show: the most recent N per topic")
    p.add_argument("--format", choices=sorted(FORMATS), default="table")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("catalog", help="validate a service catalog file, or push it to every running worker")
    p.add_argument("action", choices=["check", "push"])
    p.add_argument("file")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("sampling", help="head sampling rates: show them, or set them in every running worker")
    p.add_argument("action", choices=["show", "set", "clear", "check", "schema"],
                   help="check: validate a tail policy file; schema: print the JSON Schema of that file")
    p.add_argument("rate", type=float, nargs="?", default=None, help="probability in (0, 1] (set)")
    p.add_argument("--service", default="", help="one service's rate (default: the rate of every other service)")
    p.add_argument("--policies", default="", help="check: a tail sampling policy file (default: sampling.tail_policy_file)")
    p.add_argument("--format", choices=list(FORMATS), default="table")
    p.set_defaults(func=cmd_sampling)

    p = sub.add_parser("policy", help="validate a label policy file, push it to every running worker, or print "
                                      "the JSON Schema of the file")
    p.add_argument("action", choices=["check", "push", "schema"])
    p.add_argument("file", nargs="?", default="")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("config", help="show every setting, its value and meaning (secrets masked)")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the configuration file instead")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="broker + worker on chDB + workload, then answers from ClickHouse")
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep-running", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:
        from streams.stages.catalog import CatalogError
        from streams.stages.label_policy import PolicyError

        if not isinstance(exc, (PolicyError, CatalogError)):
            raise
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
