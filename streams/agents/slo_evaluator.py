"""SLO evaluation on the group leader: burn rates from the rollup, alert transitions into
``otelpipe_alerts`` first, then onto the alerts topic (a record only on a change)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from streams.agents import worker_metrics as m
from streams.agents.runtime import Runtime
from streams.stages.alerts import ALERTS_TABLE, AlertTracker, encode_avro, from_burn, latest_states_query
from streams.stages.alerts import table_columns as alert_table_columns
from streams.stages.slo import counts_query, evaluate_rows, query_parameters, with_catalog_objectives

log = logging.getLogger("otelpipe.worker")


class SloEvaluator:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.tracker = AlertTracker()
        self.seeded = False  # seeded from otelpipe_alerts on start: a restart announces nothing again

    def evaluate_now(self) -> list[dict]:
        """On the ClickHouse thread: burn rates now, alert transitions, rows into otelpipe_alerts."""
        sink = self.rt.open_sink()
        settings = self.rt.settings
        db = settings.clickhouse.database
        if not self.seeded:
            result = sink.query(latest_states_query(db))
            self.tracker.seed(dict(zip(result.column_names, row)) for row in result.result_rows)
            self.seeded = True
        now = datetime.now(timezone.utc)
        slo = with_catalog_objectives(settings.slo, self.rt.stages.catalog.entries)
        result = sink.query(counts_query(db), query_parameters(now, slo))
        verdicts = evaluate_rows(list(result.column_names), [list(r) for r in result.result_rows], slo)
        firing = [from_burn(alert) for verdict in verdicts for alert in verdict.alerts]
        records = self.tracker.transitions(firing, int(now.timestamp() * 1000), kinds={"slo_burn"})
        if records:
            names, columns = alert_table_columns(records)
            sink.client.insert(f"{db}.{ALERTS_TABLE}", columns, column_names=names, column_oriented=True)
        return records

    async def tick(self) -> None:
        try:
            records = await self.rt.on_clickhouse_thread(self.evaluate_now)
        except Exception as exc:  # an evaluation that fails is retried at the next tick
            m.SLO_EVALUATIONS.labels("failed").inc()
            log.warning("SLO evaluation failed: %s", exc)
            return
        m.SLO_EVALUATIONS.labels("ok").inc()
        for rec in records:
            fut = await self.rt.alerts_topic.send(key=f"{rec['Service']}/{rec['Name']}".encode(),
                                                  value=encode_avro(rec))
            await fut
            m.ALERTS_PUBLISHED.labels(rec["Kind"], rec["State"]).inc()
            log.warning("alert %s: %s %s %s (value %.2f, threshold %.2f)", rec["State"], rec["Kind"],
                        rec["Service"], rec["Name"], rec["Value"], rec["Threshold"])
