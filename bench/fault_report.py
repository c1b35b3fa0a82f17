"""Run the fault-injection tests and print what each fault cost: records produced, lost, duplicated.

    make faults     (or: .venv/bin/python bench/fault_report.py)

Drives the real local broker and chDB through: ClickHouse unreachable then back, the broker
stopped and restarted under a running worker, `kill -9` of the worker three times mid-stream,
thousands of malformed messages among good ones, and a hostile stream on every source topic (see
tests/integration/test_faults.py, test_hostile_stream.py and test_pipeline.py). The same tests run in `make test`; here they also write their figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.cli.render import format_table  # noqa: E402


def main() -> int:
    report = Path(tempfile.mkdtemp(prefix="otelpipe-faults-")) / "faults.jsonl"
    env = {**os.environ, "OTELPIPE_FAULT_REPORT": str(report)}
    tests = ["tests/integration/test_faults.py", "tests/integration/test_hostile_stream.py",
             "tests/integration/test_pipeline.py::test_kill_9_mid_stream_and_restart_gives_exact_rows"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env)
    rows = []
    if report.exists():
        for line in report.read_text().splitlines():
            r = json.loads(line)
            rows.append([r["fault"], f"{r['produced']} {r['unit']}", r["stored"], r["lost"], r["duplicated"],
                         r["seconds"]])
    print(format_table(["fault injected", "produced", "stored", "lost", "duplicated", "seconds to all stored"],
                       rows, max_width=70))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
