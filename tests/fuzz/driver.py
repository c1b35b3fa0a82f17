"""One fuzz target under atheris: ``python tests/fuzz/driver.py TARGET [libFuzzer flags] [corpus dirs]``.

The project's modules (``streams``, ``sinks``, and protobuf's JSON parser) are imported under
``atheris.instrument_imports()``, so their branches guide the fuzzer (the native core's Rust code
is not instrumented: the Python decoder's branches guide libFuzzer there). Usually started by
tests/fuzz/run.py.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

# For a differential target: a folder where each class of disagreement keeps its smallest input
# (and a .txt with the message) while fuzzing goes on, instead of stopping at the first one.
COLLECT_ENV = "OTELPIPE_FUZZ_COLLECT"
INSTRUMENTED = ["streams", "sinks", "google.protobuf.json_format"]


def disagreement_class(message: str) -> str:
    """A file-name-safe class of a differential finding: its message without values."""
    text = message.split("disagree: ", 1)[-1]
    refused = re.match(r"only the (\w+) decoder refuses \((\w+): (.*)\); the other", text, re.DOTALL)
    if refused:
        side, reason, detail = refused.groups()
        detail = detail.split("(looks like")[0].rstrip(" .").rsplit(": ", 1)[-1]
        text = f"{side} only refuses {reason} {detail}"
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
    logging.disable(logging.CRITICAL)  # the tail worker logs every record it skips

    # third-party modules first, uninstrumented (only INSTRUMENTED names are)
    import fastavro  # noqa: F401
    import google.protobuf  # noqa: F401
    import orjson  # noqa: F401
    import pydantic  # noqa: F401

    with atheris.instrument_imports(include=INSTRUMENTED, enable_loader_override=False):
        from tests.fuzz import targets
    if name not in targets.TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(targets.TARGETS)}")
    check = targets.TARGETS[name]
    if os.environ.get(COLLECT_ENV) and name in targets.DIFFERENTIAL:
        check = collecting(check, Path(os.environ[COLLECT_ENV]), targets.ContractViolation)
    print(f"INFO: target {name}", file=sys.stderr)
    atheris.Setup([argv[0], *argv[2:]], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
