-- Service catalog fields (streams/catalog.py) attached to every span, log and metric point of a
-- service: its team, tier and owner. Empty for services the catalog does not list.

ALTER TABLE ${database}.otel_traces ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_logs ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_metrics_gauge ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_metrics_sum ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_metrics_histogram ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_metrics_exponential_histogram ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';

ALTER TABLE ${database}.otel_metrics_summary ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceTeam LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceTier LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS ServiceOwner LowCardinality(String) DEFAULT '';
