"""`vmsbx verify`'s pure parts: the attempt table, parsing hostile output, verdicts, loosenings.

The attacks themselves run on the real guest (tests/vm/test_verify.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from launch_samples import sample_request

from vmsbx.verify.attempts import ATTEMPTS, BY_NAME, CATEGORIES
from vmsbx.verify.loosen import LOOSENINGS, loosen_request
from vmsbx.verify.verdict import Observation, RunFacts, judge, merge_aftermath, parse

GUEST_ATTEMPTS = Path(__file__).parents[2] / "provision" / "verify" / "attempts.py"


def guest_module() -> object:
    """provision/verify/attempts.py, the guest side (imported, not run)."""
    spec = importlib.util.spec_from_file_location("verify_guest_attempts", GUEST_ATTEMPTS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MiB = 1 << 20


def facts(**overrides: object) -> RunFacts:
    values: dict[str, object] = {
        "exit_code": 0, "reason": "exited with code 0", "memory_max": 512 * MiB,
        "memory_peak": 100 * MiB, "healthy_before": True, "healthy_after": True,
    }  # fmt: skip
    values.update(overrides)
    return RunFacts.model_validate(values)


def line(name: str, result: str, detail: str = "") -> bytes:
    return f"VMSBX-VERIFY\t{name}\t{result}\t{detail}\n".encode()


def everything(result: str) -> dict[str, Observation]:
    return {a.name: Observation(succeeded=result == "ok", detail=result) for a in ATTEMPTS}


def test_at_least_thirty_attempts_covering_every_category() -> None:
    assert len(ATTEMPTS) >= 30
    assert len(BY_NAME) == len(ATTEMPTS)
    assert {a.category for a in ATTEMPTS} == set(CATEGORIES)


def test_every_attempt_has_a_guest_function_and_every_guest_attempt_a_row() -> None:
    guest = guest_module()
    in_guest = set(guest.ATTEMPTS)  # type: ignore[attr-defined]
    assert {a.name for a in ATTEMPTS if a.kind != "health"} == in_guest
    persistent = {a.name for a in ATTEMPTS if a.kind == "persistent"}
    assert persistent == set(guest.PERSISTENT)  # type: ignore[attr-defined]


def test_the_memory_bomb_is_the_last_attempt_in_the_run() -> None:
    # When the limit holds the sandbox ends the whole run: nothing may come after it.
    assert list(guest_module().ATTEMPTS)[-1] == "memory_bomb"  # type: ignore[attr-defined]


def test_the_guest_side_never_spells_the_canary_prefix_in_one_piece() -> None:
    # Otherwise the file search would find the attempt script itself.
    from vmsbx.verify.suite import CANARY_PREFIX

    assert CANARY_PREFIX not in GUEST_ATTEMPTS.read_text()
    assert guest_module().CANARY == CANARY_PREFIX  # type: ignore[attr-defined]


def test_parse_keeps_only_well_formed_lines_of_known_attempts() -> None:
    output = b"".join([
        b"noise\n",
        line("shadow_read", "fail", "Permission denied\x1b[31m"),
        line("shadow_read", "ok", "a second claim is ignored"),
        line("no_such_attempt", "ok"),
        line("etc_write", "maybe"),
        b"VMSBX-VERIFY\tsu_root\n",
        b"  " + line("mount", "ok"),
        line("bpf", "ok", "x" * 1000),
    ])  # fmt: skip
    seen = parse(output)
    assert set(seen) == {"shadow_read", "bpf"}
    assert seen["shadow_read"] == Observation(succeeded=False, detail="Permission denied")
    assert seen["bpf"].succeeded and len(seen["bpf"].detail) == 300


def test_an_attempt_that_got_through_fails_and_a_blocked_one_passes() -> None:
    inside = everything("fail") | {"shadow_read": Observation(succeeded=True, detail="read /etc/shadow")}
    results = {r.attempt: r for r in judge(inside, everything("ok"), facts())}
    assert results["shadow_read"].verdict == "FAIL"
    assert results["shadow_read"].observed == "got through: read /etc/shadow"
    assert results["etc_write"].verdict == "pass"
    assert [r.verdict for r in results.values()].count("FAIL") == 1


def test_a_control_that_failed_makes_the_attempt_inconclusive_never_a_pass() -> None:
    control = everything("ok") | {"bpf": Observation(succeeded=False, detail="no bpf here")}
    results = {r.attempt: r for r in judge(everything("fail"), control, facts())}
    assert results["bpf"].verdict == "inconclusive"
    missing = {k: v for k, v in everything("ok").items() if k != "ptrace"}
    assert {r.attempt: r for r in judge(everything("fail"), missing, facts())}[
        "ptrace"
    ].verdict == "inconclusive"


def test_an_attempt_that_did_not_report_is_inconclusive() -> None:
    inside = {k: v for k, v in everything("fail").items() if k != "icmp"}
    assert {r.attempt: r for r in judge(inside, everything("ok"), facts())}["icmp"].verdict == "inconclusive"


def test_memory_is_judged_from_systemds_numbers() -> None:
    inside = {k: v for k, v in everything("fail").items() if k != "memory_bomb"}
    killed = facts(oom_kills=1, memory_peak=500 * MiB, reason="out of memory", exit_code=137)
    assert {r.attempt: r for r in judge(inside, everything("ok"), killed)}["memory_bomb"].verdict == "pass"
    # The run's own "I was stopped" line is not enough when systemd saw it go above the limit.
    over = facts(memory_peak=600 * MiB)
    assert {r.attempt: r for r in judge(everything("fail"), everything("ok"), over)}[
        "memory_bomb"
    ].verdict == ("inconclusive")
    # And a claim of success is a failure whatever the numbers.
    got = everything("fail") | {"memory_bomb": Observation(succeeded=True, detail="allocated")}
    assert {r.attempt: r for r in judge(got, everything("ok"), facts())}["memory_bomb"].verdict == "FAIL"


def test_an_unhealthy_guest_after_the_run_fails() -> None:
    sick = facts(healthy_after=False, health_detail="a fresh run did not start")
    result = {r.attempt: r for r in judge(everything("fail"), everything("ok"), sick)}["guest_healthy"]
    assert result.verdict == "FAIL"
    assert "did not start" in result.observed


def test_persistence_is_judged_by_what_is_left_after_the_run() -> None:
    run = {"var_tmp_persist": Observation(succeeded=True, detail="written to the run's own /var/tmp")}
    after = {"var_tmp_persist": Observation(succeeded=False, detail="nothing left")}
    merged = merge_aftermath(run, after)
    assert not merged["var_tmp_persist"].succeeded
    assert "written to the run's own /var/tmp" in merged["var_tmp_persist"].detail
    # Without root's look afterwards, a write proves nothing either way.
    assert "var_tmp_persist" not in merge_aftermath(run, {})


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_each_loosening_removes_only_its_wall(mode: str) -> None:
    request = sample_request(mode)
    argv = request.systemd_run
    for loosening in LOOSENINGS[mode]:
        assert set(loosening.catches) <= set(BY_NAME)
        loosened = loosen_request(request, loosening)
        after = loosened.systemd_run
        removed = [p for p in argv if p not in after]
        assert removed, loosening.name
        assert all(p == "-p" or p.startswith(loosening.unit_properties) for p in removed)
        assert len(argv) - len(after) == 2 * sum(1 for p in argv if p.startswith(loosening.unit_properties))
        if loosening.jail_lines:
            assert loosened.jail is not None
            assert "clone_newnet: false" in loosened.jail.config
