"""Every query in docs/queries.md runs, on a database holding a realistic workload."""

import re

from sinks.clickhouse import ClickHouseSink
from streams.otlp.batch import RawMessage
from streams.otlp.encode import encode_request
from streams.agents.signal_writer import SignalWriter
from streams.tools.workload import Workload
from tests.conftest import ROOT

PARAMS = {"service": "payment", "id": None, "user": "user-1", "metric": "http.server.request.count"}


def _load(chdb_client, ch_settings):
    workload = Workload(seed=5, start_ns=__import__("time").time_ns() - 600 * 10**9)
    sink = ClickHouseSink(chdb_client, ch_settings, "cookbook")
    writers = {s: SignalWriter(s, sink, lambda t: "otlp_proto", 1 << 24) for s in ("traces", "logs", "metrics")}
    offsets = {s: 0 for s in writers}
    for signal, _, request in workload.requests(20, 3):
        writers[signal].write([RawMessage(signal, 0, offsets[signal], encode_request(request, "otlp_proto"))])
        offsets[signal] += 1


def test_every_cookbook_query_runs(chdb_client, ch_settings):
    _load(chdb_client, ch_settings)
    text = (ROOT / "docs" / "queries.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    assert len(queries) >= 10
    trace_id = chdb_client.query(
        f"SELECT TraceId FROM {ch_settings.database}.otel_traces WHERE StatusCode = 'Error' LIMIT 1").result_rows[0][0]
    user = chdb_client.query(
        f"SELECT SpanAttributes['user.id'] FROM {ch_settings.database}.otel_traces "
        "WHERE SpanAttributes['user.id'] != '' LIMIT 1").result_rows[0][0]
    params = {**PARAMS, "id": trace_id, "user": user}
    non_empty = 0
    for sql in queries:
        sql = sql.replace("otel.", f"{ch_settings.database}.")
        used = {name: params[name] for name in re.findall(r"\{(\w+):", sql)}
        result = chdb_client.query(sql, parameters=used)
        non_empty += bool(result.result_rows)
    # Most questions have an answer on this small workload (not: endpoints with >= 100 calls, a word
    # no log contains, alerts that never fired, the tail sampler's summary: it is loaded without one).
    assert non_empty >= len(queries) - 4
