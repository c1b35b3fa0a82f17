"""Every fuzz target for a few seconds (about 70 s in all on 2 cores): a new crash or broken
contract fails the test, with its input saved under build/fuzz/crashes/<target>/ (see
tests/fuzz/run.py; ``make fuzz`` runs longer).

FUZZ_BOUNDED_SECONDS sets the seconds per target (0 skips the test)."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz import run

import importlib.util  # noqa: E402
import platform  # noqa: E402

if platform.system() == "Linux" and platform.machine() == "x86_64":  # in the test extras: missing fails
    assert importlib.util.find_spec("atheris"), "atheris is not installed (pip install -e '.[test]')"
else:  # atheris publishes wheels for Linux x86-64 only
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform")

SECONDS = int(os.environ.get("FUZZ_BOUNDED_SECONDS", "14"))
TARGETS = run.CRASH_SAFETY + run.DIFFERENTIAL  # the native decoder agrees with protobuf: gating too


@pytest.mark.skipif(SECONDS <= 0, reason="FUZZ_BOUNDED_SECONDS=0")
@pytest.mark.timeout(SECONDS * len(TARGETS) + 400)
def test_fuzz_targets_for_a_bounded_time(tmp_path):
    work = tmp_path / "fuzz"  # seeds only: the same work on every machine, whatever build/fuzz holds
    outcomes = []
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda t: run.run_target(t, SECONDS, work), TARGETS))
    finally:
        kept = run.WORK / "crashes"
        for outcome in outcomes:  # keep what failed where run.py keeps it
            for artifact in outcome.artifacts:
                (kept / outcome.target).mkdir(parents=True, exist_ok=True)
                shutil.copy(artifact, kept / outcome.target / artifact.name)
    report = "\n".join(o.line() for o in outcomes)
    print(report)
    failed = [o for o in outcomes if o.failed]
    details = ""
    for o in failed:
        tail = Path(o.log).read_text(errors="replace").splitlines()[-60:] if o.log else []
        details += f"\n--- {o.target} (exit {o.returncode}) ---\n" + "\n".join(tail)
    assert not failed, report + details
    assert all(o.executions > 0 for o in outcomes), report
