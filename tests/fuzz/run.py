"""Run fuzz targets for a bounded time: ``python tests/fuzz/run.py --target spans_proto --seconds 60``.

Each target runs in its own process (tests/fuzz/driver.py under atheris/libFuzzer) for ``--seconds``,
from the committed seeds (tests/fuzz/corpus/<target>/ and tests/fuzz/regressions/<target>/) plus a
working corpus that grows across runs (build/fuzz/corpus/<target>/, gitignored). A crash (an uncaught
exception, a broken contract, an AddressSanitizer or UBSan report, a timeout, running out of
memory) is saved under build/fuzz/crashes/<target>/ and makes the exit status nonzero; the log of
each run is build/fuzz/logs/<target>.log.

``--all`` runs the crash-safety targets (everything but the slower agreement checks
native_differential and native_logs_differential); ``--differential`` adds them, and ``--collect`` makes it go on past a
disagreement, keeping the smallest input of each class in build/fuzz/disagreements/<target>/.
``--jobs`` runs that many targets at once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORK = ROOT / "build" / "fuzz"
SEEDS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
# kept in step with tests.fuzz.targets (not imported here: the runner does not need the project's deps)
CRASH_SAFETY = ["spans_proto", "logs_proto", "metrics_proto", "otlp_json", "envelope", "stages"]
DIFFERENTIAL = ["native_differential", "native_logs_differential"]
TARGETS = CRASH_SAFETY + DIFFERENTIAL
ARTIFACT_KINDS = ("crash-", "timeout-", "oom-", "leak-")
COLLECT_ENV = "OTELPIPE_FUZZ_COLLECT"  # tests/fuzz/driver.py


@dataclass
class Outcome:
    target: str
    returncode: int
    seconds: float
    executions: int = 0
    exec_per_sec: int = 0
    coverage: int = 0
    features: int = 0
    new_units: int = 0
    artifacts: list[Path] = field(default_factory=list)
    log: Path | None = None

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.artifacts)

    def line(self) -> str:
        status = "FAIL" if self.failed else "ok"
        text = (f"{self.target:<20} {status:<4} {self.executions:>9} inputs  {self.exec_per_sec:>6}/s  "
                f"cov {self.coverage:>5} ft {self.features:>6}  new {self.new_units:>4}  "
                f"{self.seconds:6.1f}s")
        for path in self.artifacts:
            text += f"\n    {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
        if self.failed and self.log is not None:
            text += f"\n    log: {self.log}"
        return text


def _stat(log: str, name: str) -> int:
    match = re.search(rf"stat::{name}:\s+(\d+)", log)
    return int(match.group(1)) if match else 0


def _last_status(log: str) -> tuple[int, int, int]:
    """(executions, cov, ft) from libFuzzer's last status line."""
    found = re.findall(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+)", log, re.MULTILINE)
    if not found:
        return 0, 0, 0
    n, cov, ft = found[-1]
    return int(n), int(cov), int(ft)


def run_target(target: str, seconds: int, work: Path = WORK, max_len: int = 8192,
               extra: list[str] | None = None, python: str = sys.executable, collect: bool = False) -> Outcome:
    corpus = work / "corpus" / target
    crashes = work / "crashes" / target
    logs = work / "logs"
    for d in (corpus, crashes, logs):
        d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop(COLLECT_ENV, None)
    if collect and target in DIFFERENTIAL:
        env[COLLECT_ENV] = str(work / "disagreements" / target)
    seeds = [str(d) for d in (SEEDS / target, REGRESSIONS / target) if d.is_dir() and any(d.iterdir())]
    command = [python, str(HERE / "driver.py"), target,
               f"-max_total_time={seconds}", "-print_final_stats=1", f"-artifact_prefix={crashes}/",
               "-timeout=30", "-rss_limit_mb=6144", f"-max_len={max_len}", *(extra or []),
               str(corpus), *seeds]
    before = set(crashes.iterdir())
    log_path = logs / f"{target}.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=seconds + 180)  # startup and the final merge included
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            log.write(f"\nrun.py: killed after {seconds + 180} s\n".encode())
    elapsed = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    executions, cov, ft = _last_status(text)
    artifacts = sorted(p for p in set(crashes.iterdir()) - before if p.name.startswith(ARTIFACT_KINDS))
    return Outcome(target, returncode, elapsed, _stat(text, "number_of_executed_units") or executions,
                   _stat(text, "average_exec_per_sec"), cov, ft, _stat(text, "new_units_added"), artifacts,
                   log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=TARGETS, help="a target (repeatable)")
    parser.add_argument("--all", action="store_true", help="every crash-safety target")
    parser.add_argument("--differential", action="store_true",
                        help="also the agreement checks (native_differential, native_logs_differential)")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at once (default 1)")
    parser.add_argument("--max-len", type=int, default=8192, help="largest input libFuzzer makes")
    parser.add_argument("--collect", action="store_true",
                        help="differential targets go on past a disagreement, keeping one input per class "
                             "in build/fuzz/disagreements/<target>/")
    parser.add_argument("--work", type=Path, default=WORK, help="corpus, crashes and logs (default build/fuzz)")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)
    targets = list(args.target or [])
    if args.all:
        targets += [t for t in CRASH_SAFETY if t not in targets]
    if args.differential:
        targets += [t for t in DIFFERENTIAL if t not in targets]
    if not targets:
        parser.error("name a --target, or --all")
    print(f"fuzzing {', '.join(targets)} for {args.seconds} s each, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_target, t, args.seconds, args.work, args.max_len, args.libfuzzer,
                               collect=args.collect) for t in targets]
        outcomes = []
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            print(outcome.line(), flush=True)
    failed = [o.target for o in outcomes if o.failed]
    total = sum(o.executions for o in outcomes)
    print(f"{len(outcomes)} targets, {total} inputs, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
