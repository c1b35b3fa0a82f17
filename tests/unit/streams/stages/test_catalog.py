import pytest

from streams.otlp.batch import ColumnBatch
from streams.stages.catalog import CatalogError, CatalogStage, entry_from_record, load_catalog
from streams.config import SloSettings
from streams.stages.slo import with_catalog_objectives

CATALOG = """
[[services]]
name = "checkout"
team = "payments"
tier = "1"
owner = "alice@example.com"
availability = 0.9995
latency_ms = 250
[[services]]
name = "cart"
team = "shop"
"""


def test_catalog_columns_and_slo_targets(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    entries = load_catalog(str(path))
    batch = ColumnBatch("otel_logs", {"ServiceName": ["checkout", "unknown", "cart"], "Body": ["a", "b", "c"]})
    out = CatalogStage(entries).apply(batch)
    assert out.columns["ServiceTeam"] == ["payments", "", "shop"]
    assert out.columns["ServiceTier"] == ["1", "", ""] and out.columns["ServiceOwner"][0] == "alice@example.com"
    slo = with_catalog_objectives(SloSettings(), entries)
    assert slo.objective_for("checkout").availability == 0.9995 and slo.objective_for("checkout").latency_ms == 250
    assert slo.objective_for("cart").availability == 0.999  # no targets in the catalog: the defaults


def test_every_catalog_problem_is_listed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[services]]\nteam = "x"\n[[services]]\nname = "a"\navailability = 2\nlatency_ms = 7\nfoo = 1\n')
    with pytest.raises(CatalogError) as err:
        load_catalog(str(path))
    text = "\n".join(err.value.problems)
    assert "services[0].name: required" in text and "services[1].availability: must be between 0 and 1" in text
    assert "services[1].latency_ms: must be one of" in text and "services[1].foo: unknown setting" in text


def test_topic_records():
    entry = entry_from_record("checkout", b'team = "payments"\navailability = 0.99')
    assert (entry.name, entry.team, entry.availability) == ("checkout", "payments", 0.99)
    assert entry_from_record("checkout", None) is None  # a tombstone removes the service
    with pytest.raises(CatalogError):
        entry_from_record("x", b"team = ")
