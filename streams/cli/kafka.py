"""The local single-node Kafka broker: kafka up, down, status."""

from __future__ import annotations

import argparse

from streams.cli.common import all_topics, local_broker, settings_from
from streams.cli.render import format_table


def cmd_kafka(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    broker = local_broker(settings)
    if args.action == "up":
        print("kafka:", broker.up(all_topics(settings), secure=True if args.secure else None))
    elif args.action == "down":
        print("kafka:", broker.down())
    else:
        info = broker.status()
        print(format_table(["key", "value"], [(k, v) for k, v in info.items()], max_width=100))
        return 0 if info["running"] else 3
    return 0
