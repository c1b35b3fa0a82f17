"""docker-compose.yml and the ClickHouse configuration it mounts (deploy/clickhouse/), read as files.

Docker does not run in the test suite, so these tests parse what a user would start: every
profile's services name files and services that exist, the cluster profile's servers form the
cluster ``otelpipe`` (two shards of compose services, Keeper, distinct macros, one user), its worker
names that cluster, and every image is pinned.

The compose file is read by ``parse_yaml``, a strict reader of the YAML this file uses (block
mappings and sequences, one-line flow collections, quoted and plain scalars, comments); anything
else (anchors, tags, block scalars, several documents) is an error, never a silent misreading.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CLUSTER = "otelpipe"
SHARD_SERVICES = ("clickhouse-s1", "clickhouse-s2")
KEEPER_SERVICE = "clickhouse-keeper"
CLUSTER_WORKER = "otelpipe-cluster"


# --- a strict reader of the YAML docker-compose.yml is written in --------------------------------

def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and not (quote == '"' and line[i - 1] == "\\"):
                quote = ""
        elif ch in "\"'" and line[:i].rstrip()[-1:] in ("", ":", "-", "[", "{", ","):
            quote = ch  # a quote opens a scalar only where a scalar starts
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    if quote:
        raise ValueError(f"unterminated quote: {line!r}")
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text and (text[0] in "&*!|>%@`" or text.startswith(("<<", "? "))):
        raise ValueError(f"unsupported YAML: {text!r}")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise ValueError(f"bad double-quoted scalar: {text!r}")
        return re.sub(r'\\(["\\])', r"\1", text[1:-1])
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise ValueError(f"bad single-quoted scalar: {text!r}")
        return text[1:-1].replace("''", "'")
    if text in ("", "~", "null"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


class _Flow:
    """One line of YAML scanned left to right: flow collections (``[a, "b"]``, ``{ k: { m: 1 } }``)
    and the key of a block mapping entry."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def parse(self) -> Any:
        value = self._value()
        self._space()
        if self.pos != len(self.text):
            raise ValueError(f"trailing text in flow collection: {self.text!r}")
        return value

    def _space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def _peek(self, offset: int = 0) -> str:
        return self.text[self.pos + offset:self.pos + offset + 1]

    def _value(self) -> Any:
        self._space()
        if self._peek() == "[":
            return self._collection("]", list)
        if self._peek() == "{":
            return self._collection("}", dict)
        return _scalar(self.token(",]}", key=False))

    def token(self, stops: str, key: bool) -> str:
        """Text up to one of ``stops`` outside quotes; a key also ends at ':' before a space, a stop
        or the end of the line (``kafka:9092`` is one scalar)."""
        start, quote = self.pos, ""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if quote:
                if ch == quote and not (quote == '"' and self.text[self.pos - 1] == "\\"):
                    quote = ""
            elif ch in "\"'" and self.pos == start:
                quote = ch
            elif ch in stops or (key and ch == ":" and self._peek(1) in ("", " ", *stops)):
                break
            self.pos += 1
        if quote:
            raise ValueError(f"unterminated quote: {self.text!r}")
        return self.text[start:self.pos]

    def _collection(self, close: str, kind: type) -> Any:
        self.pos += 1
        out: Any = kind()
        while True:
            self._space()
            if self._peek() == close:
                self.pos += 1
                return out
            if not self._peek():
                raise ValueError(f"unclosed flow collection: {self.text!r}")
            if kind is dict:
                key = _scalar(self.token(",}", key=True))
                if self._peek() != ":":
                    raise ValueError(f"flow mapping entry without ':' in {self.text!r}")
                self.pos += 1
                if key in out:
                    raise ValueError(f"duplicate key {key!r}")
                out[key] = self._value()
            else:
                out.append(self._value())
            self._space()
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() != close:
                raise ValueError(f"expected ',' or {close!r} in {self.text!r}")


def _value(text: str) -> Any:
    text = text.strip()
    return _Flow(text).parse() if text.startswith(("[", "{")) else _scalar(text)


def _split_key(content: str) -> tuple[str, str] | None:
    """``key: rest`` or ``key:`` → (key, rest); None when the line is no mapping entry."""
    if content.startswith(("[", "{", "- ")) or content == "-":
        return None
    scan = _Flow(content)
    key = scan.token("", key=True)
    if scan.pos >= len(content):
        return None
    return key, content[scan.pos + 1:]


def parse_yaml(text: str) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"tab in indentation: {raw!r}")
        content = _strip_comment(raw)
        if content.strip():
            if content.strip() in ("---", "..."):
                raise ValueError("several documents are not supported")
            lines.append((len(content) - len(content.lstrip()), content.strip()))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            return sequence(i, indent)
        return mapping(i, indent)

    def nested(i: int, indent: int) -> tuple[Any, int]:
        """The value of an entry whose text ended at its ':' or '-' (line i - 1)."""
        if i < len(lines) and lines[i][0] > indent:
            return block(i, lines[i][0])
        if i < len(lines) and lines[i][0] == indent and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
            return sequence(i, indent)
        return None, i

    def mapping(i: int, indent: int) -> tuple[dict, int]:
        out: dict = {}
        while i < len(lines) and lines[i][0] == indent:
            content = lines[i][1]
            entry = _split_key(content)
            if entry is None:
                break
            key, rest = _scalar(entry[0]), entry[1]
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            if rest.strip():
                out[key], i = _value(rest), i + 1
            else:
                out[key], i = nested(i + 1, indent)
        if i < len(lines) and lines[i][0] > indent:
            raise ValueError(f"unexpected indentation at {lines[i][1]!r}")
        return out, i

    def sequence(i: int, indent: int) -> tuple[list, int]:
        out: list = []
        while i < len(lines) and lines[i][0] == indent and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
            rest = lines[i][1][1:].lstrip()
            if not rest:
                value, i = nested(i + 1, indent)
            elif _split_key(rest) is not None:
                # "- key: value" opens a mapping indented to where its key starts
                inner = indent + len(lines[i][1]) - len(rest)
                lines[i] = (inner, rest)
                value, i = mapping(i, inner)
            else:
                value, i = _value(rest), i + 1
            out.append(value)
        return out, i

    if not lines:
        return None
    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"could not read from {lines[end][1]!r}")
    return value


def test_parse_yaml_reads_the_constructs_the_compose_file_uses() -> None:
    text = """
a:
  b: [x, "y: z", 'q''s']   # a comment
  c: { d: { e: 1 }, f: "#not a comment" }
  g:
    - one
    - k: v
      l: [2]
  h:
  - "${X:-y}"
i: true
"""
    assert parse_yaml(text) == {
        "a": {"b": ["x", "y: z", "q's"], "c": {"d": {"e": 1}, "f": "#not a comment"},
              "g": ["one", {"k": "v", "l": [2]}], "h": ["${X:-y}"]},
        "i": True,
    }


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "a: |\n  text\n", "a: 1\na: 2\n", "a: 1\n---\nb: 2\n",
                                  "a: [1, 2\n", "a:\n  b: 1\n    c: 2\n"])
def test_parse_yaml_refuses_what_it_does_not_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse_yaml(text)


# --- the compose file --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return parse_yaml(COMPOSE.read_text())


def profiles(compose: dict) -> list[str | None]:
    """None for the default services (no profile), then every profile named."""
    named = sorted({p for s in compose["services"].values() for p in s.get("profiles", [])})
    return [None, *named]


def active(compose: dict, profile: str | None) -> dict[str, dict]:
    """The services `docker compose [--profile P] up` starts."""
    return {name: s for name, s in compose["services"].items()
            if not s.get("profiles") or profile in s["profiles"]}


def dependencies(service: dict) -> list[str]:
    deps = service.get("depends_on", [])
    return list(deps) if isinstance(deps, (list, dict)) else []


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source relative to the repository, target) of every bind mount of a service."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def test_cluster_profile_exists(compose: dict) -> None:
    assert "cluster" in profiles(compose)
    assert set(SHARD_SERVICES) | {KEEPER_SERVICE, CLUSTER_WORKER} <= set(active(compose, "cluster"))
    assert not set(SHARD_SERVICES) & set(active(compose, None)), "the default services stay one server"
    assert {"kafka", "clickhouse", "collector", "otelpipe", "grafana"} <= set(active(compose, None))


def test_every_profile_references_files_and_services_that_exist(compose: dict) -> None:
    volumes = set(compose.get("volumes") or {})
    for profile in profiles(compose):
        services = active(compose, profile)
        for name, service in services.items():
            where = f"{name} (profile {profile or 'default'})"
            build = service.get("build")
            if build is not None:
                context = build if isinstance(build, str) else build.get("context", ".")
                dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
                assert (ROOT / context / dockerfile).is_file(), f"{where}: no {context}/{dockerfile}"
            assert build is not None or service.get("image"), f"{where}: neither image nor build"
            for source, _ in bind_mounts(service):
                assert (ROOT / source).exists(), f"{where} mounts {source}, which is not in the repository"
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if not source.startswith((".", "/")):
                    assert source in volumes, f"{where}: volume {source} is not declared"
            for dep in dependencies(service):
                assert dep in services, f"{where} depends on {dep}, which this profile does not start"


def image_tag(image: str) -> str:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def test_images_are_pinned(compose: dict) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        if image is None:
            continue
        tag = image_tag(image)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"


def test_keeper_is_the_server_release(compose: dict) -> None:
    servers = {image_tag(compose["services"][s]["image"]) for s in (*SHARD_SERVICES, "clickhouse")}
    keeper = compose["services"][KEEPER_SERVICE]["image"]
    assert keeper.startswith("clickhouse/clickhouse-keeper:")
    assert servers == {image_tag(keeper)}, "Keeper and the servers run one ClickHouse release"


def test_collector_mounts_the_documented_configuration(compose: dict) -> None:
    collector = compose["services"]["collector"]
    mounts = dict(bind_mounts(collector))
    assert "./docs/collector.yaml" in mounts
    assert f"--config={mounts['./docs/collector.yaml']}" in collector["command"]


# --- the cluster's configuration ------------------------------------------------------------------

def mounted_xml(service: dict, directory: str) -> list[ET.Element]:
    """The roots of the XML files a service mounts into ``directory``."""
    return [ET.parse(ROOT / source).getroot() for source, target in bind_mounts(service)
            if target.startswith(directory) and source.endswith(".xml")]


def one(roots: list[ET.Element], path: str) -> ET.Element:
    found = [e for root in roots for e in root.findall(path)]
    assert len(found) == 1, f"expected one {path}, found {len(found)}"
    return found[0]


def test_cluster_has_two_shards_of_compose_services(compose: dict) -> None:
    services = compose["services"]
    for node in SHARD_SERVICES:
        config = mounted_xml(services[node], "/etc/clickhouse-server/config.d/")
        cluster = one(config, f"remote_servers/{CLUSTER}")
        shards = cluster.findall("shard")
        assert len(shards) == 2
        hosts = []
        for shard in shards:
            assert shard.findtext("internal_replication") == "true"
            replicas = shard.findall("replica")
            assert len(replicas) == 1, "one replica per shard"
            hosts.append(replicas[0].findtext("host"))
            assert replicas[0].findtext("port") == "9000"
        assert sorted(hosts) == sorted(SHARD_SERVICES)
        for host in hosts:
            assert "clickhouse/clickhouse-server:" in services[host]["image"]
            assert "cluster" in services[host]["profiles"]
        assert one(config, "listen_host").text == "0.0.0.0"


def test_each_node_has_its_own_macros(compose: dict) -> None:
    macros = []
    for node in SHARD_SERVICES:
        element = one(mounted_xml(compose["services"][node], "/etc/clickhouse-server/config.d/"), "macros")
        macros.append((element.findtext("shard"), element.findtext("replica")))
    shards, replicas = zip(*macros)
    assert all(shards) and all(replicas)
    assert len(set(shards)) == len(SHARD_SERVICES), "each node is its own shard"
    assert len(set(replicas)) == len(SHARD_SERVICES)


def test_servers_use_the_keeper_service(compose: dict) -> None:
    services = compose["services"]
    keeper = services[KEEPER_SERVICE]
    keeper_config = one(mounted_xml(keeper, "/etc/clickhouse-keeper/keeper_config.xml"), "keeper_server")
    assert [s.findtext("hostname") for s in keeper_config.findall("raft_configuration/server")] == [KEEPER_SERVICE]
    for node in SHARD_SERVICES:
        nodes = one(mounted_xml(services[node], "/etc/clickhouse-server/config.d/"), "zookeeper").findall("node")
        assert [(n.findtext("host"), n.findtext("port")) for n in nodes] == \
            [(KEEPER_SERVICE, keeper_config.findtext("tcp_port"))]
        assert KEEPER_SERVICE in dependencies(services[node])


def test_cluster_user_password_comes_from_the_environment(compose: dict) -> None:
    services = compose["services"]
    worker_env = environment(services[CLUSTER_WORKER])
    for node in SHARD_SERVICES:
        service = services[node]
        user = one(mounted_xml(service, "/etc/clickhouse-server/users.d/"), "users/otelpipe")
        variable = user.find("password").get("from_env")
        assert variable and not (user.findtext("password") or "").strip(), "no password in the file"
        assert environment(service)[variable] == worker_env["OTELPIPE_CLICKHOUSE_PASSWORD"]
        replicas = one(mounted_xml(service, "/etc/clickhouse-server/config.d/"), f"remote_servers/{CLUSTER}")
        for replica in replicas.iter("replica"):
            assert replica.findtext("user") == "otelpipe"
            assert replica.find("password").get("from_env") == variable


def test_cluster_worker_writes_the_cluster_sharded(compose: dict) -> None:
    services = compose["services"]
    env = environment(services[CLUSTER_WORKER])
    assert env["OTELPIPE_CLICKHOUSE_CLUSTER"] == CLUSTER
    assert env["OTELPIPE_CLICKHOUSE_SHARDED"] == "true"
    dsn = re.match(r"https?://(?P<user>[^:@/]+)(:[^@]*)?@(?P<host>[^:/]+):(?P<port>\d+)",
                   env["OTELPIPE_CLICKHOUSE_DSN"])
    assert dsn and dsn["host"] in SHARD_SERVICES and dsn["port"] == "8123" and dsn["user"] == "otelpipe"
    assert set(SHARD_SERVICES) <= set(dependencies(services[CLUSTER_WORKER]))
    # its own consumer group: the worker of the single server keeps reading every record too
    default_group = environment(services["otelpipe"]).get("OTELPIPE_WORKER_APP_ID", "otelpipe")
    assert env["OTELPIPE_WORKER_APP_ID"] != default_group


def test_default_worker_writes_the_single_server(compose: dict) -> None:
    env = environment(compose["services"]["otelpipe"])
    assert "@clickhouse:8123/" in env["OTELPIPE_CLICKHOUSE_DSN"]
    assert "OTELPIPE_CLICKHOUSE_CLUSTER" not in env and "OTELPIPE_CLICKHOUSE_SHARDED" not in env
