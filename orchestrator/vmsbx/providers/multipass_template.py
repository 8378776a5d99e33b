"""Render the cloud-init user-data vmsbx launches Multipass instances with (pure).

`vm-templates/multipass/cloud-init.yaml` holds the static part; this appends the pinned host key
(`ssh_keys`), vmsbx's client key (`ssh_authorized_keys`, for the default user and, with
`disable_root: false`, for root) and vmsbx's sshd drop-in (`write_files`, the same policy every
provider gets: vmsbx.providers.guest_setup.sshd_drop_in). Appended values are JSON, which YAML reads as-is.
"""

from __future__ import annotations

import json

from vmsbx.providers.guestkeys import VMKeys


def render_user_data(template: str, keys: VMKeys, *, sshd_drop_in: str) -> str:
    if not template.startswith("#cloud-config\n"):
        raise ValueError("cloud-init user-data must start with '#cloud-config'")
    for key in ("ssh_keys:", "ssh_authorized_keys:", "write_files:"):
        if any(line.startswith(key) for line in template.splitlines()):
            raise ValueError(f"the template must not set {key[:-1]!r}: vmsbx appends it")
    extra = {
        "ssh_keys": {"ed25519_private": keys.host_private, "ed25519_public": keys.host_public},
        "ssh_authorized_keys": [keys.client_public],
        "write_files": [
            {"path": "/etc/ssh/sshd_config.d/10-vmsbx.conf", "permissions": "0644", "content": sshd_drop_in}
        ],
    }
    lines = [f"{key}: {json.dumps(value)}" for key, value in extra.items()]
    return template.rstrip("\n") + "\n\n# Added by vmsbx for this VM.\n" + "\n".join(lines) + "\n"
