"""The host↔guest contract (vmsbx.contract): stdlib only, and strict both ways.

The launch request is pinned by golden JSON per sandbox mode: regenerate after an intended
change with VMSBX_TEST_UPDATE_GOLDEN=1 and review the diff (the guest reads exactly this).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from goldens import check_golden
from launch_samples import sample_request

from vmsbx import contract
from vmsbx.contract import (
    ContractError,
    Jail,
    Launched,
    LaunchRequest,
    ProjectPaths,
    RunPaths,
    RunSpec,
    Sizes,
)


def _imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(modules imported at run time, modules imported only under TYPE_CHECKING)."""
    runtime: set[str] = set()
    typing_only: set[str] = set()
    for node in tree.body:
        target = runtime
        nodes: list[ast.stmt] = [node]
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            target, nodes = typing_only, node.body
        for stmt in nodes:
            if isinstance(stmt, ast.Import):
                target.update(alias.name.split(".")[0] for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom):
                assert stmt.level == 0, "the guest has the contract as a flat module: no relative import"
                target.add((stmt.module or "").split(".")[0])
    # No import hides inside a function or a class either, but one: mirror_digest's hashlib
    # (~50 ms under TCG), which only the verbs that list or check a mirror pay for; the session
    # holder, in every run, never does.
    nested = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in _top(tree)
    ]
    assert nested in ([], ["import hashlib"]), f"imports below the top level: {nested}"
    return runtime, typing_only


def _top(tree: ast.Module) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for node in tree.body:
        out.append(node)
        if isinstance(node, ast.If):
            out.extend(node.body)
    return out


def test_the_contract_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(contract.__file__).read_text(encoding="utf-8"))
    runtime, typing_only = _imports(tree)
    assert runtime <= set(sys.stdlib_module_names) | {"__future__"}, runtime
    # Every guest call pays for each import (a Python start under TCG): only these, never typing
    # or dataclasses (which pulls inspect) at run time.
    assert runtime <= {"__future__", "base64", "binascii", "json", "re", "struct"}, runtime
    assert typing_only <= {"typing"}, typing_only


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_launch_request_matchescheck_golden(mode: str) -> None:
    request = sample_request(mode)
    check_golden(f"launch_request_{mode}.json", json.dumps(request.to_dict(), indent=2) + "\n")


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_launch_request_round_trips_through_its_json(mode: str) -> None:
    request = sample_request(mode)
    line = request.to_json()
    assert "\n" not in line  # the launcher reads it as its stdin's first line
    assert LaunchRequest.from_json(line) == request
    assert LaunchRequest.from_json(line).to_json() == line


def _request_dict() -> dict[str, object]:
    data = sample_request("nsjail").to_dict()
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda d: d.update(nsjail={"config": "x", "outside_uid": 60001}), "unknown field(s) 'nsjail'"),
        (lambda d: d.pop("sizes"), "missing field(s) sizes"),
        (lambda d: d["sizes"].update(tmp="1G"), "LaunchRequest.sizes.tmp: expected an integer, got str"),
        (lambda d: d["sizes"].update(tmp=True), "LaunchRequest.sizes.tmp: expected an integer, got bool"),
        (lambda d: d["spec"].pop("home_files"), "LaunchRequest.spec: missing field(s) home_files"),
        (lambda d: d["spec"].update(term="vt100"), "LaunchRequest.spec: unknown field(s) 'term'"),
        (lambda d: d["spec"].update(argv="true"), "LaunchRequest.spec.argv: expected a list, got str"),
        (lambda d: d["spec"]["env"].update(X=1), "LaunchRequest.spec.env.X: expected a string, got int"),
        (lambda d: d["jail"].update(outside_uid=0), "is not in vmsbx's jail range 60000-60999"),
        (lambda d: d.update(run_id="../../etc"), "invalid run id '../../etc'"),
        (lambda d: d.update(project="nope"), "invalid project id 'nope'"),
        (lambda d: d.update(systemd_run=["sh", "-c", "id"]), "must be a systemd-run command line"),
        (lambda d: d["bridges"].update(ftp=21), "unknown bridge 'ftp'"),
        (lambda d: d["bridges"].update(relay=0), "port 0 is out of range"),
        (lambda d: d["spec"]["bridges"].update(relay=1), "the run reaches relay on port 8787, not 1"),
        (lambda d: d["bridges"].pop("proxy"), "the run's spec names other bridges"),
        (lambda d: d.update(jail=[]), "LaunchRequest.jail: expected Jail, got list"),
    ],
)
def test_a_request_that_breaks_the_contract_is_refused_by_name(edit: object, said: str) -> None:
    data = _request_dict()
    edit(data)  # type: ignore[operator]
    with pytest.raises(ContractError) as caught:
        LaunchRequest.from_json(json.dumps(data))
    assert said in str(caught.value)


def test_the_host_cannot_build_a_bad_request_either() -> None:
    good = sample_request("systemd")
    with pytest.raises(ContractError, match=r"Sizes\.tmp: must be a positive"):
        Sizes(tmp=0, workspace=1)
    with pytest.raises(ContractError, match=r"RunSpec\.tty: expected a boolean, got int"):
        good.spec.replace(tty=1)
    with pytest.raises(ContractError, match="unknown field"):
        good.replace(nsjail=None)
    with pytest.raises(ContractError, match=r"Jail\.config: empty or larger than"):
        Jail(config="x" * (contract.NSJAIL_CONFIG_MAX + 1), outside_uid=60000)
    with pytest.raises(ContractError, match="does not start the run's unit"):
        good.replace(run_id="abcdefabcdef")
    with pytest.raises(AttributeError):
        good.run_id = "abcdefabcdef"  # type: ignore[misc]
    for junk in ("", "[]", "{", '"x"', "null"):
        with pytest.raises(ContractError):
            LaunchRequest.from_json(junk)


def test_the_launchers_reply_is_checked_too() -> None:
    ok = Launched.from_json('{"unit":"vmsbx-run-0123456789ab.service","invocation_id":"' + "a" * 32 + '"}')
    assert ok.invocation_id == "a" * 32
    with pytest.raises(ContractError, match="invalid invocation id"):
        Launched.from_json('{"unit":"u","invocation_id":"$(reboot)"}')


def test_paths_come_from_the_id_alone_and_refuse_anything_else() -> None:
    p = RunPaths("0123456789ab")
    assert p == RunPaths(run_id="0123456789ab")
    assert p.unit == "vmsbx-run-0123456789ab.service"
    assert p.spec_outside == f"{p.tmp_dir}/.vmsbx-spec.json"
    assert p.holder_dir_outside == f"{p.tmp_dir}/{p.holder_name}"
    assert p.bridge_socket_outside("relay") == f"{p.tmp_dir}/.vmsbx-relay.sock"
    assert p.bridge_socket_inside("relay") == "/tmp/.vmsbx-relay.sock"
    with pytest.raises(ValueError, match="unknown bridge"):
        p.bridge_unit("ftp")
    for bad in ("", "../x", "ABCDEF123456", "0123456789abc", "0123456789a/"):
        with pytest.raises(ValueError):
            RunPaths(bad)
    assert ProjectPaths("0123456789abcdef").mnt == f"{contract.PROJECTS_ROOT}/0123456789abcdef/mnt"
    with pytest.raises(ValueError):
        ProjectPaths("0123456789abcde/")


def test_run_spec_keeps_the_holders_fields() -> None:
    spec = sample_request("systemd").spec
    assert isinstance(spec, RunSpec)
    assert set(spec.to_dict()) == set(RunSpec.FIELDS)


def test_a_refused_launch_is_tried_again_by_the_guests_code_never_by_its_words() -> None:
    from vmsbx.runs.guestctl import LaunchFailed
    from vmsbx.runs.lifecycle import draws_again

    clash = "preparing the run failed: uid 60001 is claimed by the live run abcdefabcdef; start the run again"
    assert draws_again(LaunchFailed(clash, guest_code=contract.EXIT_UID_IN_USE))
    # The words alone never decide: a message that happens to say "is in use" is not a clash.
    for code in (contract.EXIT_FAILED, contract.EXIT_BAD_REQUEST, None):
        assert not draws_again(LaunchFailed("the project's workspace is in use by run x", guest_code=code))
