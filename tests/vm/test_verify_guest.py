"""`vmsbx verify` on the real guest, in both sandbox modes: every attempt is stopped inside the
sandbox and works outside it (its positive control), the guest and vmsbx stay healthy, and
verify leaves nothing behind. `--self-test` takes walls down one at a time and must notice each.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

LEFTOVERS = """
systemctl list-units 'vmsbx-verify-*' --all --plain --no-legend
ls -A /var/lib/vmsbx/verify 2>/dev/null
ls -A /var/lib/private | grep decoy
find /etc /usr/local /var/tmp /root -name 'vmsbx-verify-*' 2>/dev/null
true
"""


def _not_passed(results: list[dict[str, str]]) -> str:
    return "\n".join(
        f"{r['attempt']}: {r['verdict']}; inside: {r['observed']}; outside: {r['control']}"
        for r in results
        if r["verdict"] != "pass"
    )


def _leftovers(cli: Cli) -> str:
    return cli.ok("ssh", "--", "sh", "-c", LEFTOVERS).stdout.decode().strip()


def test_verify_json_every_attempt_held_in_systemd_mode(cli: Cli, default_vm: dict[str, object]) -> None:
    started = time.monotonic()
    done = cli.run("verify", "--sandbox", "systemd", "--json", timeout=1800)
    print(f"verify (systemd) took {time.monotonic() - started:.0f} s")
    assert done.stdout, done.stderr.decode(errors="replace")
    report = json.loads(done.stdout)
    results = report["results"]
    assert len(results) >= 30
    assert {r["category"] for r in results} >= {
        "host reach", "guest files", "persistence", "privilege", "services", "terminal", "network",
        "resources", "secrets",
    }  # fmt: skip
    assert _not_passed(results) == ""
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (report["sandbox"], report["network"]) == ("systemd", "api")  # the default policy
    # The attack run is a real, recorded run of the sandbox.
    record = json.loads((cli.home / "runs" / report["run_id"] / "run.json").read_text())
    assert record["sandbox"] == "systemd"
    assert record["command"][:2] == ["python3", "attempts.py"]
    assert _leftovers(cli) == ""


def test_verify_table_every_attempt_held_in_nsjail_mode(cli: Cli, default_vm: dict[str, object]) -> None:
    started = time.monotonic()
    done = cli.run("verify", "--sandbox", "nsjail", timeout=1800)
    print(f"verify (nsjail) took {time.monotonic() - started:.0f} s")
    out = done.stdout.decode(errors="replace")
    print(out)
    assert done.returncode == 0, out + done.stderr.decode(errors="replace")
    summary = re.search(r"(\d+) of (\d+) attempts held, (\d+) got through, (\d+) inconclusive", out)
    assert summary, out
    held, total, through, inconclusive = map(int, summary.groups())
    assert (held, through, inconclusive) == (total, 0, 0) and total >= 30
    for column in ("ATTEMPT", "CATEGORY", "EXPECTED", "VERDICT"):
        assert column in out
    assert _leftovers(cli) == ""


def test_self_test_reports_each_wall_taken_down(cli: Cli, default_vm: dict[str, object]) -> None:
    started = time.monotonic()
    done = cli.run("verify", "--sandbox", "systemd", "--self-test", "--json", timeout=1800)
    print(f"verify --self-test took {time.monotonic() - started:.0f} s")
    outcomes = json.loads(done.stdout)
    assert {o["loosening"] for o in outcomes} == {
        "network", "process_view", "system_bus", "namespaces", "capabilities",
    }  # fmt: skip
    missed = [o for o in outcomes if not o["caught"]]
    assert missed == [], missed
    for o in outcomes:
        assert o["reported_failing"] == o["must_fail"]
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert _leftovers(cli) == ""
    # The loosened runs were verify's own: a plain run afterwards has every wall back.
    plain = cli.run("run", "--workspace-size", "64M", "--", "sh", "-c", "cat /proc/self/status | grep CapBnd")
    assert plain.stdout.decode().split() == ["CapBnd:", "0000000000000000"], plain.stdout
