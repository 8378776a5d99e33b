"""Pure renderers of the shell scripts that put vmsbx's keys into a guest it did not boot itself.

The keys are vmsbx's own (generated, base64 and PEM text only) and travel in quoted heredocs, so
nothing in them is ever interpreted by the shell; a renderer refuses any content that could end
a heredoc early. Scripts are idempotent: Lima runs its provision scripts on every boot.
"""

from __future__ import annotations

from vmsbx.paths import data_dir
from vmsbx.providers.guestkeys import VMKeys

_EOF = "VMSBX_EOF"
STOCK_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"


def sshd_policy() -> str:
    """vmsbx's sshd policy, the one source every provider uses (the QEMU image's hook installs
    the same file): vm-templates/qemu/sshd-vmsbx.conf."""
    return (data_dir() / "vm-templates" / "qemu" / "sshd-vmsbx.conf").read_text(encoding="utf-8")


def sshd_drop_in(host_key: str = STOCK_HOST_KEY) -> str:
    """/etc/ssh/sshd_config.d/10-vmsbx.conf: the key vmsbx pinned, then the policy."""
    return f"HostKey {host_key}\n" + sshd_policy()


def heredoc(path: str, content: str, *, mode: str) -> str:
    """Shell lines writing `content` to `path` with `mode`, atomically (written beside, renamed)."""
    if _EOF in content or not path.startswith("/") or "'" in path or " " in path:
        raise ValueError(f"refusing to render {path!r}: unsafe path or content")
    body = content if content.endswith("\n") else content + "\n"
    return (
        f"cat > '{path}.vmsbx-new' <<'{_EOF}'\n{body}{_EOF}\n"
        f"chmod {mode} '{path}.vmsbx-new'\nmv -f '{path}.vmsbx-new' '{path}'\n"
    )


def _authorize_root(public_line: str) -> str:
    if "'" in public_line or "\n" in public_line:
        raise ValueError("refusing to render a public key line with quotes or newlines")
    # Appended, not replaced: other keys the provider itself relies on stay.
    return (
        "install -d -m 0700 /root/.ssh\n"
        f"grep -qxF '{public_line}' /root/.ssh/authorized_keys 2>/dev/null || "
        f"printf '%s\\n' '{public_line}' >> /root/.ssh/authorized_keys\n"
        "chmod 0600 /root/.ssh/authorized_keys\n"
    )


def render_stock_sshd_setup(keys: VMKeys) -> str:
    """Script for guests whose stock sshd is the endpoint (Lima): pinned host key, root by key."""
    return (
        "#!/bin/sh\n"
        "# vmsbx: the SSH host key vmsbx pinned, and vmsbx's client key for root.\n"
        "set -eu\numask 077\n"
        "rm -f /etc/ssh/ssh_host_rsa_key /etc/ssh/ssh_host_rsa_key.pub "
        "/etc/ssh/ssh_host_ecdsa_key /etc/ssh/ssh_host_ecdsa_key.pub\n"
        + heredoc("/etc/ssh/ssh_host_ed25519_key", keys.host_private, mode="0600")
        + heredoc("/etc/ssh/ssh_host_ed25519_key.pub", keys.host_public, mode="0644")
        + "install -d -m 0755 /etc/ssh/sshd_config.d\n"
        + heredoc("/etc/ssh/sshd_config.d/10-vmsbx.conf", sshd_drop_in(), mode="0644")
        + _authorize_root(keys.client_public)
        + "systemctl reload-or-restart ssh.service 2>/dev/null || systemctl reload-or-restart sshd.service\n"
    )


def render_wsl_setup(keys: VMKeys, *, wsl_conf: str, sshd_config: str, sshd_unit: str, port: int) -> str:
    """Script run once in a freshly imported WSL distro (as root, through wsl.exe):

    the hardened /etc/wsl.conf, and vmsbx's own sshd (separate config, host key and
    authorized_keys) bound to 127.0.0.1:`port`, enabled for the next boot. The distro's stock
    ssh.service is disabled for the next boot, so that vmsbx's endpoint is the only one.
    The caller restarts the distro (`wsl.exe --terminate`) so that wsl.conf applies.
    """
    if not 1024 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    config = sshd_config + sshd_policy() + f"ListenAddress 127.0.0.1:{port}\n"
    return (
        "#!/bin/sh\n"
        "# vmsbx: harden the WSL distro and give it vmsbx's own SSH endpoint.\n"
        "set -eu\numask 077\n"
        + heredoc("/etc/wsl.conf", wsl_conf, mode="0644")
        + "install -d -m 0700 /etc/ssh/vmsbx\n"
        + heredoc("/etc/ssh/vmsbx/ssh_host_ed25519_key", keys.host_private, mode="0600")
        + heredoc("/etc/ssh/vmsbx/ssh_host_ed25519_key.pub", keys.host_public, mode="0644")
        + heredoc("/etc/ssh/vmsbx/authorized_keys", keys.client_public, mode="0600")
        + heredoc("/etc/ssh/vmsbx/sshd_config", config, mode="0600")
        + heredoc("/etc/systemd/system/vmsbx-sshd.service", sshd_unit, mode="0644")
        + "if [ -d /run/systemd/system ]; then\n"
        "  systemctl daemon-reload\n"
        "  systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true\n"
        "  systemctl enable --now vmsbx-sshd.service\n"
        "else\n"
        "  ln -sf /etc/systemd/system/vmsbx-sshd.service "
        "/etc/systemd/system/multi-user.target.wants/vmsbx-sshd.service\n"
        "  rm -f /etc/systemd/system/multi-user.target.wants/ssh.service "
        "/etc/systemd/system/sockets.target.wants/ssh.socket\n"
        "fi\n"
    )
