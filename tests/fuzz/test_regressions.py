"""Every input the fuzzers found, replayed through its target's check function (tests/fuzz/targets.py).

- tests/fuzz/regressions/<target>/<name>: fixed findings; each must pass its target's check
  (for native_differential, inputs on which a span reader of otelpipe's own once disagreed with protobuf).
- tests/fuzz/regressions/known/<issue>/<name>: reported findings not fixed yet (``KNOWN_ISSUES``);
  each must still fail (strict xfail): once the fix lands the test says so, and the input moves to
  regressions/<target>/.
- the seed corpus (tests/fuzz/corpus/<target>/) through the gating targets: the seeds are valid
  and hostile requests the contract covers.
"""

from pathlib import Path

import pytest

from tests.fuzz.targets import CRASH_SAFETY, DIFFERENTIAL, KNOWN_ISSUES, TARGETS

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
CORPUS = HERE / "corpus"


def _inputs(root: Path, names) -> list:
    kind = root.name
    return [pytest.param(name, path, id=f"{kind}/{name}/{path.name}")
            for name in names for path in sorted((root / name).glob("*")) if path.is_file()]


@pytest.mark.parametrize("target, path", _inputs(REGRESSIONS, CRASH_SAFETY) + _inputs(CORPUS, CRASH_SAFETY))
def test_fixed_findings_and_seeds_pass(target, path):
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target, path", _inputs(REGRESSIONS, sorted(DIFFERENTIAL)))
def test_decoders_agree_on_past_disagreements(target, path):
    """Each input once made the C decoder store what protobuf refuses; both now agree."""
    TARGETS[target](path.read_bytes())


if KNOWN_ISSUES:  # none today: no test that would only ever report an empty parameter set
    @pytest.mark.parametrize("issue, path", _inputs(REGRESSIONS / "known", KNOWN_ISSUES))
    def test_known_findings_still_fail(issue, path):
        known = KNOWN_ISSUES[issue]
        try:
            known.check(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - the finding is any failure of the check
            pytest.xfail(f"known issue {issue}: {known.summary} ({type(exc).__name__})")
        pytest.fail(f"{issue} no longer fails on {path.name}: move its inputs to regressions/{known.target}/ "
                    "and take it out of KNOWN_ISSUES")


def test_known_issue_folders_are_registered():
    known = REGRESSIONS / "known"
    folders = {p.name for p in known.iterdir() if p.is_dir()} if known.exists() else set()
    assert folders <= set(KNOWN_ISSUES), folders - set(KNOWN_ISSUES)
    targets = {p.name for p in REGRESSIONS.iterdir() if p.is_dir() and p.name != "known"}
    assert targets <= set(TARGETS), targets - set(TARGETS)
