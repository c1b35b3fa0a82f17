import pytest

from streams.otlp.batch import ColumnBatch
from streams.stages.catalog import (CatalogEntry, CatalogError, CatalogStage, catalog_json_schema, entry_from_record,
                                    load_catalog)
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


def test_the_catalog_parses_to_the_same_values(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG + 'latency_target = 0.95\n[[services]]\nname = "search"\ntier = 2\nlatency_ms = 1000\n')
    assert load_catalog(str(path)) == {
        "checkout": CatalogEntry("checkout", "payments", "1", "alice@example.com", 0.9995, 250),
        "cart": CatalogEntry("cart", "shop", latency_target=0.95),
        "search": CatalogEntry("search", tier="2", latency_ms=1000),  # tier = 2: the string "2"
    }
    assert load_catalog(None) == {} and load_catalog("") == {}


def test_every_problem_of_every_service_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('owners = 1\n'
                    '[[services]]\nteam = ["x"]\nlatency_target = 1\n'  # no name: its other problems are listed too
                    '[[services]]\nname = "a"\n'
                    '[[services]]\nname = "a"\nowner = 1.5\n')
    with pytest.raises(CatalogError) as err:
        load_catalog(str(path))
    assert sorted(err.value.problems) == [
        "owners: unknown section (known: services)",
        "services[0].latency_target: must be between 0 and 1 (exclusive), got 1",
        "services[0].name: required",
        "services[0].team: must be a string",
        "services[2].name: 'a' appears twice",
        "services[2].owner: must be a string",
    ]
    path.write_text('services = "checkout"\n')
    with pytest.raises(CatalogError) as err:
        load_catalog(str(path))
    assert err.value.problems == ["services: must be a list of tables ([[services]])"]


def test_topic_record_problems_name_the_record():
    with pytest.raises(CatalogError) as err:
        entry_from_record("checkout", b'team = 1.5\nlatency_ms = 7\ncolour = "red"')
    assert sorted(err.value.problems) == [
        "catalog record 'checkout'.colour: unknown setting",
        "catalog record 'checkout'.latency_ms: must be one of 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000",
        "catalog record 'checkout'.team: must be a string",
    ]


def test_json_schema():
    schema = catalog_json_schema()
    assert isinstance(schema, dict) and set(schema["properties"]) == {"services"}
    service = schema["$defs"]["ServiceSection"]
    assert service["required"] == ["name"] and service["additionalProperties"] is False
    assert {"team", "tier", "owner", "availability", "latency_ms", "latency_target"} <= set(service["properties"])
