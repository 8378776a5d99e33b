"""The host and the guest hold one contract (vmsbx.contract), on real files and processes.

The guest's programs run here as the guest has them: the very bundle `vmsbx up` pushes
(vmsbx.guest.guest_bundle), written to a flat folder and started with python3 -S. A request the
host did not build by the contract is refused by the guest with EXIT_BAD_REQUEST and a clear
message, before anything is made; and every guest path or name the host renders into a request
is one the guest computes from the run id itself.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guest_code import CONTRACT, load_guest

from vmsbx import contract as host_contract
from vmsbx.guestbundle import guest_bundle
from vmsbx.sandbox.layout import GUEST_LIB, RunLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from launch_samples import LAYOUT, sample_request

launcher = load_guest("launcher")
nsjail_prep = load_guest("nsjail_prep")
session_holder = load_guest("session_holder")
wsync = load_guest("wsync")


@pytest.fixture(scope="module")
def guest_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GUEST_LIB as `vmsbx up` fills it."""
    folder = tmp_path_factory.mktemp("guest-lib")
    _version, files = guest_bundle()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_the_contract_runs_alone_on_the_standard_library(tmp_path: Path) -> None:
    """python3 -S -I from a folder holding nothing but the contract: no site-packages, no
    vmsbx, no PYTHONPATH; and what it loaded is the standard library only."""
    (tmp_path / "contract.py").write_bytes(CONTRACT.read_bytes())
    probe = (
        "import sys; before = set(sys.modules); sys.path.insert(0, '.'); import contract; "
        "loaded = sorted(m.split('.')[0] for m in set(sys.modules) - before); "
        "print(contract.RunPaths('0123456789ab').unit); "
        "print([m for m in loaded if m not in sys.stdlib_module_names and m != 'contract'])"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["vmsbx-run-0123456789ab.service", "[]"]


def test_the_pushed_bundle_carries_the_contract_and_every_guest_program_imports(guest_lib: Path) -> None:
    assert (guest_lib / "contract.py").read_bytes() == CONTRACT.read_bytes()
    probe = (
        "import sys; sys.path.insert(0, '.'); import launcher, nsjail_prep, claude_install, session_holder"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", probe], cwd=guest_lib, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def _launch(guest_lib: Path, line: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-S", str(guest_lib / "guest.py"), "launch"],
        input=line,
        capture_output=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda d: d.update(tmp_size=1), "unknown field(s) 'tmp_size'"),
        (lambda d: d.pop("spec"), "missing field(s) spec"),
        (lambda d: d["sizes"].update(workspace="10G"), "LaunchRequest.sizes.workspace: expected an integer"),
        (lambda d: d.update(systemd_run=["sh", "-c", "reboot"]), "must be a systemd-run command line"),
        (lambda d: d.update(run_id="../../../etc"), "invalid run id"),
    ],
)
def test_the_guest_refuses_a_request_that_breaks_the_contract(
    guest_lib: Path, edit: object, said: str
) -> None:
    data = sample_request("nsjail").to_dict()
    edit(data)  # type: ignore[operator]
    done = _launch(guest_lib, json.dumps(data).encode() + b"\n")
    assert done.returncode == host_contract.EXIT_BAD_REQUEST, done.stderr
    message = done.stderr.decode()
    assert message.startswith("vmsbx-guest: refused the launch request"), message
    assert said in message
    assert "Traceback" not in message
    assert done.stdout == b""


def test_the_guest_refuses_an_old_untyped_request(guest_lib: Path) -> None:
    """Today's host sent a free-form dict; a guest of the contract never acts on one."""
    old = {"run_id": LAYOUT.run_id, "tmp_size": 1, "workspace_size": 1, "systemd_run": ["systemd-run"]}
    done = _launch(guest_lib, json.dumps(old).encode() + b"\n")
    assert done.returncode == host_contract.EXIT_BAD_REQUEST
    done = _launch(guest_lib, b"not json\n")
    assert done.returncode == host_contract.EXIT_BAD_REQUEST
    assert b"not JSON" in done.stderr


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_the_launcher_parses_what_the_host_builds(mode: str) -> None:
    request = sample_request(mode)
    parsed = launcher.parse_request(request.to_json().encode() + b"\n")
    assert parsed.to_dict() == request.to_dict()
    assert parsed.paths.unit == request.paths.unit
    with pytest.raises(launcher.ContractError, match="not one line"):
        launcher.parse_request(request.to_json().encode())  # cut short: no newline
    with pytest.raises(launcher.ContractError, match="not one line"):
        launcher.parse_request(b" " * (launcher.REQUEST_MAX + 1) + b"\n")


def _guest_names(run_id: str) -> set[str]:
    """Every path and name the guest computes for a run, from the id alone."""
    p = launcher.paths(run_id)
    names = {
        getattr(p, attr)
        for attr in dir(type(p))
        if isinstance(getattr(type(p), attr), property) and isinstance(getattr(p, attr), str)
    }
    names |= {f(name) for name in launcher.BRIDGES for f in (p.bridge_socket_outside, p.bridge_unit)}
    names |= {nsjail_prep._run_paths(run_id).nsjail_config, nsjail_prep._run_paths(run_id).workspace_mount}
    names |= {f"/sys/fs/cgroup/system.slice/{p.unit}"}  # the unit's cgroup (record reads it)
    return names


# A guest path or unit name that carries the run id (what the guest must compute the same way).
_RUN_NAMED = re.compile(r"(?:/[\w.+-]+)*/?[\w.+-]*0123456789ab[\w.+-]*")


@pytest.mark.parametrize("mode", ["systemd", "nsjail"])
def test_every_guest_path_the_host_renders_is_the_one_the_guest_computes(mode: str) -> None:
    request = sample_request(mode)
    rendered = [*request.systemd_run, *(request.jail.config.splitlines() if request.jail else [])]
    guest = _guest_names(LAYOUT.run_id)
    found = set()
    for text in rendered:
        for hit in _RUN_NAMED.findall(text):
            if not hit.startswith(("/", "vmsbx-")) or hit == f"vmsbx-run-{LAYOUT.run_id}":
                continue  # the run id itself, or a label (Description=, VMSBX_RUN=, nsjail's name)
            found.add(hit)
            # The path itself or one inside a guest-computed folder (the cgroup's io.max).
            assert hit in guest or any(hit.startswith(name + "/") for name in guest), (mode, hit)
    wanted = {LAYOUT.unit, LAYOUT.tmp_dir, LAYOUT.workspace_mount, LAYOUT.started_stamp}
    assert wanted <= {h.removeprefix("--unit=") for h in found} | guest
    if mode == "nsjail":
        assert nsjail_prep._run_paths(LAYOUT.run_id).nsjail_config in request.systemd_run
    # The programs the unit starts are the ones vmsbx pushes.
    _version, files = guest_bundle()
    for token in request.systemd_run:
        for program in re.findall(re.escape(GUEST_LIB) + r"/([\w]+\.py)", token):
            assert program in files, program


def test_the_run_inside_sees_the_paths_the_launcher_prepares() -> None:
    layout, p = RunLayout(run_id=LAYOUT.run_id), launcher.paths(LAYOUT.run_id)
    assert p.spec_outside.removeprefix(p.tmp_dir) == session_holder.SPEC.removeprefix("/tmp")
    assert p.holder_dir_outside.removeprefix(p.tmp_dir) == session_holder.HOLDER_DIR.removeprefix("/tmp")
    for name in host_contract.BRIDGES:
        outside = p.bridge_socket_outside(name).removeprefix(p.tmp_dir)
        assert outside == layout.bridge_socket_inside(name).removeprefix("/tmp")
        assert p.bridge_unit(name) == layout.bridge_unit(name)
    assert session_holder.HEADER.format == launcher.HEADER.format
    assert (session_holder.STDIN, session_holder.EXIT) == (launcher.STDIN, launcher.EXIT)
    assert wsync.TOO_LARGE == host_contract.EXIT_TOO_LARGE
    assert (nsjail_prep.OUTSIDE_UID_FIRST, nsjail_prep.OUTSIDE_UID_LAST) == (
        host_contract.OUTSIDE_UID_FIRST,
        host_contract.OUTSIDE_UID_LAST,
    )
    project = "0123456789abcdef"
    guest_project = launcher.project_paths(project)
    assert (guest_project.dir, guest_project.mnt, guest_project.owner) == (
        host_contract.ProjectPaths(project).dir,
        host_contract.ProjectPaths(project).mnt,
        host_contract.ProjectPaths(project).owner,
    )


def test_a_uid_clash_is_said_by_its_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a drawn uid can be taken (a live run's claim, an account or process) are
    UidInUse, which the launcher and nsjail_prep report as EXIT_UID_IN_USE; the host's retry once
    grepped "is in use" and missed the claim of a live run ("is claimed by the live run")."""
    guest_contract = sys.modules["contract"]
    monkeypatch.setattr(guest_contract, "RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setattr(nsjail_prep, "CLAIMS", str(tmp_path / "claims"))
    (tmp_path / "runs" / "abcdefabcdef").mkdir(parents=True)  # the live run that holds the uid
    nsjail_prep._claim("abcdefabcdef", 60001)
    with pytest.raises(nsjail_prep.UidInUse, match="claimed by the live run abcdefabcdef"):
        nsjail_prep._claim("0123456789ab", 60001)
    nsjail_prep._claim("0123456789ab", 60002)  # another uid is free
    # A stale claim (its run is gone) is taken over.
    (tmp_path / "runs" / "abcdefabcdef").rmdir()
    nsjail_prep._claim("0123456789ab", 60001)

    def refuse(error: Exception) -> None:
        def prepare(*_: object) -> None:
            raise error

        monkeypatch.setattr(nsjail_prep, "prepare", prepare)

    monkeypatch.setattr(sys, "stdin", io.StringIO("config"))
    refuse(nsjail_prep.UidInUse("uid 60001 is in use"))
    assert nsjail_prep.main(["prepare", "0123456789ab", "60001"]) == host_contract.EXIT_UID_IN_USE
    refuse(nsjail_prep.PrepError("the nsjail config is empty or too large"))
    assert nsjail_prep.main(["prepare", "0123456789ab", "60001"]) == host_contract.EXIT_FAILED


def test_the_host_and_the_guest_read_an_integrity_the_same_way() -> None:
    """Claude Code's npm integrity: the host's download and the guest's installer once parsed
    it each by hand, and had drifted (the host dropped `?options`, the guest refused them)."""
    import base64
    import hashlib

    from vmsbx.claude.package import ClaudePackageError, parse_integrity

    claude_install = load_guest("claude_install")
    digest = hashlib.sha512(b"package").digest()
    good = "sha512-" + base64.b64encode(digest).decode()
    for integrity in (good, good + "?size=7", f"sha1-AAAA {good}", f"{good} {good}"):
        assert parse_integrity(integrity) == claude_install._sha512(integrity) == digest, integrity
    for bad in ("", "sha1-AAAA", "sha512-!!!", f"{good} sha512-" + base64.b64encode(b"x" * 64).decode()):
        with pytest.raises(ClaudePackageError):
            parse_integrity(bad)
        with pytest.raises(claude_install.InstallError):
            claude_install._sha512(bad)
