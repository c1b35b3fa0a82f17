"""One place for how clients reach Kafka: the settings become aiokafka's and faust's arguments,
refusals are named by the setting at fault, and the settings are checked as a whole."""

import ssl

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from streams.config import ConfigError, load_settings
from streams.tools.kafka_clients import connect_args, describe_refusal, faust_credentials, security_args


def kafka(**env):
    return load_settings(env={f"OTELPIPE_KAFKA_{k.upper()}": v for k, v in env.items()}).kafka


def test_plaintext_is_the_default_and_a_bootstrap_string_means_plaintext():
    assert security_args(kafka()) == {"security_protocol": "PLAINTEXT"}
    assert connect_args("h:1") == {"bootstrap_servers": "h:1"}
    assert faust_credentials(kafka()) is None


def test_sasl_ssl_gives_mechanism_credentials_and_a_verifying_context(tmp_path):
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    k = kafka(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
              sasl_password_file=str(password))
    args = connect_args(k)
    assert args["sasl_mechanism"] == "SCRAM-SHA-256" and args["sasl_plain_username"] == "u"
    assert args["sasl_plain_password"] == "s3cret"  # read from the file, whitespace dropped
    context = args["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    credentials = faust_credentials(k)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.protocol.value == "SASL_SSL"
    assert "s3cret" not in repr(credentials)


def test_ssl_without_sasl_and_hostname_checks_off_still_verify_the_chain():
    k = kafka(security_protocol="SSL", ssl_check_hostname="false")
    context = security_args(k)["ssl_context"]
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert "sasl_mechanism" not in security_args(k)
    assert isinstance(faust_credentials(k), faust.SSLCredentials)


@pytest.mark.parametrize("env, problem", [
    ({"security_protocol": "SASL_SSL"}, "kafka.sasl_username: required"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "kafka.sasl_password: required"),
    ({"sasl_username": "u", "sasl_password": "p"}, "apply to SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"),
    ({"ssl_ca_file": "/etc/hosts"}, "apply to SSL or SASL_SSL, not PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cert_file": "/etc/hosts"}, "set both"),
    ({"security_protocol": "SSL", "ssl_ca_file": "/nope.pem"}, "kafka.ssl_ca_file: no file /nope.pem"),
    ({"security_protocol": "TLS"}, "kafka.security_protocol: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p", "sasl_mechanism": "GSSAPI"},
     "kafka.sasl_mechanism: must be one of PLAIN"),
])
def test_settings_are_checked_as_a_whole(env, problem):
    with pytest.raises(ConfigError) as err:
        kafka(**env)
    assert problem in str(err.value)
    assert "p'" not in str(err.value)


def test_a_ca_file_that_is_not_pem_is_named(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="kafka.ssl_ca_file"):
        security_args(kafka(security_protocol="SSL", ssl_ca_file=str(bad)))


def test_refusals_name_the_setting():
    k = kafka(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p")
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert describe_refusal(k, verify).startswith("kafka.ssl_ca_file:")
    verify.verify_message = "Hostname mismatch, certificate is not valid for 'x'"
    assert describe_refusal(k, verify).startswith("kafka.ssl_check_hostname:")
    from aiokafka.errors import SaslAuthenticationFailed

    assert describe_refusal(k, SaslAuthenticationFailed("invalid credentials")).startswith(
        "kafka.sasl_username, kafka.sasl_password:")
    assert describe_refusal(k, KafkaConnectionError("Connection at h:1 closed")).startswith("kafka.security_protocol:")
    assert describe_refusal(k, KafkaConnectionError("Connect call failed")) is None  # a broker away is not a setting
