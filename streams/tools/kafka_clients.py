"""How every Kafka client otelpipe makes reaches the brokers: one place for the security settings.

``connect_args(kafka)`` gives the keyword arguments of an aiokafka producer, consumer or admin
client (bootstrap servers, security protocol, SASL mechanism and credentials, a TLS context);
``faust_credentials(kafka)`` the same for the faust app; ``check_connection(kafka)`` connects once
and turns a failure into ``KafkaAccessError`` naming the setting at fault (a server that cannot be
reached, one that accepts and never answers, a wrong password, an untrusted certificate, a TLS
listener reached in plaintext), so a command fails fast and clearly instead of retrying. Call
sites that only know a bootstrap string (tests, tools) may pass it: it means PLAINTEXT.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any

from streams.config import ConfigError, KafkaSettings, resolve_path

Target = KafkaSettings | str


class KafkaAccessError(ConfigError):
    """No bootstrap server could serve this client: the message names the setting to look at."""

    what = "Kafka settings (no bootstrap server accepted them)"


def sasl_password(kafka: KafkaSettings) -> str:
    if kafka.sasl_password_file:
        path = resolve_path(kafka.sasl_password_file)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError([f"kafka.sasl_password_file: cannot read {path}: {exc.strerror or exc}"]) from None
    return kafka.sasl_password.get_secret_value()


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the configured CAs (else the
    system's), the client certificate when set, host names checked unless turned off."""
    if not kafka.security_protocol.endswith("SSL"):
        return None
    try:
        context = ssl.create_default_context(cafile=str(resolve_path(kafka.ssl_ca_file)) if kafka.ssl_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"kafka.ssl_ca_file: {kafka.ssl_ca_file} is not a PEM file of CA certificates "
                           f"({type(exc).__name__})"]) from None
    if kafka.ssl_cert_file:
        try:
            context.load_cert_chain(str(resolve_path(kafka.ssl_cert_file)), str(resolve_path(kafka.ssl_key_file)),
                                    password=kafka.ssl_key_password.get_secret_value() or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"kafka.ssl_cert_file, kafka.ssl_key_file: cannot load the client certificate "
                               f"and key ({type(exc).__name__}; is kafka.ssl_key_password right?)"]) from None
    context.check_hostname = kafka.ssl_check_hostname
    if not kafka.ssl_check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED  # the chain is still verified
    return context


def security_args(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka's security keyword arguments for these settings."""
    args: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        args["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        args.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                    sasl_plain_password=sasl_password(kafka))
    return args


def connect_args(target: Target) -> dict[str, Any]:
    """``bootstrap_servers`` and the security arguments of an aiokafka client."""
    if isinstance(target, str):
        return {"bootstrap_servers": target}
    return {"bootstrap_servers": target.bootstrap_servers, **security_args(target)}


def bootstrap_of(target: Target) -> str:
    return target if isinstance(target, str) else target.bootstrap_servers


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The faust app's ``broker_credentials`` (None for PLAINTEXT)."""
    import faust

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        credentials = faust.SASLCredentials(username=kafka.sasl_username, password=sasl_password(kafka),
                                            ssl_context=context, mechanism=kafka.sasl_mechanism)
        return credentials
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def describe_refusal(kafka: KafkaSettings, exc: BaseException, where: str | None = None) -> str | None:
    """What a connection failure says about the settings, or None when it is not about them (a
    broker that is down, a network that is away). ``where``: the server reached (default: all)."""
    from aiokafka.errors import KafkaConnectionError, UnsupportedSaslMechanismError

    name = type(exc).__name__
    text = str(exc)
    where = where or kafka.bootstrap_servers
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "hostname" in (exc.verify_message or "").lower() or "match" in (exc.verify_message or "").lower():
            return (f"kafka.ssl_check_hostname: the certificate of {where} does not name the host it was reached at "
                    f"({exc.verify_message})")
        return (f"kafka.ssl_ca_file: the certificate of {where} is not signed by a trusted CA "
                f"({exc.verify_message}); set kafka.ssl_ca_file to the CA that signs the brokers' certificates")
    if isinstance(exc, ssl.SSLError):
        if kafka.ssl_cert_file:
            return f"kafka.ssl_cert_file: the TLS handshake with {where} failed ({exc.reason or name})"
        return (f"kafka.security_protocol: the TLS handshake with {where} failed ({exc.reason or name}); does the "
                f"listener want a client certificate (kafka.ssl_cert_file)?")
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"kafka.sasl_mechanism: {where} does not offer {kafka.sasl_mechanism} ({text})"
    if name in ("SaslAuthenticationFailedError", "AuthenticationFailedError") or "authentication" in text.lower():
        return (f"kafka.sasl_username, kafka.sasl_password: {where} refused the credentials of "
                f"{kafka.sasl_username!r} ({kafka.sasl_mechanism})")
    if isinstance(exc, KafkaConnectionError) and ("closed" in text.lower() or "illegal sasl state" in text.lower()):
        return (f"kafka.security_protocol: {where} closed the connection during the {kafka.security_protocol} "
                f"handshake: a listener of another protocol, or one that wants a client certificate "
                f"(kafka.ssl_cert_file)")
    return None


def _host_port(server: str) -> tuple[str, int] | None:
    host, _, port = server.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) or not exc.errno:  # a name not resolved; several addresses failing
        return exc.strerror or str(exc) or type(exc).__name__
    return os.strerror(exc.errno)  # asyncio's own text repeats the address


async def server_problem(kafka: KafkaSettings, server: str, timeout_s: float,
                         args: dict[str, Any] | None = None) -> str | None:
    """Why ``server`` cannot serve a client of these settings (``args``: their ``security_args``),
    or None when it answers as a Kafka broker of ``kafka.security_protocol`` (the handshake and
    one request). TCP comes first, so a
    server that cannot be reached, one that accepts and says nothing, and one that answers in
    another protocol are told apart."""
    address = _host_port(server)
    if address is None:
        return f"kafka.bootstrap_servers: {server!r} is not host:port"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout_s)
    except asyncio.TimeoutError:
        return f"kafka.bootstrap_servers: cannot connect to {server} (no answer within {timeout_s:g} s)"
    except OSError as exc:
        return f"kafka.bootstrap_servers: cannot connect to {server} ({_os_reason(exc)})"
    writer.close()
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    protocol = kafka.security_protocol
    args = security_args(kafka) if args is None else args
    try:
        conn = await asyncio.wait_for(create_conn(
            *address, ssl_context=args.get("ssl_context"), security_protocol=protocol,
            sasl_mechanism=args.get("sasl_mechanism", "PLAIN"), sasl_plain_username=args.get("sasl_plain_username"),
            sasl_plain_password=args.get("sasl_plain_password"), request_timeout_ms=int(timeout_s * 1000)),
            timeout_s)
    except asyncio.TimeoutError:
        return (f"kafka.security_protocol: connected to {server} but no Kafka answer within {timeout_s:g} s "
                f"(is kafka.security_protocol = {protocol} right?)")
    except Exception as exc:
        return describe_refusal(kafka, exc, server) or (
            f"kafka.security_protocol: {server} does not answer as a Kafka {protocol} listener "
            f"({type(exc).__name__}: {exc})")
    try:  # a request proves the session: a refused client certificate shows only now (TLS 1.3)
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    except (asyncio.TimeoutError, Exception) as exc:
        return describe_refusal(kafka, exc, server) or (
            f"kafka.security_protocol: {server} accepted a {protocol} connection but did not answer a request "
            f"({type(exc).__name__}); does the listener want a client certificate (kafka.ssl_cert_file), or "
            f"another protocol?")
    finally:
        conn.close()
    return None


async def check_connection(kafka: Target, timeout_s: float = 15.0) -> None:
    """Reach the bootstrap servers as every client will, before one starts: all of them at once,
    each as ``server_problem`` does. Return as soon as one answers (clients find the others through
    it); raise ``KafkaAccessError`` naming each server with its reason when none does. A bootstrap
    string means PLAINTEXT."""
    if isinstance(kafka, str):
        kafka = KafkaSettings(bootstrap_servers=kafka)
    servers = list(dict.fromkeys(filter(None, (s.strip() for s in kafka.bootstrap_servers.split(",")))))
    if not servers:
        raise KafkaAccessError([f"kafka.bootstrap_servers: {kafka.bootstrap_servers!r} names no server"])
    args = security_args(kafka)  # a setting that cannot be used at all (an unreadable file) is named first
    tries = [asyncio.ensure_future(server_problem(kafka, server, timeout_s, args)) for server in servers]
    try:
        for done in asyncio.as_completed(tries):
            if await done is None:
                return
    finally:
        for pending in tries:
            pending.cancel()
        await asyncio.gather(*tries, return_exceptions=True)
    raise KafkaAccessError([problem.result() for problem in tries])
