"""The Collector build's manifest and cache key (no Go, no network)."""

from __future__ import annotations

import fcntl
import io
import os
import re
from pathlib import Path

import pytest

from streams.tools.collector_build import (
    CACHE_ENV,
    OTELPIPE_COLLECTOR,
    CollectorBuildError,
    CollectorManifest,
    Component,
    binary_path,
    build_collector,
    cache_root,
    cached_binary,
    contrib,
    core,
)

ROOT = Path(__file__).resolve().parents[4]


def small(*components: Component, **fields: object) -> CollectorManifest:
    return CollectorManifest(builder_version="v0.165.0", components=components or (
        core("receivers", "otlpreceiver", "v0.165.0"), core("exporters", "nopexporter", "v0.165.0")), **fields)


def test_core_and_contrib_module_paths():
    assert core("receivers", "otlpreceiver", "v0.165.0").gomod == \
        "go.opentelemetry.io/collector/receiver/otlpreceiver v0.165.0"
    assert contrib("exporters", "kafkaexporter", "v0.165.1").gomod == \
        "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/kafkaexporter v0.165.1"
    assert core("providers", "envprovider", "v1.71.0").module == \
        "go.opentelemetry.io/collector/confmap/provider/envprovider"


def test_manifest_renders_each_kind_sorted_with_the_machine_fields_only_when_given():
    manifest = small(contrib("exporters", "kafkaexporter", "v0.165.1"), core("receivers", "otlpreceiver", "v0.165.0"),
                     core("exporters", "debugexporter", "v0.165.0"),
                     replaces=("example.com/a => example.com/a v1.2.3",))
    portable = manifest.render()
    assert portable == (
        "# OpenTelemetry Collector builder manifest (ocb v0.165.0, recipe 1)\n"
        "dist:\n"
        "  name: otelcol-otelpipe\n"
        '  description: "OpenTelemetry Collector built for otelpipe"\n'
        "receivers:\n"
        "  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v0.165.0\n"
        "exporters:\n"
        "  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/kafkaexporter v0.165.1\n"
        "  - gomod: go.opentelemetry.io/collector/exporter/debugexporter v0.165.0\n"
        "replaces:\n"
        '  - "example.com/a => example.com/a v1.2.3"\n'
    )
    local = manifest.render(output_path=Path("/tmp/out dir"), go="/usr/local/go/bin/go")
    assert '  output_path: "/tmp/out dir"\n  go: "/usr/local/go/bin/go"\n' in local
    assert "output_path" not in portable and "go:" not in portable


def test_cache_key_follows_the_manifest_not_the_order_or_the_machine():
    a, b = core("receivers", "otlpreceiver", "v0.165.0"), core("exporters", "nopexporter", "v0.165.0")
    key = small(a, b).key()
    assert re.fullmatch(r"[0-9a-f]{20}", key)
    assert small(b, a).key() == key  # order does not matter
    assert small(a, b).key() == key  # stable across calls (and processes: no hash())
    assert small(a, core("exporters", "nopexporter", "v0.164.0")).key() != key  # a version does
    assert small(a).key() != key  # a component does
    assert CollectorManifest(builder_version="v0.164.0", components=(a, b)).key() != key  # the builder does
    assert small(a, b, name="otelcol-peer").key() != key


def test_invalid_components_and_manifests_report_every_problem():
    with pytest.raises(ValueError) as bad:
        Component("receiver", "not a module", "0.165")
    message = str(bad.value)
    assert "kind 'receiver'" in message and "module 'not a module'" in message and "version '0.165'" in message
    with pytest.raises(ValueError) as twice:
        CollectorManifest(builder_version="latest", components=(core("exporters", "nopexporter", "v0.165.0"),) * 2,
                          name="a b")
    message = str(twice.value)
    assert "builder_version" in message and "name 'a b'" in message and "listed twice" in message
    with pytest.raises(ValueError, match="at least one"):
        CollectorManifest(builder_version="v0.165.0", components=())


def test_cache_root_from_the_environment_and_outside_the_repository(tmp_path):
    assert cache_root({CACHE_ENV: str(tmp_path)}) == tmp_path.resolve()
    assert cache_root({}) == Path(os.path.expanduser("~/.cache/otelpipe/otelcol")).resolve()
    assert ROOT not in cache_root({}).parents
    path = binary_path(OTELPIPE_COLLECTOR, tmp_path)
    assert path == tmp_path / OTELPIPE_COLLECTOR.key() / "otelcol-otelpipe"


def test_a_cached_binary_is_returned_without_go(tmp_path):
    manifest = small()
    assert cached_binary(manifest, tmp_path) is None
    path = binary_path(manifest, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    assert cached_binary(manifest, tmp_path) is None  # not executable: not a finished build
    path.chmod(0o755)
    assert build_collector(manifest, cache_dir=tmp_path, go="/nonexistent/go") == path


def test_missing_go_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no go here
    with pytest.raises(CollectorBuildError, match="`go` is not on PATH"):
        build_collector(small(), cache_dir=tmp_path, log=io.StringIO())


def test_a_build_waits_for_the_lock_another_process_holds(tmp_path):
    log = io.StringIO()
    with open(tmp_path / "build.lock", "w") as held:
        held.write("pid 12345\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)  # a separate open file: flock treats it as another holder
        with pytest.raises(CollectorBuildError, match="timed out waiting for the build lock"):
            build_collector(small(), cache_dir=tmp_path, go="/nonexistent/go", log=log, timeout_s=1.5)
    assert "waiting for the build of pid 12345" in log.getvalue()
    assert not binary_path(small(), tmp_path).parent.exists()  # nothing was started


def test_otelpipe_collector_has_every_component_docs_collector_yaml_uses():
    """docs/collector.yaml's component types (``kafka`` under exporters is the kafkaexporter)."""
    kinds = {"receivers": "receiver", "processors": "processor", "exporters": "exporter",
             "connectors": "connector", "extensions": "extension"}
    used: set[str] = set()
    section = None
    for line in (ROOT / "docs" / "collector.yaml").read_text().splitlines():
        top = re.match(r"^([a-z_]+):", line)
        if top:
            section = top.group(1)
            continue
        entry = re.match(r"^  ([a-z0-9_]+)(/[^:]*)?:", line)
        if entry and section in kinds:
            used.add(entry.group(1) + kinds[section])
    assert {"otlpreceiver", "batchprocessor", "kafkaexporter"} <= used
    built = {component.module.rsplit("/", 1)[1] for component in OTELPIPE_COLLECTOR.components}
    assert used <= built
    assert "fileexporter" not in built  # its tests import a module the Go proxy refuses
