"""One fuzz target under atheris: ``python tests/fuzz/driver.py TARGET [libFuzzer flags] [corpus dirs]``.

The project's modules (``streams``, ``sinks``, and protobuf's JSON parser) are imported under
``atheris.instrument_imports()``, so their branches guide the fuzzer. With ``OTELPIPE_FUZZ_FASTOTLP``
naming a sanitized copy of streams.otlp._fastotlp (tests/fuzz/asan.py builds one), that copy is
loaded in its place, and its edge counters (tests/fuzz/native_cov.c) are handed to libFuzzer, so
the C span reader's branches guide it too. Usually started by tests/fuzz/run.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

MODULE_ENV = "OTELPIPE_FUZZ_FASTOTLP"
# For a differential target: a folder where each class of disagreement keeps its smallest input
# (and a .txt with the message) while fuzzing goes on, instead of stopping at the first one.
COLLECT_ENV = "OTELPIPE_FUZZ_COLLECT"
INSTRUMENTED = ["streams", "sinks", "google.protobuf.json_format"]


def _load_module_copy(path: str):
    """Put the extension at ``path`` where ``from streams.otlp import _fastotlp`` finds it."""
    import streams.otlp

    spec = importlib.util.spec_from_file_location("streams.otlp._fastotlp", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{MODULE_ENV}={path}: not an extension module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    streams.otlp._fastotlp = module
    return module


def _libfuzzer_functions() -> tuple[int, int] | None:
    """Addresses of libFuzzer's counter and PC-table registration in atheris' loaded core."""
    core = Path(atheris.__file__).parent / ("core_with_libfuzzer" + sysconfig.get_config_var("EXT_SUFFIX"))
    for mode in (os.RTLD_NOLOAD | os.RTLD_GLOBAL, os.RTLD_GLOBAL):
        try:
            lib = ctypes.CDLL(str(core), mode=mode)
            break
        except OSError:
            continue
    else:
        return None
    try:
        counters = ctypes.cast(lib.__sanitizer_cov_8bit_counters_init, ctypes.c_void_p).value
        pcs = ctypes.cast(lib.__sanitizer_cov_pcs_init, ctypes.c_void_p).value
    except AttributeError:
        return None
    return counters, pcs


def disagreement_class(message: str) -> str:
    """A file-name-safe class of a differential finding: its message without values."""
    text = message.split("disagree: ", 1)[-1]
    refused = re.match(r"only the (\w+) decoder refuses \((\w+): (.*)\); the other", text, re.DOTALL)
    if refused:
        side, reason, detail = refused.groups()
        detail = detail.split("(looks like")[0].rstrip(" .").rsplit(": ", 1)[-1]
        text = f"{side} only refuses {reason} {detail}"
    elif ": C vs Python" in text:
        text = text.split(": C vs Python", 1)[0]
    elif ": native vs Python" in text:
        text = text.split(": native vs Python", 1)[0]
    text = re.sub(r"'[^']*'|\"[^\"]*\"|(?<![\w-])\d+", "", text)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "other"


def collecting(check, folder: Path, violation: type):
    """``check`` that records each class of ``violation`` in ``folder`` (smallest input kept) and goes on."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(data: bytes) -> None:
        try:
            check(data)
        except violation as exc:
            name = disagreement_class(str(exc))
            path = folder / name
            if not path.exists() or len(data) < path.stat().st_size:
                path.write_bytes(data)
                path.with_suffix(".txt").write_text(str(exc) + "\n")
                print(f"INFO: disagreement {name} ({len(data)} bytes)", file=sys.stderr)

    return run


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit(__doc__)
    name = argv[1]
    module_copy = os.environ.get(MODULE_ENV)
    logging.disable(logging.CRITICAL)  # the tail worker logs every record it skips

    # third-party modules first, uninstrumented (only INSTRUMENTED names are)
    import fastavro  # noqa: F401
    import google.protobuf  # noqa: F401
    import orjson  # noqa: F401
    import pydantic  # noqa: F401

    with atheris.instrument_imports(include=INSTRUMENTED, enable_loader_override=False):
        native = _load_module_copy(module_copy) if module_copy else None
        from streams.otlp import decode
        from tests.fuzz import targets
    if name not in targets.TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(targets.TARGETS)}")
    if module_copy and decode._fastotlp is not native:
        raise SystemExit(f"streams.otlp.decode did not load {module_copy}")
    check = targets.TARGETS[name]
    if os.environ.get(COLLECT_ENV) and name in targets.DIFFERENTIAL:
        check = collecting(check, Path(os.environ[COLLECT_ENV]), targets.ContractViolation)
    cov_register = getattr(ctypes.CDLL(module_copy), "fuzz_cov_register", None) if module_copy else None
    pending = [cov_register is not None]

    def test_one_input(data: bytes) -> None:
        if pending[0]:  # atheris loads libFuzzer's core when fuzzing starts: register with it now
            pending[0] = False
            functions = _libfuzzer_functions()
            if functions is not None:
                cov_register.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
                slots = cov_register(*functions)
                print(f"INFO: {slots} native edge counters of {Path(module_copy).name}", file=sys.stderr)
        check(data)

    print(f"INFO: target {name}; streams.otlp._fastotlp from "
          f"{getattr(decode._fastotlp, '__file__', None)}", file=sys.stderr)
    atheris.Setup([argv[0], *argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
