"""Build an OpenTelemetry Collector with its builder (ocb), once per manifest, into a cache outside
the repository.

Input: a ``CollectorManifest``: the builder's version (which fixes the core ``otelcol`` version the
Collector is built on) and the components, each a Go module at a version. Output: the path of an
executable Collector built from exactly that manifest. ``build_collector`` reuses the binary of an
earlier build of the same manifest; a new one takes minutes (the Go modules are downloaded through
the module proxy, then compiled), so it prints its progress to stderr.

Cache: ``$OTELPIPE_OTELCOL_CACHE`` or ``~/.cache/otelpipe/otelcol``, holding ``builder-<version>/``
(ocb, installed with ``go install``) and ``<key>/`` per manifest (its binary and the manifest it was
built from; the key hashes the manifest, so a changed component or version builds anew). One build
runs at a time per cache (a lock file), so two test processes share the work instead of racing.

The steps (checked on the Go module proxy): ocb generates the sources and go.mod and runs its own
``go mod tidy``; where that fails because a component's *test* imports a module the proxy refuses,
``go mod tidy -e`` still resolves everything the build needs; then
``CGO_ENABLED=0 go build -trimpath -ldflags="-s -w"``. GOFLAGS is set to ``-mod=mod -buildvcs=false``
so a user's GOFLAGS (``-mod=vendor``, ``-mod=readonly``) or a cache inside a Git tree cannot break it.
The file exporter cannot be built this way at v0.165 (its tests' imports are refused): leave it out.

Importing this module does nothing; ``python -m streams.tools.collector_build`` builds otelpipe's
Collector and prints its path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

CACHE_ENV = "OTELPIPE_OTELCOL_CACHE"
DEFAULT_CACHE = "~/.cache/otelpipe/otelcol"
BUILDER_MODULE = "go.opentelemetry.io/collector/cmd/builder"
CORE = "go.opentelemetry.io/collector"
CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
# Changes whenever the build steps change what a manifest builds into: part of the cache key.
RECIPE = 1

# ocb's manifest sections, in the order they are rendered, and the folder of each kind in the
# core and contrib repositories (receiver/otlpreceiver, confmap/provider/envprovider, ...).
KINDS: tuple[str, ...] = ("receivers", "processors", "exporters", "connectors", "extensions", "providers")
_KIND_FOLDERS = {"receivers": "receiver", "processors": "processor", "exporters": "exporter",
                 "connectors": "connector", "extensions": "extension", "providers": "confmap/provider"}

_MODULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~/-]*$")
_VERSION = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CollectorBuildError(RuntimeError):
    """The Collector could not be built: the message says which step failed and ends with the
    last lines of its output."""


@dataclass(frozen=True)
class Component:
    """One component of a Collector: the Go module that holds it, at a version, under an ocb kind."""

    kind: str  # one of KINDS
    module: str  # Go module path, e.g. go.opentelemetry.io/collector/receiver/otlpreceiver
    version: str  # module version, e.g. v0.165.0

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not _MODULE.match(self.module):
            problems.append(f"module {self.module!r} is not a Go module path")
        if not _VERSION.match(self.version):
            problems.append(f"version {self.version!r} is not a Go module version (vMAJOR.MINOR.PATCH)")
        if problems:
            raise ValueError("component: " + "; ".join(problems))

    @property
    def gomod(self) -> str:
        return f"{self.module} {self.version}"


def core(kind: str, name: str, version: str) -> Component:
    """A component of the Collector's core repository: ``core("receivers", "otlpreceiver", "v0.165.0")``."""
    return Component(kind, f"{CORE}/{_KIND_FOLDERS.get(kind, kind)}/{name}", version)


def contrib(kind: str, name: str, version: str) -> Component:
    """A component of the contrib repository: ``contrib("exporters", "kafkaexporter", "v0.165.1")``."""
    return Component(kind, f"{CONTRIB}/{_KIND_FOLDERS.get(kind, kind)}/{name}", version)


@dataclass(frozen=True)
class CollectorManifest:
    """What to build: ocb's version (it decides the core ``otelcol`` version, so keep it equal to the
    core components' version), the binary's name, the components, and optional go.mod ``replaces``
    (``"module => module version"``). Without ``providers`` components, ocb's defaults (env, file,
    http, https, yaml) are built in."""

    builder_version: str
    components: tuple[Component, ...]
    name: str = "otelcol-otelpipe"
    description: str = "OpenTelemetry Collector built for otelpipe"
    replaces: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        problems = []
        if not _VERSION.match(self.builder_version):
            problems.append(f"builder_version {self.builder_version!r} is not a Go module version")
        if not _NAME.match(self.name):
            problems.append(f"name {self.name!r}: letters, digits, '.', '_' and '-' only")
        if not self.components:
            problems.append("components: at least one is needed")
        seen: set[tuple[str, str]] = set()
        for component in self.components:
            if (component.kind, component.module) in seen:
                problems.append(f"components: {component.module} is listed twice under {component.kind}")
            seen.add((component.kind, component.module))
        for replace in self.replaces:
            if "=>" not in replace or "\n" in replace:
                problems.append(f"replaces: {replace!r} is not 'module => module version'")
        if problems:
            raise ValueError("collector manifest: " + "; ".join(problems))

    def render(self, output_path: Path | None = None, go: str | None = None) -> str:
        """ocb's manifest (YAML). ``output_path`` and ``go`` are where this machine builds and with
        which Go; without them the text is the portable manifest the cache key hashes. Components
        are sorted, so the order they were given in does not matter."""
        lines = [f"# OpenTelemetry Collector builder manifest (ocb {self.builder_version}, recipe {RECIPE})",
                 "dist:", f"  name: {self.name}", f"  description: {json.dumps(self.description)}"]
        if output_path is not None:
            lines.append(f"  output_path: {json.dumps(str(output_path))}")
        if go is not None:
            lines.append(f"  go: {json.dumps(go)}")
        for kind in KINDS:
            modules = sorted(c.gomod for c in self.components if c.kind == kind)
            if modules:
                lines.append(f"{kind}:")
                lines.extend(f"  - gomod: {gomod}" for gomod in modules)
        if self.replaces:
            lines.append("replaces:")
            lines.extend(f"  - {json.dumps(replace)}" for replace in sorted(self.replaces))
        return "\n".join(lines) + "\n"

    def key(self) -> str:
        """The cache key: a hash of the portable manifest (builder version and recipe included)."""
        return hashlib.blake2b(self.render().encode(), digest_size=10).hexdigest()


# otelpipe's Collector: what docs/collector.yaml uses (otlp receiver, batch processor, kafka
# exporter), the kafka receiver (to read otelpipe's topics back), and the debug and nop exporters.
CORE_VERSION = "v0.165.0"
CONTRIB_VERSION = "v0.165.1"
OTELPIPE_COLLECTOR = CollectorManifest(
    builder_version=CORE_VERSION,
    components=(
        core("receivers", "otlpreceiver", CORE_VERSION),
        contrib("receivers", "kafkareceiver", CONTRIB_VERSION),
        core("processors", "batchprocessor", CORE_VERSION),
        core("exporters", "nopexporter", CORE_VERSION),
        core("exporters", "debugexporter", CORE_VERSION),
        contrib("exporters", "kafkaexporter", CONTRIB_VERSION),
    ),
)


# The tail sampling peer of bench/tail_sampling.py: the kafka receiver, batch, tail_sampling and nop.
# At v0.165 the tail sampling processor needs a module the Go module proxy refuses at every
# version; v0.155.0 builds with every component at that version.
TAIL_PEER_VERSION = "v0.155.0"
TAIL_PEER_COLLECTOR = CollectorManifest(
    builder_version=TAIL_PEER_VERSION,
    components=(
        contrib("receivers", "kafkareceiver", TAIL_PEER_VERSION),
        core("processors", "batchprocessor", TAIL_PEER_VERSION),
        contrib("processors", "tailsamplingprocessor", TAIL_PEER_VERSION),
        core("exporters", "nopexporter", TAIL_PEER_VERSION),
    ),
)


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The cache folder: ``$OTELPIPE_OTELCOL_CACHE`` or ``~/.cache/otelpipe/otelcol``."""
    env = os.environ if env is None else env
    return Path(os.path.expanduser(env.get(CACHE_ENV) or DEFAULT_CACHE)).resolve()


def binary_path(manifest: CollectorManifest, cache_dir: Path | None = None) -> Path:
    """Where ``manifest``'s binary is (or will be) in the cache."""
    return (cache_dir or cache_root()) / manifest.key() / manifest.name


def cached_binary(manifest: CollectorManifest, cache_dir: Path | None = None) -> Path | None:
    """The binary of an earlier build of ``manifest``, or None."""
    path = binary_path(manifest, cache_dir)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_go() -> str | None:
    """The ``go`` command on PATH, or None."""
    return shutil.which("go")


def build_collector(manifest: CollectorManifest = OTELPIPE_COLLECTOR, *, cache_dir: Path | None = None,
                    go: str | None = None, log: IO[str] | None = None, verbose: bool = False,
                    timeout_s: float = 1800.0) -> Path:
    """The path of a Collector built from ``manifest``: the cached one, else a new build (minutes).

    Progress goes to ``log`` (stderr by default); with ``verbose`` the Go commands' own output too
    (it is always kept: the end of it is in the error of a failed step). Raises
    ``CollectorBuildError`` when Go is missing or a step fails, or after ``timeout_s`` overall
    (waiting for another process's build included).
    """
    root = cache_dir or cache_root()
    found = cached_binary(manifest, root)
    if found is not None:
        return found
    out = log if log is not None else sys.stderr
    go = go or find_go()
    if go is None:
        raise CollectorBuildError("cannot build the OpenTelemetry Collector: `go` is not on PATH "
                                  "(install Go >= 1.25 from https://go.dev/dl/)")
    deadline = time.monotonic() + timeout_s
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / "build.lock", deadline, out):
        found = cached_binary(manifest, root)  # another process may have built it while we waited
        if found is not None:
            _say(out, f"using the Collector another process built: {found}")
            return found
        return _Build(manifest, root, go, out, verbose, deadline).run()


class _Build:
    def __init__(self, manifest: CollectorManifest, root: Path, go: str, out: IO[str], verbose: bool,
                 deadline: float):
        self.manifest = manifest
        self.root = root
        self.go = go
        self.out = out
        self.verbose = verbose
        self.deadline = deadline
        self.key_dir = root / manifest.key()
        self.work = self.key_dir / "work"
        self.env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off", "GOFLAGS": "-mod=mod -buildvcs=false"}

    def run(self) -> Path:
        started = time.monotonic()
        version = self._go_version()
        _say(self.out, f"building the OpenTelemetry Collector {self.manifest.name} ({self.key_dir.name}) with "
                       f"{version}: once per manifest, a few minutes; cache {self.root}")
        builder = self._builder()
        if self.work.exists():
            shutil.rmtree(self.work)  # a build that was interrupted
        self.work.mkdir(parents=True)
        manifest_file = self.key_dir / "manifest.yaml"
        manifest_file.write_text(self.manifest.render(output_path=self.work, go=self.go))

        _say(self.out, "generating the sources and go.mod with ocb (it downloads the modules)")
        generated = self._run("ocb", [str(builder), f"--config={manifest_file}", "--skip-compilation"],
                              cwd=self.key_dir, check=False)
        missing = [name for name in ("go.mod", "main.go", "components.go") if not (self.work / name).is_file()]
        if missing:
            raise CollectorBuildError(f"ocb did not generate {', '.join(missing)} in {self.work}:\n{generated.tail}")
        if generated.returncode != 0:
            _say(self.out, "ocb's own `go mod tidy` failed (a component's tests may import a module the "
                           "proxy refuses); `go mod tidy -e` resolves what the build needs")
        _say(self.out, "go mod tidy -e")
        self._run("go mod tidy", [self.go, "mod", "tidy", "-e"], cwd=self.work)
        _say(self.out, "compiling (the longest step)")
        self._run("go build", [self.go, "build", "-trimpath", "-ldflags=-s -w", "-o", self.manifest.name, "."],
                  cwd=self.work)
        built = self.work / self.manifest.name
        listed = self._run("the built Collector", [str(built), "components"], cwd=self.work, check=False)
        missing = [c.gomod for c in self.manifest.components if f"module: {c.gomod}\n" not in listed.output]
        if listed.returncode != 0 or missing:
            what = ", ".join(missing) or "its components"
            raise CollectorBuildError(f"the built Collector {built} does not list {what}:\n{listed.tail}")
        final = binary_path(self.manifest, self.root)
        os.replace(built, final)  # the cache holds only complete binaries
        shutil.rmtree(self.work, ignore_errors=True)
        _say(self.out, f"built {final} in {time.monotonic() - started:.0f} s")
        return final

    def _go_version(self) -> str:
        answer = self._run("go version", [self.go, "env", "GOVERSION"], cwd=self.root)
        return answer.output.strip() or "go"

    def _builder(self) -> Path:
        """ocb at the manifest's version, installed once per version into the cache."""
        version = self.manifest.builder_version
        folder = self.root / f"builder-{version}"
        builder = folder / "builder"
        if builder.is_file() and os.access(builder, os.X_OK):
            return builder
        _say(self.out, f"installing ocb {version} (go install {BUILDER_MODULE}@{version})")
        folder.mkdir(parents=True, exist_ok=True)
        self._run("go install (ocb)", [self.go, "install", f"{BUILDER_MODULE}@{version}"], cwd=folder,
                  env={**self.env, "GOBIN": str(folder)})
        if not builder.is_file():
            raise CollectorBuildError(f"`go install {BUILDER_MODULE}@{version}` left no {builder}")
        return builder

    def _run(self, step: str, argv: Sequence[str], cwd: Path, check: bool = True,
             env: Mapping[str, str] | None = None) -> _Ran:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise CollectorBuildError(f"{step}: the build ran out of time before this step")
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env or self.env), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as exc:
            raise CollectorBuildError(f"{step}: cannot run {argv[0]}: {exc}") from None
        timer = threading.Timer(remaining, proc.kill)
        timer.start()
        tail: deque[str] = deque(maxlen=60)
        output: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                if len(output) < 5000:
                    output.append(line)
                if self.verbose:
                    self.out.write(f"  {line}")
                    self.out.flush()
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ran = _Ran(proc.returncode, "".join(tail), "".join(output))
        if time.monotonic() >= self.deadline and proc.returncode != 0:
            raise CollectorBuildError(f"{step}: stopped, the build took longer than allowed:\n{ran.tail}")
        if check and proc.returncode != 0:
            raise CollectorBuildError(f"{step} failed (exit {proc.returncode}) in {cwd}:\n{ran.tail}")
        return ran


@dataclass(frozen=True)
class _Ran:
    returncode: int
    tail: str  # the last lines of the output
    output: str  # its first lines (the whole of a short output)


def _say(out: IO[str], text: str) -> None:
    out.write(f"otelcol build: {text}\n")
    out.flush()


@contextmanager
def _build_lock(path: Path, deadline: float, out: IO[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the process ends, however it ends)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            _say(out, f"waiting for the build of {holder} to finish ({path})")
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CollectorBuildError(f"timed out waiting for the build lock {path} "
                                                  f"(held by {holder})") from None
                    time.sleep(1.0)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """Build otelpipe's Collector (or reuse the cached one) and print the binary's path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m streams.tools.collector_build", description=main.__doc__)
    parser.add_argument("--verbose", action="store_true", help="also print the Go commands' output")
    parser.add_argument("--print-manifest", action="store_true", help="print the manifest and exit")
    args = parser.parse_args(argv)
    if args.print_manifest:
        sys.stdout.write(OTELPIPE_COLLECTOR.render())
        return 0
    try:
        print(build_collector(OTELPIPE_COLLECTOR, verbose=args.verbose))
    except CollectorBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
