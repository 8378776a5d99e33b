"""Render the Lima instance file vmsbx creates instances from (pure).

`vm-templates/lima/vmsbx.yaml` holds the static hardening; this appends what differs per VM:
the size and one `mode: system` provision entry carrying the pinned host key and vmsbx's client
key. Appended values are JSON, which YAML reads as-is, so vmsbx needs no YAML library and no
value can break out of its field.
"""

from __future__ import annotations

import json


def render_lima_yaml(
    template: str, *, cpus: int, memory_bytes: int, disk_bytes: int, setup_script: str
) -> str:
    for key in ("cpus:", "memory:", "disk:", "provision:"):
        if any(line.startswith(key) for line in template.splitlines()):
            raise ValueError(f"the Lima template must not set {key[:-1]!r}: vmsbx appends it")
    gib = 1024**3
    extra = {
        "cpus": cpus,
        "memory": f"{memory_bytes / gib:g}GiB",
        "disk": f"{disk_bytes / gib:g}GiB",
        "provision": [{"mode": "system", "script": setup_script}],
    }
    lines = [f"{key}: {json.dumps(value)}" for key, value in extra.items()]
    return template.rstrip("\n") + "\n\n# Added by vmsbx for this VM.\n" + "\n".join(lines) + "\n"
