"""tests/conftest.py turns every skip under CI into a failure, except the reasons it allows.

Each test runs a real, in-process pytest session (pytest's `pytester`) on small test files, with
the suite's own tests/conftest.py copied in as the inner session's conftest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    return pytester


def _run(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return inner.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "-rA")


SKIPS = """
import pytest

def test_skipped_in_call():
    pytest.skip("needs a tool nobody installed")

@pytest.mark.skipif(True, reason="skipped by a mark")
def test_skipped_by_mark():
    pass

@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("no_such_build_backend_xyz", reason="needs the build backend")

def test_skipped_by_a_fixture(backend):
    pass

def test_runs():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.mark.parametrize("ci", ["true", "1"])
def test_every_skip_fails_under_ci(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    inner.makepyfile(test_skips=SKIPS)
    result = _run(inner, monkeypatch, ci)
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for line in (
        "FAILED *test_skipped_in_call - skipped under CI (needs a tool nobody installed)*",
        "ERROR *test_skipped_by_mark - skipped under CI (skipped by a mark)*",
        "ERROR *test_skipped_by_a_fixture - skipped under CI (needs the build backend)*",
    ):
        result.stdout.fnmatch_lines([line])
    assert "ALLOWED_SKIPS in tests/conftest.py" in result.stdout.str()


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_stay_skips_away_from_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    inner.makepyfile(test_skips=SKIPS)
    result = _run(inner, monkeypatch, ci)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_module_level_skip_fails_collection_under_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(
        test_module_skip='import pytest\npytest.skip("whole module needs X", allow_module_level=True)\n'
        "def test_never():\n    pass\n"
    )
    result = _run(inner, monkeypatch, "true")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skipped under CI (whole module needs X)*"])
    assert _run(inner, monkeypatch, None).ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_an_allowed_reason_passes_only_on_its_platforms(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same rule as the real list, with this platform added for one reason.
    inner.makeconftest(
        CONFTEST.read_text() + f'\nALLOWED_SKIPS["legitimate here"] = frozenset({{"{sys.platform}"}})\n'
    )
    inner.makepyfile(
        test_allowed="import pytest\n"
        'def test_here():\n    pytest.skip("legitimate here")\n'
        'def test_fifo():\n    pytest.skip("FIFOs are POSIX-only")\n'
    )
    result = _run(inner, monkeypatch, "true")
    if sys.platform == "win32":
        result.assert_outcomes(skipped=2)
    else:
        result.assert_outcomes(skipped=1, failed=1)
        result.stdout.fnmatch_lines(["*test_fifo*skipped under CI (FIFOs are POSIX-only)*"])
