"""The nsjail-mode renderers, pinned by golden files, and the walls that must hold regardless.

Goldens live in tests/unit/golden/nsjail_*; after an intended change regenerate them with

    VMSBX_TEST_UPDATE_GOLDEN=1 pytest tests/unit/test_nsjail_render.py

and review the diff. The explicit checks below hold whatever the goldens say, and
`check_jail_config` is shown to catch each kind of weakening of the rendered jail.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vmsbx.config.models import SandboxSettings
from vmsbx.contract import HOLDER_DIR_INSIDE, NSJAIL, OUTSIDE_UID_FIRST, OUTSIDE_UID_LAST, SPEC_INSIDE
from vmsbx.sandbox import nsjail
from vmsbx.sandbox.layout import RunLayout
from vmsbx.sandbox.nsjail import (
    CLONE_FLAGS,
    JAIL_WORKSPACE,
    SECCOMP_POLICY,
    STAGE_TMP,
    STAGE_WORKSPACE,
    check_jail_config,
    nsjail_config_path,
    outside_uid_for,
    render_nsjail_config,
    render_nsjail_systemd_run_argv,
    render_nsjail_unit_file,
    render_nsjail_unit_properties,
)
from vmsbx.sandbox.systemd import render_unit_properties

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("VMSBX_TEST_UPDATE_GOLDEN") == "1"

LAYOUT = RunLayout(run_id="0123456789ab")
POLICY = SandboxSettings(mode="nsjail")
TIGHT = SandboxSettings(
    mode="nsjail", memory_max="1G", cpus=0.5, tasks_max=64, timeout="90s", tmp_size="128M", open_files=1024
)
UID = 60123
CONFIG_PATH = nsjail_config_path(LAYOUT)


def assert_matches_golden_text(name: str, text: str) -> None:
    path = GOLDEN_DIR / name
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path}; create it with VMSBX_TEST_UPDATE_GOLDEN=1", pytrace=False)
    assert text == path.read_text(encoding="utf-8"), (
        f"output differs from {path}; if intended, regenerate with VMSBX_TEST_UPDATE_GOLDEN=1"
    )


def assert_matches_golden_json(name: str, value: list[str]) -> None:
    assert_matches_golden_text(name, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# The guest fact `python` of a trixie guest (what /usr/bin/python3 resolves to).
GUEST_PYTHON = "python3.13"


def config(policy: SandboxSettings = POLICY, arch: str = "x86_64", python: str = GUEST_PYTHON) -> str:
    return render_nsjail_config(policy, LAYOUT, outside_uid=UID, arch=arch, python=python)


def scalar(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}: (.*)$", text, flags=re.MULTILINE)


def blocks(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name} \{{.*\}}$", text, flags=re.MULTILINE)


def props_dict(props: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for prop in props:
        key, _, value = prop.partition("=")
        out.setdefault(key, []).append(value)
    return out


# --- goldens -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_config_golden(arch: str) -> None:
    assert_matches_golden_text(f"nsjail_config_{arch}.txt", config(arch=arch))


def test_config_tight_policy_golden() -> None:
    assert_matches_golden_text("nsjail_config_tight.txt", config(TIGHT))


def test_systemd_run_argv_golden() -> None:
    argv = render_nsjail_systemd_run_argv(POLICY, LAYOUT, config_path=CONFIG_PATH)
    assert_matches_golden_json("nsjail_systemd_run.json", argv)


def test_unit_file_golden() -> None:
    assert_matches_golden_text(
        "nsjail_unit.txt", render_nsjail_unit_file(POLICY, LAYOUT, config_path=CONFIG_PATH)
    )


# --- the jail -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("policy", [POLICY, TIGHT], ids=["default", "tight"])
def test_rendered_config_passes_its_own_check(arch: str, policy: SandboxSettings) -> None:
    assert check_jail_config(render_nsjail_config(policy, LAYOUT, outside_uid=UID, arch=arch)) == []


def test_every_namespace_is_new() -> None:
    text = config()
    for flag in CLONE_FLAGS:
        assert scalar(text, flag) == ["true"]
    assert set(CLONE_FLAGS) == {
        "clone_newnet",
        "clone_newuser",
        "clone_newns",
        "clone_newpid",
        "clone_newipc",
        "clone_newuts",
        "clone_newcgroup",
    }


def test_jail_user_maps_to_the_given_unprivileged_id_only() -> None:
    text = config()
    for name in ("uidmap", "gidmap"):
        assert blocks(text, name) == [
            f'{name} {{ inside_id: "1000" outside_id: "{UID}" count: 1 use_newidmap: false }}'
        ]


@pytest.mark.parametrize("uid", [0, 1000, 65534, OUTSIDE_UID_FIRST - 1, OUTSIDE_UID_LAST + 1, -1])
def test_renderer_refuses_an_outside_id_outside_the_range(uid: int) -> None:
    with pytest.raises(ValueError, match="not in vmsbx's range"):
        render_nsjail_config(POLICY, LAYOUT, outside_uid=uid)


def test_renderer_refuses_an_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="architecture"):
        render_nsjail_config(POLICY, LAYOUT, outside_uid=UID, arch="riscv64")


def test_outside_uid_for_is_stable_and_in_range() -> None:
    uids = {outside_uid_for(f"{n:012x}") for n in range(2000)}
    assert all(OUTSIDE_UID_FIRST <= uid <= OUTSIDE_UID_LAST for uid in uids)
    assert len(uids) > 500  # spread over the range, not a handful of values
    assert outside_uid_for(LAYOUT.run_id) == outside_uid_for(LAYOUT.run_id)


@pytest.mark.parametrize("policy", [POLICY, TIGHT], ids=["default", "tight"])
def test_rlimits_are_explicit_and_fit_a_real_toolchain(policy: SandboxSettings) -> None:
    text = config(policy)
    assert scalar(text, "rlimit_nofile") == [str(policy.open_files)]
    assert scalar(text, "rlimit_nofile_type") == ["VALUE"]
    for name in ("rlimit_as_type", "rlimit_cpu_type", "rlimit_fsize_type"):
        assert scalar(text, name) == ["INF"]
    assert scalar(text, "rlimit_core") == ["0"]
    assert scalar(text, "rlimit_nproc_type") == ["SOFT"]


def test_time_limit_backs_up_runtime_max_sec() -> None:
    for policy in (POLICY, TIGHT):
        (time_limit,) = scalar(config(policy), "time_limit")
        runtime = props_dict(render_nsjail_unit_properties(policy, LAYOUT))["RuntimeMaxSec"]
        assert runtime == [f"{math.ceil(policy.timeout)}s"]
        assert int(time_limit) > math.ceil(policy.timeout)


def test_environment_is_cleared_and_explicit() -> None:
    text = config()
    assert scalar(text, "keep_env") == ["false"]
    env = [json.loads(value) for value in scalar(text, "envar")]
    assert env == [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        f"HOME={LAYOUT.home}",
        "USER=agent",
        "LOGNAME=agent",
        "SHELL=/bin/bash",
        "LANG=C.UTF-8",
        "TMPDIR=/tmp",
    ]


def test_runs_once_in_the_workspace_with_the_command_from_the_command_line() -> None:
    text = config()
    assert scalar(text, "mode") == ["ONCE"]
    assert scalar(text, "cwd") == [f'"{JAIL_WORKSPACE}"']
    assert "exec_bin" not in text
    for name in ("keep_caps", "skip_setsid", "disable_no_new_privs", "seccomp_log"):
        assert scalar(text, name) == ["false"]
    assert not scalar(text, "cap")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_seccomp_policy_is_the_reference_deny_list(arch: str) -> None:
    rules = [json.loads(value) for value in scalar(config(arch=arch), "seccomp_string")]
    assert tuple(rules) == SECCOMP_POLICY[arch]
    assert rules[-1] == "DEFAULT ALLOW"
    joined = " ".join(rules)
    for call in ("setns", "ptrace", "mount", "pivot_root", "keyctl", "bpf", "io_uring_setup", "clone3"):
        assert re.search(rf"\b{call}\b", joined), call
    assert "TIOCSTI" in joined
    assert ("iopl" in joined) == (arch == "x86_64")


def mounts(text: str) -> list[str]:
    return blocks(text, "mount")


def mount_with_dst(text: str, dst: str) -> str:
    (found,) = [m for m in mounts(text) if f'dst: "{dst}"' in m]
    return found


def test_workspace_and_tmp_are_the_runs_own_and_writable() -> None:
    text = config()
    workspace = mount_with_dst(text, JAIL_WORKSPACE)
    assert f'src: "{STAGE_WORKSPACE}"' in workspace
    for flag in ("is_bind: true", "rw: true", "nosuid: true", "nodev: true"):
        assert flag in workspace
    for dst in ("/tmp", "/var/tmp"):
        tmp = mount_with_dst(text, dst)
        assert f'src: "{STAGE_TMP}"' in tmp
        assert "rw: true" in tmp


def test_only_the_runs_own_places_are_writable() -> None:
    writable = [m for m in mounts(config()) if "rw: true" in m]
    dsts = sorted(re.search(r'dst: "([^"]+)"', m).group(1) for m in writable)  # type: ignore[union-attr]
    assert dsts == ["/dev/pts", "/dev/shm", "/tmp", "/var/tmp", JAIL_WORKSPACE]


def test_system_is_read_only_and_users_are_the_jails() -> None:
    text = config()
    assert mount_with_dst(text, "/usr") == (
        'mount { src: "/usr" dst: "/usr" is_bind: true rw: false nosuid: true nodev: true }'
    )
    passwd = mount_with_dst(text, "/etc/passwd")
    assert "agent:x:1000:1000:agent:/tmp/.vmsbx-home:/bin/bash" in passwd
    assert "root" not in passwd
    assert "nameserver" not in mount_with_dst(text, "/etc/resolv.conf")
    assert 'src_content: ""' not in text  # nsjail would treat it as no source at all
    assert 'fstype: "proc" rw: false' in mount_with_dst(text, "/proc")
    assert scalar(text, "mount_proc") == ["false"]
    sources = [m for m in mounts(text) if "is_bind: true" in m]
    for bind in sources:
        src = re.search(r'src: "([^"]+)"', bind).group(1)  # type: ignore[union-attr]
        assert src.startswith(("/usr", "/etc/", "/dev/", STAGE_WORKSPACE, STAGE_TMP)), bind
    for fstype in ("sysfs", "cgroup", "mqueue", "bpf"):
        assert f'fstype: "{fstype}' not in text


@pytest.mark.parametrize("python", ["python3.11", "python3.13"])
def test_pythons_etc_dir_is_the_guests_own_release(python: str) -> None:
    # bookworm's /etc/python3.11 was baked in; a trixie guest has /etc/python3.13 instead.
    binds = [m for m in mounts(config(python=python)) if 'src: "/etc/python3.' in m]
    assert binds == [
        f'mount {{ src: "/etc/{python}" dst: "/etc/{python}" is_bind: true rw: false mandatory: false }}'
    ]
    assert check_jail_config(config(python=python)) == []


def test_a_guest_without_the_python_fact_gets_no_release_path() -> None:
    assert 'src: "/etc/python3.' not in config(python="")


@pytest.mark.parametrize("python", ["python3.13/../../root", "/etc/shadow", "python3", "perl5.36"])
def test_renderer_refuses_a_guest_python_that_is_no_python3_name(python: str) -> None:
    with pytest.raises(ValueError, match=r"python3\.N"):
        config(python=python)


def test_holder_paths_match_the_layout() -> None:
    # The holder reads its spec and binds its socket under /tmp, exactly as in systemd mode.
    assert SPEC_INSIDE.startswith("/tmp/")
    assert HOLDER_DIR_INSIDE.startswith("/tmp/")
    assert LAYOUT.home.startswith("/tmp/")


# --- the outer unit -------------------------------------------------------------------------

ABSENT_FOR_NSJAIL = (
    "DynamicUser",
    "User",
    "PrivateUsers",
    "RestrictNamespaces",
    "ProtectKernelTunables",
    "ProtectProc",
    "ProcSubset",
    "ProtectHostname",
    # It overmounts /proc/kmsg, and trixie's 6.12 kernel then refuses the jail's procfs.
    "ProtectKernelLogs",
    "Delegate",
    "StateDirectory",
    "RuntimeDirectory",
    "LogsDirectory",
)


def test_outer_unit_leaves_out_what_nsjail_needs() -> None:
    props = props_dict(render_nsjail_unit_properties(POLICY, LAYOUT))
    for key in ABSENT_FOR_NSJAIL:
        assert key not in props, key
    for value in props["SystemCallFilter"]:
        assert "@mount" not in value
        assert "@privileged" not in value


def test_outer_unit_makes_up_for_protect_kernel_logs() -> None:
    props = props_dict(render_nsjail_unit_properties(POLICY, LAYOUT))
    assert "~syslog" in props["SystemCallFilter"]
    assert "CAP_SYSLOG" not in props["CapabilityBoundingSet"][0]
    assert props["PrivateDevices"] == ["yes"]  # no /dev/kmsg
    assert props["DevicePolicy"] == ["closed"]
    assert "syslog" in " ".join(SECCOMP_POLICY["x86_64"] + SECCOMP_POLICY["aarch64"])


def test_outer_unit_walls() -> None:
    props = props_dict(render_nsjail_unit_properties(POLICY, LAYOUT))
    expected = {
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "PrivateNetwork": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": ["CAP_SETUID CAP_SETGID"],
        "AmbientCapabilities": [""],
        "IPAddressDeny": ["any"],
        "InaccessiblePaths": ["-/run/dbus/system_bus_socket -/var/run/dbus/system_bus_socket"],
        "KillMode": ["control-group"],
        "SyslogIdentifier": ["vmsbx-run"],
        "LogExtraFields": [f"VMSBX_RUN={LAYOUT.run_id}"],
        "LogRateLimitIntervalSec": ["1s"],
        "LogRateLimitBurst": ["1000000"],
        "TemporaryFileSystem": ["/run/vmsbx-jail:ro"],
        "BindPaths": [f"{LAYOUT.workspace_mount}:{STAGE_WORKSPACE} {LAYOUT.tmp_dir}:{STAGE_TMP}"],
    }
    for key, value in expected.items():
        assert props[key] == value, key


@pytest.mark.parametrize("policy", [POLICY, TIGHT], ids=["default", "tight"])
def test_outer_unit_limits_are_the_same_as_systemd_mode(policy: SandboxSettings) -> None:
    nsjail_props = props_dict(render_nsjail_unit_properties(policy, LAYOUT))
    systemd_props = props_dict(render_unit_properties(policy, LAYOUT))
    for key in (
        "MemoryMax",
        "MemorySwapMax",
        "CPUQuota",
        "TasksMax",
        "RuntimeMaxSec",
        "LimitNOFILE",
        "LimitCORE",
        "OOMPolicy",
        "ExecStopPost",
    ):
        assert nsjail_props[key] == systemd_props[key], key
    assert nsjail_props["MemoryMax"] == [str(policy.memory_max)]
    assert nsjail_props["LimitNOFILE"] == [str(policy.open_files)]


def test_systemd_run_argv_runs_nsjail_then_the_holder() -> None:
    argv = render_nsjail_systemd_run_argv(POLICY, LAYOUT, config_path=CONFIG_PATH)
    assert argv[:5] == ["systemd-run", f"--unit={LAYOUT.unit}", "--service-type=exec", "--collect", "--quiet"]
    cut = argv.index("--")
    assert argv[cut + 1 :] == [
        NSJAIL,
        "--config",
        CONFIG_PATH,
        "--",
        "/usr/bin/python3",
        "-S",
        "/usr/local/lib/vmsbx/holder.py",
        LAYOUT.run_id,
    ]
    props = argv[5:cut]
    assert props[::2] == ["-p"] * (len(props) // 2)
    assert props[1::2] == render_nsjail_unit_properties(POLICY, LAYOUT)


def test_config_lives_in_the_root_only_run_dir() -> None:
    assert nsjail_config_path(LAYOUT) == f"{LAYOUT.run_dir}/nsjail.cfg"
    assert not CONFIG_PATH.startswith(LAYOUT.tmp_dir)


def test_unit_file_has_the_same_exec_and_properties() -> None:
    text = render_nsjail_unit_file(POLICY, LAYOUT, config_path=CONFIG_PATH)
    lines = text.splitlines()
    assert lines[:2] == ["[Unit]", f"Description=vmsbx run {LAYOUT.run_id} (nsjail)"]
    assert (
        f"ExecStart={NSJAIL} --config {CONFIG_PATH} -- /usr/bin/python3 -S /usr/local/lib/vmsbx/holder.py "
        in text
    )
    for prop in render_nsjail_unit_properties(POLICY, LAYOUT)[1:]:
        assert prop in lines


# --- check_jail_config catches each weakening -----------------------------------------------

Mutation = Callable[[str], str]


def replace_line(old: str, new: str) -> Mutation:
    def mutate(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return mutate


def drop_line(prefix: str) -> Mutation:
    def mutate(text: str) -> str:
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(prefix)]
        assert len(kept) < len(lines), prefix
        return "".join(kept)

    return mutate


def append(extra: str) -> Mutation:
    return lambda text: text + extra + "\n"


UIDMAP = f'uidmap {{ inside_id: "1000" outside_id: "{UID}" count: 1 use_newidmap: false }}'
GIDMAP = UIDMAP.replace("uidmap", "gidmap")
FIRST_RULE = SECCOMP_POLICY["x86_64"][4]

WEAKENINGS: dict[str, tuple[Mutation, str]] = {
    **{f"{flag}-false": (replace_line(f"{flag}: true", f"{flag}: false"), flag) for flag in CLONE_FLAGS},
    **{f"{flag}-absent": (drop_line(f"{flag}:"), flag) for flag in CLONE_FLAGS},
    "uid-root": (replace_line(UIDMAP, UIDMAP.replace(str(UID), "0")), "maps the jail to root"),
    "gid-root": (replace_line(GIDMAP, GIDMAP.replace(str(UID), "0")), "maps the jail to root"),
    "uid-caller-default": (replace_line(UIDMAP, UIDMAP.replace(str(UID), "")), "not an explicit numeric id"),
    "uid-out-of-range": (replace_line(UIDMAP, UIDMAP.replace(str(UID), "1000")), "not in vmsbx's range"),
    "uid-range": (replace_line(UIDMAP, UIDMAP.replace("count: 1", "count: 65536")), "more than one id"),
    "uid-newidmap": (
        replace_line(UIDMAP, UIDMAP.replace("use_newidmap: false", "use_newidmap: true")),
        "newuidmap",
    ),
    "uidmap-absent": (drop_line("uidmap"), "uidmap: expected exactly one"),
    "gidmap-absent": (drop_line("gidmap"), "gidmap: expected exactly one"),
    "uidmap-twice": (
        append('uidmap { inside_id: "0" outside_id: "60001" count: 1 }'),
        "uidmap: expected exactly one",
    ),
    "inside-root": (replace_line(UIDMAP, UIDMAP.replace('inside_id: "1000"', 'inside_id: "0"')), "inside_id"),
    "seccomp-absent": (drop_line("seccomp_string"), "no seccomp policy"),
    "seccomp-rule-dropped": (drop_line(f"seccomp_string: {json.dumps(FIRST_RULE)}"), "seccomp rule missing"),
    "seccomp-extra-allow": (
        replace_line(
            'seccomp_string: "DEFAULT ALLOW"',
            'seccomp_string: "ALLOW { ptrace }"\nseccomp_string: "DEFAULT ALLOW"',
        ),
        "not in vmsbx's policy",
    ),
    "seccomp-default-log": (replace_line('"DEFAULT ALLOW"', '"DEFAULT LOG"'), "seccomp rule"),
    "seccomp-file": (append('seccomp_policy_file: "/tmp/p.kafel"'), "seccomp_policy_file"),
    "seccomp-log": (replace_line("seccomp_log: false", "seccomp_log: true"), "seccomp_log"),
    "nofile-absent": (drop_line("rlimit_nofile:"), "rlimit_nofile"),
    "nofile-type-absent": (drop_line("rlimit_nofile_type:"), "rlimit_nofile_type"),
    "nofile-soft": (replace_line("rlimit_nofile_type: VALUE", "rlimit_nofile_type: SOFT"), "rlimit_nofile"),
    "fsize-absent": (drop_line("rlimit_fsize_type:"), "rlimit_fsize"),
    "keep-env": (replace_line("keep_env: false", "keep_env: true"), "keep_env"),
    "keep-env-absent": (drop_line("keep_env:"), "keep_env"),
    "keep-caps": (replace_line("keep_caps: false", "keep_caps: true"), "keep_caps"),
    "cap": (append('cap: "CAP_SYS_ADMIN"'), "capability"),
    "skip-setsid": (replace_line("skip_setsid: false", "skip_setsid: true"), "skip_setsid"),
    "no-nnp": (
        replace_line("disable_no_new_privs: false", "disable_no_new_privs: true"),
        "disable_no_new_privs",
    ),
    "exec-bin": (append('exec_bin { path: "/bin/bash" }'), "exec_bin"),
    "mode-listen": (replace_line("mode: ONCE", "mode: LISTEN"), "mode must be ONCE"),
    "rw-usr": (
        replace_line('dst: "/usr" is_bind: true rw: false', 'dst: "/usr" is_bind: true rw: true'),
        "writable",
    ),
    "bind-root": (append('mount { src: "/" dst: "/host" is_bind: true }'), "from outside the jail"),
    "bind-run": (append('mount { src: "/run" dst: "/run" is_bind: true }'), "from outside the jail"),
    "sysfs": (append('mount { dst: "/sys" fstype: "sysfs" }'), "sysfs"),
    "macvlan": (append('macvlan_iface: "eth0"'), "network device"),
    "iface-own": (append('iface_own: "eth0"'), "network device"),
    "user-net": (append("user_net { enable: true }"), "user_net"),
    "mount-proc": (replace_line("mount_proc: false", "mount_proc: true"), "mount_proc"),
    "garbage": (lambda text: text + "mount { dst: \n", "not a readable nsjail config"),
    "unbalanced": (append("}"), "not a readable nsjail config"),
}


@pytest.mark.parametrize("case", sorted(WEAKENINGS))
def test_check_jail_config_catches(case: str) -> None:
    mutate, expected = WEAKENINGS[case]
    problems = check_jail_config(mutate(config()))
    assert problems, f"{case}: not caught"
    assert any(expected in problem for problem in problems), problems


def test_check_jail_config_refuses_the_callers_own_id() -> None:
    problems = check_jail_config(config(), caller_uid=UID)
    assert any("the caller's id" in problem for problem in problems)


def test_check_jail_config_reads_comments_and_equivalent_spellings() -> None:
    text = (
        config()
        .replace("mode: ONCE", "# a comment\nmode: ONCE  # trailing")
        .replace(UIDMAP, UIDMAP.replace("uidmap {", "uidmap: <").replace(" }", " >"))
    )
    assert check_jail_config(text) == []


def test_parser_round_trips_escaped_strings() -> None:
    odd = 'a"b\\c\nd\u00e9'
    parsed = nsjail._parse(f"name: {nsjail._quote(odd)}")
    assert parsed.get("name") == odd
