"""The fakes answer with the real tools' recorded bytes (tests/fakes/recorded/, sources in its
README), and keep state the way the tools do."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent.parent / "fakes"
RECORDED = FAKES / "recorded"


def fake(
    tool: str, *args: str, state: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full = dict(os.environ, VMSBX_TEST_FAKE_STATE=str(state), LIMA_HOME=str(state / "lima"))
    full.pop("WSL_UTF8", None)
    full.update(env or {})
    return subprocess.run([str(FAKES / tool), *args], capture_output=True, env=full, check=False, timeout=60)


def seed_multipass(state: Path, instances: dict[str, dict[str, object]]) -> None:
    (state / "multipass").mkdir(parents=True, exist_ok=True)
    (state / "multipass" / "instances.json").write_text(json.dumps(instances))


def test_multipass_list_and_info_are_qt_json_byte_for_byte(tmp_path: Path) -> None:
    assert (
        fake("multipass", "list", "--format", "json", state=tmp_path).stdout
        == (RECORDED / "multipass_list_empty.json").read_bytes()
    )
    seed_multipass(tmp_path, {"foo": {"name": "foo", "state": "Running", "list_release": "16.04 LTS",
                                      "ipv4": ["10.168.32.2", "200.3.123.30"]}})  # fmt: skip
    assert (
        fake("multipass", "list", "--format", "json", state=tmp_path).stdout
        == (RECORDED / "multipass_list_single.json").read_bytes()
    )
    seed_multipass(tmp_path, {
        "bogus-instance": {"name": "bogus-instance", "state": "Running", "list_release": "16.04 LTS",
                           "ipv4": ["10.21.124.56"]},
        "bombastic": {"name": "bombastic", "state": "Stopped", "list_release": "18.04 LTS"},
    })  # fmt: skip
    assert (
        fake("multipass", "list", "--format", "json", state=tmp_path).stdout
        == (RECORDED / "multipass_list_multiple.json").read_bytes()
    )
    mapping = {"gid_mappings": ["1000:1000"], "uid_mappings": ["1000:1000"]}
    seed_multipass(tmp_path, {"foo": {
        "name": "foo", "state": "Running", "cpus": 1, "disk": 5153960756, "disk_used": 1288490188,
        "image_hash": "1797c5c82016c1e65f4008fcf89deae3a044ef76087a9ec5b907c6d64a3609ac",
        "image_release": "16.04 LTS", "release": "Ubuntu 16.04.3 LTS", "load": [0.45, 0.51, 0.15],
        "memory": 1503238554, "memory_used": 60817408, "ipv4": ["10.168.32.2", "200.3.123.29"],
        "mounts": {"foo": {**mapping, "source_path": "/home/user/foo"},
                   "test_dir": {**mapping, "source_path": "/home/user/test_dir"}},
    }})  # fmt: skip
    done = fake("multipass", "info", "--format", "json", "foo", state=tmp_path)
    assert done.returncode == 0
    assert done.stdout == (RECORDED / "multipass_info_single.json").read_bytes()


def test_multipass_exit_codes(tmp_path: Path) -> None:
    missing = fake("multipass", "info", "--format", "json", "nope", state=tmp_path)
    assert (missing.returncode, missing.stderr) == (2, b'info failed: instance "nope" does not exist\n')
    assert fake("multipass", "launch", "--name", "a1", state=tmp_path).stdout == b"Launched: a1\n"
    again = fake("multipass", "launch", "--name", "a1", state=tmp_path)
    assert (again.returncode, again.stderr) == (2, b'launch failed: instance "a1" already exists\n')
    down = fake(
        "multipass", "list", "--format", "json", state=tmp_path, env={"VMSBX_TEST_FAKE_FAIL": "daemon-down"}
    )
    assert down.returncode == 3
    slow = fake("multipass", "launch", "--name", "b2", "--timeout", "5", state=tmp_path,
                env={"VMSBX_TEST_FAKE_FAIL": "launch-timeout"})  # fmt: skip
    assert (slow.returncode, slow.stderr) == (5, b"Timed out waiting for instance launch.\n")
    states = [
        json.loads(fake("multipass", "info", "--format", "json", "b2", state=tmp_path).stdout)["info"]["b2"][
            "state"
        ]
        for _ in range(3)
    ]
    assert states == ["Starting", "Running", "Running"]
    # delete without --purge keeps the name taken; --purge frees it
    assert fake("multipass", "delete", "a1", state=tmp_path).returncode == 0
    assert fake("multipass", "launch", "--name", "a1", state=tmp_path).returncode == 2
    assert fake("multipass", "delete", "--purge", "a1", state=tmp_path).returncode == 0
    assert fake("multipass", "launch", "--name", "a1", state=tmp_path).returncode == 0
    version = fake("multipass", "version", "--format", "json", state=tmp_path)
    assert json.loads(version.stdout) == {"multipass": "1.16.3", "multipassd": "1.16.3"}


_LOGFMT = re.compile(rb'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" level=(\w+) msg="(.*)"$')


def test_limactl_json_lines_errors_and_lifecycle(tmp_path: Path) -> None:
    empty = fake("limactl", "list", "--json", state=tmp_path)
    assert (empty.returncode, empty.stdout) == (0, b"")
    assert _LOGFMT.match(empty.stderr.strip())[1] == b"warning"  # type: ignore[index]
    template = tmp_path / "t.yaml"
    template.write_text("mounts: []\n")
    for name in ("foo", "bar"):
        assert (
            fake(
                "limactl", "--tty=false", "create", f"--name={name}", str(template), state=tmp_path
            ).returncode
            == 0
        )
    listed = fake("limactl", "list", "--json", state=tmp_path)
    lines = listed.stdout.decode().splitlines()
    # JSON Lines, alphabetical, compact: the patterns of Lima's own bats test
    assert re.match(r'^\{"name":"bar",', lines[0]) and re.match(r'^\{"name":"foo",', lines[1])
    assert [json.loads(line)["status"] for line in lines] == ["Stopped", "Stopped"]
    again = fake("limactl", "--tty=false", "create", "--name=foo", str(template), state=tmp_path)
    match = _LOGFMT.match(again.stderr.strip().splitlines()[-1])
    assert (
        again.returncode == 1
        and match
        and match[1] == b"fatal"
        and b"instance `foo` already exists" in match[2]
    )
    unmatched = fake("limactl", "list", "--json", "foo", "nope", state=tmp_path)
    assert unmatched.returncode == 1 and b"No instance matching nope found." in unmatched.stderr
    assert b'level=fatal msg="unmatched instances"' in unmatched.stderr
    assert json.loads(unmatched.stdout)["name"] == "foo"
    assert fake("limactl", "--tty=false", "start", "foo", state=tmp_path).returncode == 0
    running = json.loads(fake("limactl", "list", "--json", "foo", state=tmp_path).stdout)
    assert running["status"] == "Running" and running["sshLocalPort"] > 0
    config = Path(running["sshConfigFile"]).read_bytes()
    assert config.startswith((RECORDED / "lima_ssh_config_header.txt").read_bytes() + b"Host lima-foo\n")
    assert (
        b"  StrictHostKeyChecking no\n" in config and f"  Port {running['sshLocalPort']}\n".encode() in config
    )
    busy = fake("limactl", "delete", "foo", state=tmp_path)
    assert busy.returncode == 1 and b"expected status `Stopped`, got `Running`" in busy.stderr
    assert fake("limactl", "stop", "foo", state=tmp_path).returncode == 0
    not_running = fake("limactl", "stop", "foo", state=tmp_path)
    assert not_running.returncode == 1 and b"maybe use `limactl stop -f`?" in not_running.stderr
    assert fake("limactl", "delete", "foo", state=tmp_path).returncode == 0
    gone = fake("limactl", "delete", "foo", state=tmp_path)
    assert gone.returncode == 0 and b"Ignoring non-existent instance `foo`" in gone.stderr
    # The pitfall: `start NAME` for a missing NAME creates it from Lima's default template.
    assert fake("limactl", "start", "typo", state=tmp_path).returncode == 0
    assert b'location: "~"' in (tmp_path / "lima" / "typo" / "lima.yaml").read_bytes()


def test_limactl_refuses_root_byte_for_byte(tmp_path: Path) -> None:
    done = fake("limactl", "list", "--json", state=tmp_path, env={"VMSBX_TEST_FAKE_FAIL": "root"})
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == (RECORDED / "lima_root_refusal.txt").read_bytes()


def test_wsl_speaks_utf16le_unless_wsl_utf8(tmp_path: Path) -> None:
    (tmp_path / "wsl").mkdir()
    (tmp_path / "wsl" / "distros.json").write_text(
        json.dumps({"Ubuntu": {"state": "Stopped", "version": "2", "location": "C:\\x", "tarball": "t"}})
    )
    table = fake("wsl.exe", "-l", "-v", state=tmp_path)
    assert table.returncode == 0
    assert table.stdout == (RECORDED / "wsl_list_verbose.utf16le").read_bytes()
    utf8 = fake("wsl.exe", "-l", "-v", state=tmp_path, env={"WSL_UTF8": "1"})
    assert utf8.stdout == (RECORDED / "wsl_list_verbose.utf16le").read_bytes().decode("utf-16-le").encode()
    missing = fake("wsl.exe", "--unregister", "nope", state=tmp_path, env={"WSL_UTF8": "1"})
    assert missing.returncode == 255  # DWORD -1 as a POSIX parent sees it
    assert missing.stdout.endswith(b"Error code: Wsl/Service/WSL_E_DISTRO_NOT_FOUND\r\n")
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(b"")
    assert (
        fake(
            "wsl.exe", "--import", "vmsbx-a", "C:\\a", str(rootfs), "--version", "2", state=tmp_path
        ).returncode
        == 0
    )
    clash = fake(
        "wsl.exe", "--import", "VMSBX-A", "C:\\b", str(rootfs), state=tmp_path, env={"WSL_UTF8": "1"}
    )
    assert clash.returncode == 255 and b"already exists" in clash.stdout  # names compare case-insensitively
    names = fake("wsl.exe", "-l", "-q", state=tmp_path).stdout.decode("utf-16-le")
    assert names == "Ubuntu\r\nvmsbx-a\r\n"
    ran = fake("wsl.exe", "-d", "vmsbx-a", "-u", "root", "--cd", "/", "-e", "true", state=tmp_path)
    assert ran.returncode == 0
    verbose = fake("wsl.exe", "-l", "-v", state=tmp_path, env={"WSL_UTF8": "1"}).stdout.decode()
    assert "  vmsbx-a    Running         2\r\n" in verbose  # NAME column: longest name + 4


@pytest.mark.parametrize("tool", ["limactl", "multipass", "wsl.exe"])
def test_every_call_is_logged(tool: str, tmp_path: Path) -> None:
    fake(tool, "--version", state=tmp_path)
    calls = (tmp_path / ("wsl" if tool == "wsl.exe" else tool) / "calls.jsonl").read_text().splitlines()
    assert json.loads(calls[-1]) == ["--version"]
