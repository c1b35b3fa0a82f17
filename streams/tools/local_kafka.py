"""A real single-node Apache Kafka 3.9 broker (KRaft) for local use, tests and CI.

``up``: resolve the broker's jars from Maven Central with ``mvn`` (``kafka/pom.xml``, copied once
into ``kafka.jar_cache``, outside the repository), render ``kafka/server.properties.template``,
format KRaft storage on first use, start ``kafka.Kafka`` in the background, wait until it answers
metadata requests, and create the source and dead-letter topics. ``down`` stops it (SIGTERM, then
SIGKILL after a grace period); ``status`` reports it. Running ``up`` twice is harmless.

``up(secure=True)`` adds, beside the plaintext listener, a SASL_SSL listener
(``kafka.local_secure_port``: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the user ``otelpipe``) and
an SSL listener that wants a client certificate (``kafka.local_mtls_port``). Certificates (a CA,
the broker's for 127.0.0.1 and localhost, a client's) are made with openssl under
``<local_data_dir>/secure``, once, with the user's random password (mode 0600); the SCRAM
credentials are created with Kafka's own ConfigCommand. ``secure_settings()`` gives the settings
that reach each listener.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import string
import subprocess
import time
import secrets
from dataclasses import dataclass
from pathlib import Path

from streams.config import PROJECT_ROOT, Settings, resolve_path
from streams.tools.kafka_admin import ensure_topics, list_topics

KAFKA_DIR = PROJECT_ROOT / "kafka"
KAFKA_VERSION = "3.9.2"
JVM_FLAGS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalBroker:
    host: str
    port: int
    controller_port: int
    data_dir: Path
    jar_dir: Path
    heap: str
    partitions: int
    topic_configs: tuple[tuple[str, str], ...] = ()  # configs of the topics it creates
    secure_port: int = 9094
    mtls_port: int = 9095

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalBroker":
        first = settings.kafka.bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise BrokerError(
                f"kafka.bootstrap_servers is {first}: the local broker only runs on 127.0.0.1"
            )
        return cls(
            host="127.0.0.1",
            port=int(port),
            controller_port=settings.kafka.local_controller_port,
            data_dir=resolve_path(settings.kafka.local_data_dir),
            jar_dir=resolve_path(settings.kafka.jar_cache) / "libs",
            heap=settings.kafka.local_heap,
            partitions=settings.kafka.partitions,
            topic_configs=tuple(settings.topic_configs().items()),
            secure_port=settings.kafka.local_secure_port,
            mtls_port=settings.kafka.local_mtls_port,
        )

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    # ------------------------------------------------------------------ jars

    def ensure_jars(self) -> Path:
        marker = self.jar_dir / ".complete"
        if marker.exists():
            return self.jar_dir
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError("mvn not found: install Maven (and Java 17) to resolve the Kafka broker's jars")
        self.jar_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"),
            "dependency:copy-dependencies", f"-DoutputDirectory={self.jar_dir}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(f"resolving Kafka {KAFKA_VERSION} jars with Maven failed:\n{proc.stdout}\n{proc.stderr}")
        if not list(self.jar_dir.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            raise BrokerError(f"Maven ran but {self.jar_dir} holds no kafka_2.13-{KAFKA_VERSION}.jar")
        marker.write_text(KAFKA_VERSION + "\n")
        return self.jar_dir

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if not java:
            raise BrokerError("java not found: install a JDK (17 or newer)")
        return [
            java, f"-Xmx{heap}", f"-Xms{heap}", *JVM_FLAGS,
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            f"-Dlog4j.configuration=file:{KAFKA_DIR / 'log4j.properties'}",
            "-cp", f"{self.jar_dir}/*", main, *args,
        ]

    # ------------------------------------------------------------------ storage

    def render_properties(self, secure: bool = False) -> Path:
        template = string.Template((KAFKA_DIR / "server.properties.template").read_text())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = template.substitute(
            port=self.port,
            controller_port=self.controller_port,
            data_dir=str(self.data_dir),
            partitions=self.partitions,
        )
        if secure:  # later keys win in a Java properties file: the listeners are replaced
            text += self._secure_properties()
        self.properties_file.write_text(text)
        os.chmod(self.properties_file, 0o600)  # it holds the PLAIN user's password
        return self.properties_file

    # ------------------------------------------------------------------ TLS and SASL

    @property
    def secure_dir(self) -> Path:
        return self.data_dir / "secure"

    @property
    def secure_marker(self) -> Path:
        return self.data_dir / "secure.enabled"  # started with the secure listeners last time

    def make_certificates(self) -> Path:
        """A CA, the broker's certificate (127.0.0.1, localhost), a client's, and the SASL user's
        password, made once under ``secure_dir``."""
        out = self.secure_dir
        if (out / ".complete").exists():
            return out
        openssl = shutil.which("openssl")
        if not openssl:
            raise BrokerError("openssl not found: it makes the local broker's TLS certificates (kafka up --secure)")
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o700)

        def run(*args: str) -> None:
            proc = subprocess.run([openssl, *args], cwd=out, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BrokerError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
            "-subj", "/CN=otelpipe local CA")
        for name, subject, ext in (
            ("broker", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
            ("client", "/CN=otelpipe-client", "extendedKeyUsage=clientAuth"),
        ):
            (out / f"{name}.ext").write_text(ext + "\n")
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "3650", "-extfile", f"{name}.ext")
        # Kafka's PEM key store: the private key (PKCS#8) followed by its certificate chain
        (out / "broker.keystore.pem").write_text((out / "broker.key").read_text() + (out / "broker.pem").read_text())
        fd = os.open(out / "otelpipe.password", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
        for key in out.glob("*.key"):
            os.chmod(key, 0o600)
        (out / ".complete").write_text("")
        return out

    @property
    def sasl_password(self) -> str:
        return (self.secure_dir / "otelpipe.password").read_text().strip()

    def _secure_properties(self) -> str:
        d = self.secure_dir
        jaas_plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                      f'user_otelpipe="{self.sasl_password}";')
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return "\n".join([
            "", "# kafka up --secure: SASL_SSL and mutual-TLS listeners beside the plaintext one",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"SASL_SSL://127.0.0.1:{self.secure_port},SSL://127.0.0.1:{self.mtls_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.secure_port},"
            f"SSL://127.0.0.1:{self.mtls_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            "ssl.keystore.type=PEM", f"ssl.keystore.location={d / 'broker.keystore.pem'}",
            "ssl.truststore.type=PEM", f"ssl.truststore.location={d / 'ca.pem'}",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas_plain}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "listener.name.ssl.ssl.client.auth=required",
            "",
        ])

    def add_scram_user(self) -> None:
        """The user ``otelpipe`` with SCRAM-SHA-256 and -512 credentials (Kafka's ConfigCommand,
        over the plaintext listener; the same password again is harmless)."""
        password = self.sasl_password
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):  # one credential per request
            proc = subprocess.run(self._java(
                "kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap, "--alter", "--add-config",
                f"{mechanism}=[password={password}]", "--entity-type", "users", "--entity-name", "otelpipe"),
                capture_output=True, text=True)
            if proc.returncode != 0:
                raise BrokerError(f"creating the SCRAM user ({mechanism}) failed: {proc.stderr.strip()[-2000:]}")

    def secure_settings(self, listener: str = "sasl_ssl") -> dict[str, str]:
        """``OTELPIPE_KAFKA_*`` settings that reach the secure listeners: ``sasl_ssl`` (SCRAM-SHA-512
        over TLS) or ``mtls`` (TLS with the client certificate)."""
        d = self.secure_dir
        if listener == "mtls":
            return {"OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.mtls_port}",
                    "OTELPIPE_KAFKA_SECURITY_PROTOCOL": "SSL", "OTELPIPE_KAFKA_SSL_CA_FILE": str(d / "ca.pem"),
                    "OTELPIPE_KAFKA_SSL_CERT_FILE": str(d / "client.pem"),
                    "OTELPIPE_KAFKA_SSL_KEY_FILE": str(d / "client.key")}
        return {"OTELPIPE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.secure_port}",
                "OTELPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OTELPIPE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "OTELPIPE_KAFKA_SASL_USERNAME": "otelpipe",
                "OTELPIPE_KAFKA_SASL_PASSWORD_FILE": str(d / "otelpipe.password"),
                "OTELPIPE_KAFKA_SSL_CA_FILE": str(d / "ca.pem")}

    def secure_port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, self.secure_port)) == 0

    def format_storage(self) -> None:
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        uuid = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True, check=False
        )
        cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.returncode == 0 and uuid.stdout.strip() else ""
        if not cluster_id:
            raise BrokerError(f"kafka.tools.StorageTool random-uuid failed: {uuid.stderr}")
        fmt = subprocess.run(
            self._java(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties_file),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed: {fmt.stdout}\n{fmt.stderr}")

    # ------------------------------------------------------------------ process

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:  # a reused pid is not our broker
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"kafka.Kafka" not in cmdline:
                return None
        except FileNotFoundError:
            return None
        return pid

    def port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, self.port)) == 0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def up(self, topics: list[str], timeout_s: float = 120.0, secure: bool | None = None) -> str:
        """``secure``: with the SASL_SSL and mutual-TLS listeners; None: as the broker was last
        started (a restart keeps them)."""
        if secure is None:
            secure = self.secure_marker.exists()
        if self.pid() is not None:
            self._wait_ready(timeout_s)
            if secure and not self.secure_port_open():
                raise BrokerError(f"the local broker (pid {self.pid()}) runs without its secure listeners: "
                                  "otelpipe kafka down, then otelpipe kafka up --secure")
            asyncio.run(ensure_topics(self.bootstrap, topics, self.partitions, configs=dict(self.topic_configs)))
            return f"already running (pid {self.pid()}) on {self.bootstrap}" + (self._secure_note() if secure else "")
        if self.port_open():
            raise BrokerError(
                f"{self.bootstrap} is taken by a process otelpipe did not start; stop it or change kafka.bootstrap_servers"
            )
        self.ensure_jars()
        if secure:
            self.make_certificates()
            self.secure_marker.write_text("")
        else:
            self.secure_marker.unlink(missing_ok=True)
        self.render_properties(secure)
        self.format_storage()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        out = open(self.data_dir / "broker.out", "ab")
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.properties_file), heap=self.heap),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_ready(timeout_s, proc)
        except BrokerError:
            self.down()
            raise
        if secure:
            self.add_scram_user()
        asyncio.run(ensure_topics(self.bootstrap, topics, self.partitions, configs=dict(self.topic_configs)))
        return f"started (pid {proc.pid}) on {self.bootstrap}, data in {self.data_dir}" + (
            self._secure_note() if secure else "")

    def _secure_note(self) -> str:
        d = self.secure_dir
        return (f"; SASL_SSL (SCRAM-SHA-256/512, PLAIN; user otelpipe, password in {d / 'otelpipe.password'}) "
                f"on 127.0.0.1:{self.secure_port}, mutual TLS on 127.0.0.1:{self.mtls_port}; CA {d / 'ca.pem'}")

    def _wait_ready(self, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = (self.data_dir / "broker.out").read_text(errors="replace")[-3000:]
                raise BrokerError(f"the broker exited with code {proc.returncode}:\n{tail}")
            if self.port_open():
                try:
                    asyncio.run(list_topics(self.bootstrap, timeout_s=5))
                    return
                except Exception as exc:  # not ready yet: metadata not served
                    last_error = str(exc)
            time.sleep(0.5)
        raise BrokerError(f"the broker did not answer on {self.bootstrap} within {timeout_s:.0f}s: {last_error}")

    def down(self, grace_s: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped (pid {pid})"

    def status(self) -> dict[str, object]:
        pid = self.pid()
        info: dict[str, object] = {
            "running": pid is not None,
            "pid": pid,
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
            "jars": str(self.jar_dir),
        }
        if pid is not None and self.port_open():
            try:
                info["topics"] = sorted(t for t in asyncio.run(list_topics(self.bootstrap)) if not t.startswith("__"))
            except Exception as exc:
                info["topics"] = f"unavailable: {exc}"
        return info


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
