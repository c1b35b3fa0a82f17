"""A real single-node Apache Kafka 3.9 broker (KRaft) for local use, tests and CI.

``up``: resolve the broker's jars from Maven Central with ``mvn`` (``kafka/pom.xml``, copied once
into ``kafka.jar_cache``, outside the repository), render ``kafka/server.properties.template``,
format KRaft storage on first use, start ``kafka.Kafka`` in the background, wait until it answers
metadata requests, and create the source and dead-letter topics. ``down`` stops it (SIGTERM, then
SIGKILL after a grace period); ``status`` reports it. Running ``up`` twice is harmless.
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

    def render_properties(self) -> Path:
        template = string.Template((KAFKA_DIR / "server.properties.template").read_text())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(
            template.substitute(
                port=self.port,
                controller_port=self.controller_port,
                data_dir=str(self.data_dir),
                partitions=self.partitions,
            )
        )
        return self.properties_file

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

    def up(self, topics: list[str], timeout_s: float = 120.0) -> str:
        if self.pid() is not None:
            self._wait_ready(timeout_s)
            asyncio.run(ensure_topics(self.bootstrap, topics, self.partitions, configs=dict(self.topic_configs)))
            return f"already running (pid {self.pid()}) on {self.bootstrap}"
        if self.port_open():
            raise BrokerError(
                f"{self.bootstrap} is taken by a process otelpipe did not start; stop it or change kafka.bootstrap_servers"
            )
        self.ensure_jars()
        self.render_properties()
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
        asyncio.run(ensure_topics(self.bootstrap, topics, self.partitions, configs=dict(self.topic_configs)))
        return f"started (pid {proc.pid}) on {self.bootstrap}, data in {self.data_dir}"

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
