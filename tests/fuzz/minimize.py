"""Shrink an input that fails a target's check to a small one that fails the same way.

``python tests/fuzz/minimize.py TARGET INPUT [-o OUT]`` replays INPUT through the check function of
TARGET (tests/fuzz/targets.py) in this process, then removes chunks of bytes (delta debugging) while
the failure keeps its signature: the exception type and the line it was raised at (for a
ContractViolation also its message without values). Prints the traceback of the smallest input.
For a sanitizer report (a crash of the process, not an exception) rerun the input under
tests/fuzz/driver.py with the AddressSanitizer environment instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.targets import KNOWN_ISSUES, TARGETS, ContractViolation  # noqa: E402


def signature(check, data: bytes) -> tuple | None:
    """How ``check(data)`` fails (None: it passes)."""
    try:
        check(data)
    except Exception as exc:  # noqa: BLE001 - any failure is what is being minimized
        frames = traceback.extract_tb(exc.__traceback__)
        where = (Path(frames[-1].filename).name, frames[-1].lineno) if frames else None
        what = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "", str(exc))[:120] if isinstance(exc, ContractViolation) else ""
        return type(exc).__name__, where, what
    return None


def minimize(check, data: bytes, budget: int = 20_000) -> bytes:
    wanted = signature(check, data)
    if wanted is None:
        raise SystemExit("the input passes the check: nothing to minimize")
    tries = 0
    chunks = 2
    while len(data) >= 1 and tries < budget:
        size = max(1, len(data) // chunks)
        shrunk = False
        start = 0
        while start < len(data) and tries < budget:
            candidate = data[:start] + data[start + size:]
            tries += 1
            if signature(check, candidate) == wanted:
                data = candidate
                shrunk = True
            else:
                start += size
        if not shrunk:
            if size == 1:
                break
            chunks = min(len(data), chunks * 2)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help=f"one of {', '.join(TARGETS)}, or known:<issue>")
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="where to write the minimized input (default: print it)")
    args = parser.parse_args(argv)
    if args.target.startswith("known:"):
        check = KNOWN_ISSUES[args.target[6:]].check
    else:
        check = TARGETS[args.target]
    small = minimize(check, args.input.read_bytes())
    print(f"{args.input.stat().st_size} -> {len(small)} bytes: {small!r}")
    try:
        check(small)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
