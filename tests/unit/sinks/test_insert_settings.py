"""What every insert carries, and nanosecond times fitted to the column a table has."""

from sinks.clickhouse import insert_settings, nanosecond_divisor, scaled
from sinks.settings import ClickHouseSettings


def test_every_insert_has_its_token_and_the_views_blocks_deduplicated():
    settings = insert_settings(ClickHouseSettings(), "t1")
    assert settings == {"insert_deduplication_token": "t1", "insert_deduplicate": 1,
                        "deduplicate_blocks_in_dependent_materialized_views": 1}


def test_sharded_inserts_are_synchronous():
    sharded = ClickHouseSettings(dsn="http://ch:8123", cluster="c", sharded=True)
    assert insert_settings(sharded, "t")["distributed_foreground_insert"] == 1
    assert "distributed_foreground_insert" not in insert_settings(ClickHouseSettings(dsn="http://ch:8123", cluster="c"), "t")


def test_divisor_by_column_type():
    assert nanosecond_divisor("DateTime64(9)") == 1
    assert nanosecond_divisor("Array(DateTime64(9))") == 1
    assert nanosecond_divisor("DateTime") == 10**9
    assert nanosecond_divisor("DateTime('UTC')") == 10**9
    assert nanosecond_divisor("Array(DateTime)") == 10**9
    assert nanosecond_divisor("DateTime64(3)") == 10**6
    assert nanosecond_divisor("DateTime64(6, 'UTC')") == 10**3
    assert nanosecond_divisor("String") == nanosecond_divisor("UInt64") == 1


def test_scaled_values_scalars_lists_and_empty_tuples():
    assert scaled([1_500_000_000_999_999_999, 0], 10**9) == [1_500_000_000, 0]
    assert scaled([[2_000_000_000, 3_999_999_999], (), [], (5_000_000_000,)], 10**9) == [[2, 3], [], [], [5]]
    values = [1, 2]
    assert scaled(values, 1) is values
