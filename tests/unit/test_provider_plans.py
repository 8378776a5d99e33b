"""The pure parts of the lima, multipass, wsl2 and ssh providers: argv builders (golden files,
like test_argv_golden.py), template renderers, parsers of the tools' output, `auto` selection,
and validation of the templates in vm-templates/ (Lima YAML keys, cloud-init, wsl.conf).

Regenerate goldens after an intended change with VMSBX_TEST_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path, PureWindowsPath

import pytest
import yaml
from test_argv_golden import assert_matches_golden

from vmsbx.errors import ProviderError, UsageError
from vmsbx.paths import data_dir
from vmsbx.providers import (
    AUTO_ORDER,
    choose_auto,
    lima_argv,
    multipass_argv,
    platform_default,
    platform_key,
    wsl2_argv,
)
from vmsbx.providers.guest_setup import (
    heredoc,
    render_stock_sshd_setup,
    render_wsl_setup,
    sshd_drop_in,
    sshd_policy,
)
from vmsbx.providers.guestkeys import VMKeys
from vmsbx.providers.hosttool import ToolResult, decode_tool_text, parse_version
from vmsbx.providers.image import load_recipe, recipe_hash, render_mmdebstrap_argv, resolve_recipe
from vmsbx.providers.lima import parse_list_json
from vmsbx.providers.lima_ssh_config import parse_lima_ssh_config
from vmsbx.providers.lima_template import LimaImage, render_lima_yaml
from vmsbx.providers.multipass import parse_info_json
from vmsbx.providers.multipass_template import render_user_data
from vmsbx.providers.wsl2 import parse_list_verbose, wsl_error_code

TEMPLATES = data_dir() / "vm-templates"
RECORDED = Path(__file__).resolve().parent.parent / "fakes" / "recorded"
KEYS = VMKeys(
    host_private=(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    ),
    host_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey vmsbx-default-host",
    client_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClientKey vmsbx-default-client",
)


# -- argv ---------------------------------------------------------------------------------------


def test_lima_argv_golden() -> None:
    instance = lima_argv.instance_name("default")
    assert_matches_golden(
        "lima_calls",
        [
            *lima_argv.render_version_argv(),
            "|", *lima_argv.render_list_argv(instance),
            "|", *lima_argv.render_create_argv(instance, Path("/state/vms/default/lima.yaml")),
            "|", *lima_argv.render_start_argv(instance, 300),
            "|", *lima_argv.render_stop_argv(instance, force=False),
            "|", *lima_argv.render_stop_argv(instance, force=True),
            "|", *lima_argv.render_delete_argv(instance),
        ],
    )  # fmt: skip
    # Creation names the instance and the template explicitly, never `start NAME` alone.
    create = lima_argv.render_create_argv(instance, Path("/t.yaml"))
    assert create[1:4] == ["--tty=false", "create", "--name=vmsbx-default"]
    assert lima_argv.render_start_argv(instance, 300)[-1] == instance


def test_multipass_argv_golden() -> None:
    instance = multipass_argv.instance_name("default")
    launch = multipass_argv.render_launch_argv(
        instance, image="24.04", cpus=2, memory_mib=4096, disk_gib=20, timeout_seconds=300
    )
    assert_matches_golden(
        "multipass_calls",
        [
            *multipass_argv.render_version_argv(),
            "|", *multipass_argv.render_info_argv(instance),
            "|", *launch,
            "|", *multipass_argv.render_start_argv(instance, 300),
            "|", *multipass_argv.render_stop_argv(instance, force=True),
            "|", *multipass_argv.render_delete_argv(instance),
        ],
    )  # fmt: skip
    # user-data through stdin (the snap cannot read hidden folders), never the name `primary`
    assert launch[launch.index("--cloud-init") + 1] == "-"
    assert "primary" not in launch
    assert "--purge" in multipass_argv.render_delete_argv(instance)


def test_wsl2_argv_golden() -> None:
    distro = wsl2_argv.distro_name("default")
    location = PureWindowsPath(r"C:\Users\me\AppData\Local\vmsbx\vms\default\wsl")
    assert_matches_golden(
        "wsl2_calls",
        [
            *wsl2_argv.render_version_argv(),
            "|", *wsl2_argv.render_list_verbose_argv(),
            "|", *wsl2_argv.render_import_argv(distro, location, PureWindowsPath(r"D:\images\bookworm.tar")),
            "|", *wsl2_argv.render_exec_argv(distro, ["sh", "-s"]),
            "|", *wsl2_argv.render_terminate_argv(distro),
            "|", *wsl2_argv.render_unregister_argv(distro),
        ],
    )  # fmt: skip
    assert wsl2_argv.WSL_ENV == {"WSL_UTF8": "1"}
    run = wsl2_argv.render_exec_argv(distro, ["id", "-u"])
    assert run[run.index("--exec") + 1 :] == ["id", "-u"]  # -e: no shell interprets the command


# -- templates ------------------------------------------------------------------------------------


IMAGE = LimaImage(
    arch="x86_64",
    disk=Path("/img/disk.qcow2"), disk_sha256="a" * 64,
    kernel=Path("/img/vmlinuz"), kernel_sha256="b" * 64,
    initrd=Path("/img/initrd"), initrd_sha256="c" * 64,
)  # fmt: skip


def test_lima_template_is_hardened_and_rendered_values_stay_in_their_fields() -> None:
    template = (TEMPLATES / "lima" / "vmsbx.yaml").read_text()
    base = yaml.safe_load(template)
    known = {"plain", "mounts", "portForwards", "containerd", "ssh", "propagateProxyEnv", "rosetta"}
    assert set(base) <= known, f"unexpected Lima keys: {set(base) - known}"
    assert base["plain"] is True and base["mounts"] == []
    assert {"guestIP": "0.0.0.0", "guestPortRange": [1, 65535], "proto": "any", "ignore": True} in base[
        "portForwards"
    ]
    assert base["ssh"]["loadDotSSHPubKeys"] is False and base["ssh"]["forwardAgent"] is False
    assert base["containerd"] == {"system": False, "user": False} and base["propagateProxyEnv"] is False
    assert "http" not in template  # nothing is downloaded: the image is vmsbx's own local build
    script = render_stock_sshd_setup(KEYS)
    rendered = render_lima_yaml(
        template, image=IMAGE, cpus=2, memory_bytes=4 << 30, disk_bytes=20 << 30, setup_script=script
    )
    parsed = yaml.safe_load(rendered)
    assert (parsed["cpus"], parsed["memory"], parsed["disk"]) == (2, "4GiB", "20GiB")
    assert parsed["provision"] == [{"mode": "system", "script": script}]
    assert parsed["mounts"] == [] and parsed["plain"] is True
    assert parsed["arch"] == "x86_64"
    assert parsed["images"] == [
        {
            "location": "/img/disk.qcow2", "arch": "x86_64", "digest": "sha256:" + "a" * 64,
            "kernel": {"location": "/img/vmlinuz", "arch": "x86_64", "digest": "sha256:" + "b" * 64,
                       "cmdline": "root=/dev/vda rw console=hvc0 console=ttyS0 panic=-1"},
            "initrd": {"location": "/img/initrd", "arch": "x86_64", "digest": "sha256:" + "c" * 64},
        }
    ]  # fmt: skip
    for key in ("provision", "images", "arch"):
        with pytest.raises(ValueError, match=f"must not set '{key}'"):
            render_lima_yaml(
                template + f"{key}: []\n", image=IMAGE, cpus=1, memory_bytes=1, disk_bytes=1, setup_script=""
            )


def test_the_lima_recipe_is_the_bookworm_recipe_plus_what_limas_boot_needs() -> None:
    base, variant = load_recipe("bookworm"), load_recipe("bookworm-lima")
    assert variant.packages[: len(base.packages)] == base.packages
    assert variant.packages[len(base.packages) :] == ("cloud-init", "sudo")
    assert variant.hooks == (*base.hooks, "customize-lima.sh")
    assert (variant.suite, variant.variant, variant.sources) == (base.suite, base.variant, base.sources)
    assert recipe_hash(variant) != recipe_hash(base)
    hooks = [arg for arg in render_mmdebstrap_argv(variant, Path("/t")) if arg.startswith("--customize-hook")]
    assert [hook.split("/")[-1] for hook in hooks] == ['customize.sh "$1"', 'customize-lima.sh "$1"']
    table: dict[str, dict[str, object]] = {
        "a": {"suite": "x", "variant": "v", "disk_size": "1G", "sources": [], "packages": ["p"]},
        "b": {"extends": "a", "add_packages": ["q"]},
        "c": {"extends": "b"},
        "d": {"add_packages": ["q"]},
    }
    assert resolve_recipe(table, "b").packages == ("p", "q")
    for bad in ("c", "d"):  # a chain of variants, or additions to nothing
        with pytest.raises(UsageError):
            resolve_recipe(table, bad)
    cloud_cfg = (TEMPLATES / "qemu" / "customize-lima.sh").read_text()
    assert "datasource_list: [NoCloud]" in cloud_cfg  # never a network metadata service


def test_cloud_init_keeps_the_default_user_and_carries_the_pinned_keys() -> None:
    template = (TEMPLATES / "multipass" / "cloud-init.yaml").read_text()
    assert template.startswith("#cloud-config\n")
    base = yaml.safe_load(template)
    known = {
        "users",
        "disable_root",
        "ssh_pwauth",
        "ssh_deletekeys",
        "ssh_genkeytypes",
        "runcmd",
    }
    assert set(base) <= known
    assert base["users"][0] == "default"  # Multipass logs in as `ubuntu`: never replace it
    assert base["disable_root"] is False and base["ssh_pwauth"] is False
    assert base["ssh_deletekeys"] is True and base["ssh_genkeytypes"] == []
    user_data = render_user_data(template, KEYS, sshd_drop_in=sshd_drop_in())
    parsed = yaml.safe_load(user_data)
    for entry in parsed["write_files"]:
        assert set(entry) <= {"path", "content", "permissions", "owner", "encoding", "append", "defer"}
    assert parsed["ssh_keys"] == {"ed25519_private": KEYS.host_private, "ed25519_public": KEYS.host_public}
    assert parsed["ssh_authorized_keys"] == [KEYS.client_public]
    assert user_data.startswith("#cloud-config\n")


def test_wsl_conf_turns_host_sharing_off_and_systemd_on() -> None:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((TEMPLATES / "wsl2" / "wsl.conf").read_text())
    documented = {
        "boot": {"systemd"},
        "automount": {"enabled", "mountFsTab"},
        "interop": {"enabled", "appendWindowsPath"},
        "fileServer": {"enabled"},
        "gpu": {"enabled"},
        "user": {"default"},
    }
    for section in parser.sections():
        assert set(parser[section]) <= documented[section], section
    assert parser["boot"]["systemd"] == "true"
    for section, key in (("automount", "enabled"), ("automount", "mountFsTab"), ("interop", "enabled"),
                         ("interop", "appendWindowsPath"), ("fileServer", "enabled")):  # fmt: skip
        assert parser[section][key] == "false", (section, key)


def _wsl_setup_script() -> str:
    """The WSL2 setup script from the shipped templates, sshd on port 42022."""
    root = TEMPLATES / "wsl2"
    return render_wsl_setup(
        KEYS,
        wsl_conf=(root / "wsl.conf").read_text(),
        sshd_config=(root / "sshd_config").read_text(),
        sshd_unit=(root / "vmsbx-sshd.service").read_text(),
        port=42022,
    )


def test_wsl_setup_script_binds_vmsbx_sshd_to_loopback_only() -> None:
    script = _wsl_setup_script()
    assert "ListenAddress 127.0.0.1:42022\n" in script
    assert "systemctl disable ssh.service ssh.socket" in script
    assert "cat > '/etc/wsl.conf.vmsbx-new' <<'VMSBX_EOF'" in script
    assert KEYS.host_private in script and KEYS.client_public in script
    with pytest.raises(ValueError):
        render_wsl_setup(KEYS, wsl_conf="", sshd_config="", sshd_unit="", port=22)


def test_heredoc_refuses_content_that_would_end_it() -> None:
    with pytest.raises(ValueError):
        heredoc("/etc/x", "a\nVMSBX_EOF\nrm -rf /\n", mode="0644")
    with pytest.raises(ValueError):
        heredoc("/etc/x'; rm -rf /; '", "a", mode="0644")


# -- parsing the tools' output --------------------------------------------------------------------

_SSH_CONFIG = (RECORDED / "lima_ssh_config_header.txt").read_text() + (
    "Host lima-vmsbx-default\n"
    '  IdentityFile "/Users/me/.lima/_config/user"\n'
    "  StrictHostKeyChecking no\n"
    "  UserKnownHostsFile /dev/null\n"
    "  NoHostAuthenticationForLocalhost yes\n"
    "  User me\n"
    "  Hostname 127.0.0.1\n"
    "  Port 60123\n"
)


def test_lima_ssh_config_gives_only_the_endpoint() -> None:
    endpoint = parse_lima_ssh_config(_SSH_CONFIG, "lima-vmsbx-default")
    assert endpoint.model_dump() == {
        "hostname": "127.0.0.1", "port": 60123, "user": "me", "identity_file": "/Users/me/.lima/_config/user",
    }  # fmt: skip
    # Nothing about host-key checking is carried over: the record has no such field.
    assert "stricthostkeychecking" not in json.dumps(endpoint.model_dump()).lower()
    with pytest.raises(ProviderError, match="not at this host's loopback"):
        parse_lima_ssh_config(_SSH_CONFIG.replace("127.0.0.1", "192.168.5.15"), "lima-vmsbx-default")
    with pytest.raises(ProviderError, match="no usable Hostname/Port"):
        parse_lima_ssh_config(_SSH_CONFIG, "lima-other")


def test_lima_list_is_json_lines() -> None:
    out = (
        b'{"name":"a","hostname":"lima-a","status":"Running","dir":"/l/a","sshLocalPort":60001,'
        b'"sshConfigFile":"/l/a/ssh.config","HostOS":"darwin"}\n'
        b'{"name":"b","hostname":"lima-b","status":"Broken","dir":"/l/b","errors":["x"]}\n'
    )
    first, second = parse_list_json(out)
    assert (first.name, first.status, first.ssh_local_port) == ("a", "Running", 60001)
    assert (second.name, second.status) == ("b", "Broken")


def test_multipass_info_reads_the_recorded_fixture() -> None:
    info = parse_info_json((RECORDED / "multipass_info_single.json").read_bytes(), "foo")
    assert (info.state, info.ipv4[0]) == ("Running", "10.168.32.2")
    with pytest.raises(ProviderError):
        parse_info_json(b'{"errors":[],"info":{}}', "foo")


def test_wsl_output_decoding_and_table() -> None:
    raw = (RECORDED / "wsl_list_verbose.utf16le").read_bytes()
    text = decode_tool_text(raw)
    assert "\r" not in text and "\0" not in text
    assert parse_list_verbose(text) == {"Ubuntu": ("Stopped", "2")}
    assert decode_tool_text(b"  NAME STATE VERSION\r\n") == "  NAME STATE VERSION\n"
    failure = ToolResult(
        ("wsl.exe",), 255, "There is no distribution with the supplied name.\r\nError code: "
        "Wsl/Service/WSL_E_DISTRO_NOT_FOUND\r\n".encode("utf-16-le"), b""
    )  # fmt: skip
    assert wsl_error_code(failure) == "Wsl/Service/WSL_E_DISTRO_NOT_FOUND"


def test_versions_from_each_tool() -> None:
    assert parse_version("limactl version 2.2.0") == (2, 2, 0)
    assert parse_version("1.10.1+mac") == (1, 10, 1)
    assert parse_version("WSL version: 2.5.7.0\nKernel version: 6.6.87.1-1") == (2, 5, 7)
    assert parse_version("nothing") is None


# -- auto -----------------------------------------------------------------------------------------


def test_auto_picks_the_first_usable_provider_of_the_platform() -> None:
    assert AUTO_ORDER["darwin"] == ("lima", "multipass")
    assert AUTO_ORDER["win32"] == ("wsl2", "multipass")
    assert AUTO_ORDER["linux"] == ("qemu", "lima", "multipass")
    assert platform_key("linux") == "linux" and platform_default("darwin") == "lima"
    assert platform_default("win32") == "wsl2"
    assert choose_auto(AUTO_ORDER["darwin"], lambda name: name == "multipass") == "multipass"
    assert choose_auto(AUTO_ORDER["darwin"], lambda name: True) == "lima"
    # none usable: the platform default, whose probe names the install command
    assert choose_auto(AUTO_ORDER["win32"], lambda name: False) == "wsl2"


def test_off_linux_the_lima_image_is_built_on_linux_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from vmsbx.providers.lima_image import lima_recipe_name, resolve_lima_image

    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ProviderError) as caught:
        resolve_lima_image("bookworm", None, lambda _message: None)
    assert "sudo vmsbx image lima" in str(caught.value.hint) and "vm.lima_image" in str(caught.value.hint)
    assert lima_recipe_name("bookworm") == "bookworm-lima"
    with pytest.raises(UsageError, match="no image for trixie"):
        lima_recipe_name("trixie")


SSHD_POLICY = {
    "PermitRootLogin": "prohibit-password",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "AllowAgentForwarding": "no",
    "X11Forwarding": "no",
    "PermitUserEnvironment": "no",
    "UseDNS": "no",
}


def _sshd_options(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def _heredoc_body(script: str, path: str) -> str:
    start = script.index(f"cat > '{path}.vmsbx-new' <<'VMSBX_EOF'\n") + len(
        f"cat > '{path}.vmsbx-new' <<'VMSBX_EOF'\n"
    )
    return script[start : script.index("VMSBX_EOF\n", start)]


def test_every_provider_gets_the_one_sshd_policy() -> None:
    """One source (vm-templates/qemu/sshd-vmsbx.conf): the QEMU image's hook installs it, Lima's
    and Multipass's drop-ins and WSL2's own sshd_config are rendered from it. (The Lima/WSL2
    copies once lacked PermitUserEnvironment and UseDNS.)"""
    policy = _sshd_options(sshd_policy())
    assert {key: values[0] for key, values in policy.items()} == SSHD_POLICY
    assert all(len(values) == 1 for values in policy.values())
    lima = _sshd_options(_heredoc_body(render_stock_sshd_setup(KEYS), "/etc/ssh/sshd_config.d/10-vmsbx.conf"))
    multipass = yaml.safe_load(
        render_user_data(
            (TEMPLATES / "multipass" / "cloud-init.yaml").read_text(), KEYS, sshd_drop_in=sshd_drop_in()
        )
    )["write_files"]
    assert [entry["path"] for entry in multipass] == ["/etc/ssh/sshd_config.d/10-vmsbx.conf"]
    wsl_script = _wsl_setup_script()
    wsl = _sshd_options(_heredoc_body(wsl_script, "/etc/ssh/vmsbx/sshd_config"))
    stock_key = ["/etc/ssh/ssh_host_ed25519_key"]
    for name, options, host_key in (
        ("lima", lima, stock_key),
        ("multipass", _sshd_options(multipass[0]["content"]), stock_key),
        ("wsl2", wsl, ["/etc/ssh/vmsbx/ssh_host_ed25519_key"]),
    ):
        assert options.pop("HostKey") == host_key, name
        for key, value in SSHD_POLICY.items():
            assert options.get(key) == [value], (name, key)
    # The QEMU image's hook reads the same file, and no template carries a copy of its lines.
    customize = (TEMPLATES / "qemu" / "customize.sh").read_text()
    assert 'cat "$(dirname "$0")/sshd-vmsbx.conf"' in customize
    for path in [*TEMPLATES.rglob("*"), *(TEMPLATES.parent / "orchestrator").rglob("*.py")]:
        if path.is_file() and path.name != "sshd-vmsbx.conf":
            text = path.read_text(errors="replace")
            assert "PermitUserEnvironment no" not in text and "KbdInteractiveAuthentication no" not in text, (
                path
            )
