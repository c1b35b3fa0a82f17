"""One place for how clients reach Kafka: the settings become aiokafka's and faust's arguments,
refusals are named by the setting at fault, and the settings are checked as a whole."""

import asyncio
import contextlib
import socket
import ssl
import struct
import time

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from streams.config import ConfigError, load_settings
from streams.tools.kafka_clients import (KafkaAccessError, check_connection, connect_args, describe_refusal,
                                        faust_credentials, security_args)


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


# ------------------------------------------------------------------ check_connection over local sockets

async def _kafka_answers(reader, writer):
    """Just enough of a broker: ApiVersions v0 (offering ApiVersions and Metadata v0) and Metadata v0."""
    from aiokafka.protocol.admin import ApiVersionResponse_v0
    from aiokafka.protocol.metadata import MetadataResponse_v0

    try:
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            frame = await reader.readexactly(size)
            api_key, _, correlation_id = struct.unpack(">hhi", frame[:8])
            body = (ApiVersionResponse_v0(error_code=0, api_versions=[(18, 0, 0), (3, 0, 0)]) if api_key == 18
                    else MetadataResponse_v0(brokers=[], topics=[])).encode()
            answer = struct.pack(">i", correlation_id) + body
            writer.write(struct.pack(">i", len(answer)) + answer)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


async def _says_nothing(reader, writer):
    try:
        await reader.read()  # until the client gives up
    except (ConnectionError, asyncio.CancelledError):
        pass
    writer.close()


async def _closes(reader, writer):
    writer.close()


async def _answers_not_kafka(reader, writer):
    await reader.read(1)
    writer.write(b"\x15\x03\x03\x00\x02\x02\x46")  # a TLS alert, as a TLS listener answers plaintext
    writer.close()


LISTENERS = {"kafka": _kafka_answers, "silent": _says_nothing, "closing": _closes, "not_kafka": _answers_not_kafka}


@contextlib.asynccontextmanager
async def listeners(*kinds):
    """host:port of a local socket of each kind: a LISTENERS handler, or "refused" (a bound port
    that does not listen)."""
    async with contextlib.AsyncExitStack() as stack:
        addresses = []
        for kind in kinds:
            if kind == "refused":
                sock = stack.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            else:
                server = await asyncio.start_server(LISTENERS[kind], "127.0.0.1", 0)
                stack.push_async_callback(server.wait_closed)
                stack.callback(server.close)
                port = server.sockets[0].getsockname()[1]
            addresses.append(f"127.0.0.1:{port}")
        yield addresses


def check(kinds, timeout_s=0.5, **env):
    """check_connection against local sockets of ``kinds``: its problems ([] when it passed) and
    the addresses."""
    async def run():
        async with listeners(*kinds) as addresses:
            target = kafka(bootstrap_servers=",".join(addresses), **env) if env else ",".join(addresses)
            try:
                await check_connection(target, timeout_s=timeout_s)
            except KafkaAccessError as exc:
                return exc.problems, addresses
            return [], addresses
    return asyncio.run(run())


def test_a_server_that_answers_as_kafka_passes_the_check():
    assert check(["kafka"])[0] == []
    assert check(["kafka"], security_protocol="PLAINTEXT")[0] == []


@pytest.mark.parametrize("env", [{}, {"security_protocol": "PLAINTEXT"}, {"security_protocol": "SSL"}])
def test_a_refused_port_is_a_server_that_cannot_be_reached(env):
    problems, [address] = check(["refused"], **env)
    assert problems == [f"kafka.bootstrap_servers: cannot connect to {address} (Connection refused)"]


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_a_server_that_accepts_and_says_nothing_is_not_taken_for_another_protocol(protocol):
    started = time.monotonic()
    problems, [address] = check(["silent"], security_protocol=protocol)
    assert problems == [f"kafka.security_protocol: connected to {address} but no Kafka answer within 0.5 s "
                        f"(is kafka.security_protocol = {protocol} right?)"]
    assert time.monotonic() - started < 5


def test_a_server_that_answers_in_another_protocol_is_a_protocol_mismatch():
    problems, [address] = check(["not_kafka"], security_protocol="PLAINTEXT")
    assert len(problems) == 1 and problems[0].startswith(
        f"kafka.security_protocol: {address} closed the connection during the PLAINTEXT handshake")


@pytest.mark.parametrize("first", ["closing", "silent", "not_kafka", "refused"])
def test_one_server_that_answers_is_enough_whatever_the_others_do(first):
    started = time.monotonic()
    assert check([first, "kafka", "closing"], timeout_s=3, security_protocol="PLAINTEXT")[0] == []
    assert time.monotonic() - started < 2  # the servers are tried together: no wait for the silent one


def test_when_no_server_answers_each_one_is_named_with_its_reason():
    problems, addresses = check(["refused", "closing", "silent"], security_protocol="PLAINTEXT")
    assert len(problems) == 3
    for problem, address, reason in zip(problems, addresses, ["cannot connect", "closed the connection",
                                                              "no Kafka answer within 0.5 s"]):
        assert address in problem and reason in problem, problem
