"""What the exporter's schema choices cost at insert, in chDB: otel_logs' text() indexes against the
bloom/tokenbf fallback, and otel_traces' ZSTD(3) codecs against ZSTD(1).

Each pair of tables is created in one embedded store as migrate renders it (the second variant of
the codec pair with ZSTD(1) put in), then the same decoded batches are inserted into both,
alternating, in rounds. Printed: the CPU seconds per million rows of each (the insert as the worker
makes it: clickhouse-connect's serialisation and the engine), the median ratio of the rounds, and
the compressed bytes each table holds after merging.
Run: .venv/bin/python bench/schema_cost.py [--messages 600] [--per-insert 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    import clickhouse_connect

    from sinks.migrations import targets
    from sinks.settings import ClickHouseSettings
    from streams.cli.render import format_table
    from streams.otlp.batch import RawMessage
    from streams.otlp.decode import decode_messages
    from streams.tools.workload import Workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600, help="messages of 20 traces each (spans, logs)")
    parser.add_argument("--per-insert", type=int, default=50, help="messages per insert (a worker batch)")
    parser.add_argument("--rounds", type=int, default=5, help="times the batches are inserted (median ratio)")
    args = parser.parse_args()

    workload = Workload(seed=11)
    requests = [workload.trace_requests(20) for _ in range(args.messages)]
    path = tempfile.mkdtemp(prefix="otelpipe-bench-schema-")
    client = clickhouse_connect.get_client(interface="chdb", path=path)

    def table_sql(database: str, table: str, text_index: bool, zstd: int = 3) -> str:
        settings = ClickHouseSettings(dsn=f"chdb://{path}", database=database)
        sql = next(t for t in targets(settings, text_index) if t.name == table).sql
        return sql.replace("ZSTD(3)", f"ZSTD({zstd})")

    def compare(signal: str, table: str, variants: dict[str, str]) -> None:
        payloads = [r[0 if signal == "traces" else 1].SerializeToString() for r in requests]
        messages = [RawMessage("bench", 0, i, p) for i, p in enumerate(payloads)]
        batches = [decode_messages(signal, messages[i:i + args.per_insert]).batches[table]
                   for i in range(0, len(messages), args.per_insert)]
        spent = {name: 0.0 for name in variants}
        for name, sql in variants.items():
            client.command(f"CREATE DATABASE IF NOT EXISTS {sql.split()[5].split('.')[0]}")
            client.command(sql)
        target = {name: sql.split()[5] for name, sql in variants.items()}
        for name in variants:  # warm up (first-insert costs: part directories, index files)
            client.insert(target[name], batches[0].insert_columns(), column_names=batches[0].column_names,
                          column_oriented=True)
        ratios = []
        first, second = list(variants)
        for _ in range(args.rounds):
            this_round = {name: 0.0 for name in variants}
            for batch in batches:
                for name in variants:
                    started = cpu_s()
                    client.insert(target[name], batch.insert_columns(), column_names=batch.column_names,
                                  column_oriented=True)
                    this_round[name] += cpu_s() - started
            for name in variants:
                spent[name] += this_round[name]
            ratios.append(this_round[first] / this_round[second])
        rows_total = sum(len(b) for b in batches) * args.rounds
        rows = []
        for name in variants:
            client.command(f"OPTIMIZE TABLE {target[name]} FINAL")
            database, name_only = target[name].split(".")
            size = client.query("SELECT sum(data_compressed_bytes) FROM system.columns WHERE database = {db:String} "
                                "AND table = {t:String}", parameters={"db": database, "t": name_only}).result_rows[0][0]
            rows.append([name, f"{rows_total:,}", f"{spent[name] / rows_total * 1e6:.2f}", f"{size / 1e6:.1f}"])
        print(f"{table}: {first} against {second}")
        print(format_table(["variant", "rows", "CPU s per million rows", "MB compressed"], rows))
        ratios.sort()
        print(f"{first} / {second} insert CPU: {ratios[len(ratios) // 2]:.2f}x median of {len(ratios)} rounds "
              f"({ratios[0]:.2f}-{ratios[-1]:.2f})\n")

    compare("logs", "otel_logs", {"text()": table_sql("text_idx", "otel_logs", True),
                                  "bloom/tokenbf": table_sql("bloom_idx", "otel_logs", False)})
    compare("traces", "otel_traces", {"ZSTD(3)": table_sql("zstd3", "otel_traces", True),
                                      "ZSTD(1)": table_sql("zstd1", "otel_traces", True, zstd=1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
