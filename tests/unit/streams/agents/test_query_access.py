"""Who may use /query: the Host allow-list, loopback peers, and the store a configuration names."""

from __future__ import annotations

import pytest

from streams.agents.query_access import (
    access_refusal,
    allowed_hosts,
    host_allowed,
    is_loopback,
    reachable_host,
    store_header,
    store_identity,
    store_refusal,
)
from streams.config import ConfigError, load_settings


def settings(**env: str):
    return load_settings(env={f"OTELPIPE_{k.upper()}": v for k, v in env.items()})


def test_the_loopback_names_and_the_bound_host_are_allowed_bare_or_with_the_port():
    allowed = allowed_hosts(settings(worker_web_port="7000", worker_web_host="10.1.2.3"))
    for host in ("localhost", "localhost:7000", "127.0.0.1", "127.0.0.1:7000", "[::1]", "[::1]:7000",
                 "10.1.2.3", "10.1.2.3:7000", "LOCALHOST:7000"):
        assert host_allowed(host, allowed), host
    for host in ("localhost:7001", "evil.example", "evil.example:7000", "127.0.0.1.nip.io:7000", "", None,
                 "0.0.0.0:7000", "127.0.0.2:7000", "[::1]:7000x", "localhost:7000@evil.example"):
        assert not host_allowed(host, allowed), host


def test_the_any_address_is_not_a_name_and_extra_names_come_from_query_hosts():
    allowed = allowed_hosts(settings(worker_web_host="0.0.0.0", worker_web_port="6066",
                                     worker_query_hosts="otelpipe, Pipe.internal:8080, [fd00::2]"))
    assert not host_allowed("0.0.0.0:6066", allowed)
    assert host_allowed("otelpipe", allowed) and host_allowed("otelpipe:6066", allowed)
    assert host_allowed("pipe.internal:8080", allowed) and not host_allowed("pipe.internal:6066", allowed)
    assert not host_allowed("pipe.internal", allowed)  # an entry with a port allows only that port
    assert host_allowed("[fd00::2]:6066", allowed)
    assert not host_allowed("[::]:6066", allowed_hosts(settings(worker_web_host="::")))
    assert host_allowed("[fd00::1]:6066", allowed_hosts(settings(worker_web_host="fd00::1")))


def test_query_hosts_must_be_host_names():
    with pytest.raises(ConfigError) as err:
        settings(worker_query_hosts="http://evil.example,ok.example,a b,*")
    problems = "\n".join(err.value.problems)
    assert "worker.query_hosts[0]: 'http://evil.example' is not a host name" in problems
    assert "worker.query_hosts[2]" in problems and "worker.query_hosts[3]" in problems
    assert "query_hosts[1]" not in problems
    assert settings(worker_query_hosts='["a.example", "b.example:1"]').worker.query_hosts == ("a.example", "b.example:1")
    assert settings().worker.query_hosts == () and settings().worker.query_remote is False


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1", "[::1]"])
def test_loopback_peers(peer):
    assert is_loopback(peer)


@pytest.mark.parametrize("peer", ["192.0.2.2", "10.0.0.1", "fd00::2", "::ffff:192.0.2.2", "0.0.0.0", "", None,
                                  "localhost", "garbage"])
def test_other_peers(peer):
    assert not is_loopback(peer)


def test_access_refusal_checks_the_host_first_then_the_peer():
    allowed = allowed_hosts(settings(worker_web_port="6066"))
    status, message = access_refusal("evil.example:6066", "127.0.0.1", allowed, remote=False)
    assert status == 421 and "worker.query_hosts" in message and "evil.example" in message
    status, message = access_refusal("127.0.0.1:6066", "192.0.2.2", allowed, remote=False)
    assert status == 403 and "worker.query_remote" in message and "192.0.2.2" in message
    assert access_refusal("127.0.0.1:6066", "192.0.2.2", allowed, remote=True) is None
    assert access_refusal("localhost:6066", "::1", allowed, remote=False) is None
    assert access_refusal(None, "127.0.0.1", allowed, remote=True)[0] == 421


def test_the_embedded_store_is_named_by_its_resolved_path_and_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    relative = store_identity(settings(clickhouse_dsn="chdb://data/../data/chdb"))
    assert relative == f"chdb:{tmp_path.resolve()}/data/chdb (database otel)"
    assert store_identity(settings(clickhouse_dsn=f"chdb://{tmp_path}/data/chdb")) == relative
    assert store_identity(settings(clickhouse_dsn="chdb://data/chdb", clickhouse_database="other")) != relative
    assert store_identity(settings(clickhouse_dsn="chdb://elsewhere")) != relative


def test_a_server_is_named_without_user_or_password():
    dsn = "https://reader:s3cr%40t@CH.example.com:9443/raw?secure=1"
    identity = store_identity(settings(clickhouse_dsn=dsn))
    assert identity == "https://ch.example.com:9443/otel"
    with_password = settings(clickhouse_dsn="http://ch:8123", clickhouse_password="hunter2")
    assert store_identity(with_password) == "http://ch:8123/otel"
    for secret in ("reader", "s3cr", "hunter2", "@"):
        assert secret not in identity and secret not in store_identity(with_password)
    assert store_identity(settings(clickhouse_dsn="http://u:p@ch")) == "http://ch:8123/otel"
    assert store_identity(settings(clickhouse_dsn="https://ch")) == "https://ch:8443/otel"
    assert store_identity(settings(clickhouse_dsn="http://[fd00::5]:8123/x")) == "http://[fd00::5]:8123/otel"


def test_store_refusal_compares_the_named_store_with_the_served_one():
    served = "chdb:/srv/a b/é (database otel)"
    assert store_refusal(store_header(served), served) is None
    assert store_refusal(None, served) is None and store_refusal("", served) is None
    status, message = store_refusal(store_header("chdb:/srv/other (database otel)"), served)
    assert status == 409 and "chdb:/srv/other (database otel)" in message and served in message
    store_header(served).encode("latin-1")  # a header value HTTP can carry


def test_a_client_reaches_a_worker_bound_on_the_any_address_through_loopback():
    assert reachable_host(settings(worker_web_host="0.0.0.0")) == "127.0.0.1"
    assert reachable_host(settings(worker_web_host="::")) == "[::1]"
    assert reachable_host(settings(worker_web_host="127.0.0.1")) == "127.0.0.1"
    assert reachable_host(settings(worker_web_host="fd00::1")) == "[fd00::1]"
