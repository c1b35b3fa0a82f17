"""ClickHouse over TLS: the settings become clickhouse-connect's options (verified here on the
rendered options; no ClickHouse server runs on these machines)."""

import pytest

from sinks.clickhouse import server_client_options
from sinks.settings import ClickHouseSettings


def test_private_ca_client_certificate_and_verification(tmp_path):
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    s = ClickHouseSettings(dsn="https://otel@ch.example:8443", ca_file=str(tmp_path / "ca.pem"),
                           client_cert_file=str(tmp_path / "c.pem"), client_key_file=str(tmp_path / "c.key"))
    options = server_client_options(s)
    assert options["ca_cert"] == str(tmp_path / "ca.pem")
    assert options["client_cert"] == str(tmp_path / "c.pem") and options["client_cert_key"] == str(tmp_path / "c.key")
    assert "verify" not in options  # verified by default
    assert server_client_options(ClickHouseSettings(dsn="https://ch:8443", verify=False))["verify"] is False


@pytest.mark.parametrize("kwargs, problem", [
    ({"dsn": "http://ch:8123", "ca_file": "/etc/hosts"}, "apply to an https:// DSN"),
    ({"dsn": "chdb:///tmp/x", "verify": False}, "apply to an https:// DSN"),
    ({"dsn": "https://ch:8443", "client_cert_file": "/etc/hosts"}, "set both"),
    ({"dsn": "https://ch:8443", "ca_file": "/nope.pem"}, "no such file: ca_file /nope.pem"),
])
def test_tls_settings_are_checked(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        ClickHouseSettings(**kwargs)
