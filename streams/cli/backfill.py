"""Reading topics again: replay (backfill by time range) and dlq (show, re-feed dead letters)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from streams.cli.common import REPLAY_SIGNALS, open_sink_or_explain, settings_from
from streams.cli.render import FORMATS, format_table
from streams.config import Settings, with_changes


def cmd_replay(args: argparse.Namespace) -> int:
    from sinks.migrations import migrate
    from streams.replay import ReplaySummary, parse_time, replay

    settings = settings_from(args)
    if args.target_db:
        settings = with_changes(
            settings, clickhouse=with_changes(settings.clickhouse, database=args.target_db))
    try:
        from_ms, to_ms = parse_time(args.from_), parse_time(args.to)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if from_ms > to_ms:
        print("--from is after --to", file=sys.stderr)
        return 2
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    sink = open_sink_or_explain(settings)
    migrate(sink.client, settings.clickhouse)
    summary = ReplaySummary()
    try:
        asyncio.run(replay(settings, sink, REPLAY_SIGNALS[args.signal], from_ms, to_ms, partitions,
                           rate=args.rate, summary=summary, range_text=(args.from_, args.to)))
    except KeyboardInterrupt:
        print("\nstopped: run the same command again to resume where it stopped", file=sys.stderr)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        sink.close()
    print(format_table(["replay", "count"], summary.rows()))
    return 0 if summary.finished else 130


def _dlq_topics(settings: Settings, signal: str) -> list[str]:
    from streams.tools.producer import topic_for

    sources = [topic_for(settings, s) for s in REPLAY_SIGNALS[signal]]
    routed = [settings.routed_topic(t) for t in sources if settings.routed_topic(t) in settings.routed_topics()]
    return [settings.dlq_topic(t) for t in sources + routed]


def cmd_dlq(args: argparse.Namespace) -> int:
    from streams.tools.dead_letters import read_dead_letters, refeed_dead_letters

    settings = settings_from(args)
    bootstrap = settings.kafka
    if args.action == "show":
        rows = []
        for topic in _dlq_topics(settings, args.signal):
            for letter in asyncio.run(read_dead_letters(bootstrap, topic, args.limit)):
                env = letter.routed_part(settings.kafka.routed_suffix)
                source = (f"{env['source_topic']}[{env['source_partition']}]@{env['source_offset']}" if env
                          else letter.source())
                rows.append([topic, f"{letter.partition}@{letter.offset}", letter.reason, source,
                             len(letter.value), letter.header("otelpipe.dlq.detail")[:80]])
        print(FORMATS[args.format](["dlq", "at", "reason", "source", "bytes", "detail"], rows))
        return 0
    total = {}
    for topic in _dlq_topics(settings, args.signal):
        refed = refeed_dead_letters(bootstrap, topic, f"{settings.worker.app_id}.dlq-replay",
                                    settings.kafka.routed_suffix, settings.record_max_bytes())
        for source, n in asyncio.run(refed).items():
            total[source] = total.get(source, 0) + n
    print(format_table(["re-fed to", "messages"], sorted(total.items())))
    return 0
