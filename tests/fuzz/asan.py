"""An AddressSanitizer + UndefinedBehaviorSanitizer copy of streams.otlp._fastotlp, for the fuzzers.

Built with gcc (``-fsanitize=address,undefined -fno-sanitize-recover=all``) from the current
streams/otlp/_fastotlp.c into build/fuzz/asan/ (gitignored), with edge coverage for libFuzzer
(``-fsanitize-coverage=trace-pc``, answered by tests/fuzz/native_cov.c). Rebuilt when the sources
or flags change. The interpreter is not sanitized, so the runtime is preloaded
(``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``) and Python allocates with malloc
(``PYTHONMALLOC=malloc``) so that ASan sees every object's bounds; the fuzz driver loads the copy
named by ``OTELPIPE_FUZZ_FASTOTLP`` in place of the regular build.

``python tests/fuzz/asan.py`` builds it and prints the environment to run a target with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "streams" / "otlp" / "_fastotlp.c"
COVERAGE_SHIM = Path(__file__).resolve().parent / "native_cov.c"
BRIDGE_SOURCE = Path(__file__).resolve().parent / "libfuzzer_bridge.c"
BUILD_DIR = ROOT / "build" / "fuzz" / "asan"
MODULE_ENV = "OTELPIPE_FUZZ_FASTOTLP"

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CFLAGS = ["-O1", "-g", "-fPIC", "-fno-omit-frame-pointer", *SANITIZE]


class Unavailable(Exception):
    """No gcc or no sanitizer runtime here."""


def runtime() -> Path:
    """gcc's libasan.so, to preload."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc not found")
    path = Path(subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                               check=True).stdout.strip())
    if not path.is_absolute() or not path.exists():
        raise Unavailable(f"gcc has no libasan.so ({path})")
    return path


def module_path(build_dir: Path = BUILD_DIR) -> Path:
    return build_dir / ("_fastotlp" + sysconfig.get_config_var("EXT_SUFFIX"))


def bridge_path(build_dir: Path = BUILD_DIR) -> Path:
    return build_dir / "libfuzzer_bridge.so"


def build(build_dir: Path = BUILD_DIR, source: Path = SOURCE, coverage: bool = True) -> Path:
    """Compile (when stale) and return the path of the sanitized extension module (the bridge
    library tests/fuzz/libfuzzer_bridge.c is built beside it)."""
    runtime()
    include = sysconfig.get_paths()["include"]
    flags = CFLAGS + (["-fsanitize-coverage=trace-pc,trace-cmp"] if coverage else [])
    digest = hashlib.sha256()
    for part in (source.read_bytes(), COVERAGE_SHIM.read_bytes(), BRIDGE_SOURCE.read_bytes(),
                 " ".join(flags).encode(), include.encode()):
        digest.update(part)
        digest.update(b"\0")
    stamp = digest.hexdigest()
    out = module_path(build_dir)
    stamp_file = out.with_suffix(".stamp")
    if out.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return out
    build_dir.mkdir(parents=True, exist_ok=True)
    objects = [build_dir / "_fastotlp.o"]
    commands = [["gcc", "-c", *flags, f"-I{include}", str(source), "-o", str(objects[0])]]
    if coverage:
        # the shim itself is not instrumented: its trace-pc handler would call itself
        objects.append(build_dir / "native_cov.o")
        commands.append(["gcc", "-c", "-O2", "-fPIC", str(COVERAGE_SHIM), "-o", str(objects[1])])
    commands.append(["gcc", "-shared", *SANITIZE, *map(str, objects), "-o", str(out)])
    commands.append(["gcc", "-shared", "-fPIC", "-O2", str(BRIDGE_SOURCE), "-o", str(bridge_path(build_dir)), "-ldl"])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    stamp_file.write_text(stamp)
    return out


def environment(module: Path) -> dict[str, str]:
    """Variables to run a fuzz target with the sanitized module: the bridge, then libasan, preloaded
    (libasan not first, hence verify_asan_link_order=0)."""
    return {
        "LD_PRELOAD": f"{bridge_path(module.parent)}:{runtime()}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:symbolize=1:print_summary=1:verify_asan_link_order=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:abort_on_error=1",
        "PYTHONMALLOC": "malloc",
        MODULE_ENV: str(module),
    }


def available() -> bool:
    try:
        runtime()
    except (Unavailable, OSError, subprocess.CalledProcessError):
        return False
    return True


if __name__ == "__main__":
    try:
        path = build()
    except Unavailable as exc:
        sys.exit(f"no AddressSanitizer build: {exc}")
    for key, value in environment(path).items():
        print(f"{key}={value}")
    print(f"# e.g. env $(python {os.path.relpath(__file__)} | grep -v '^#') "
          f"python tests/fuzz/driver.py spans_proto tests/fuzz/corpus/spans_proto")
