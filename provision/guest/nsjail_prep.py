#!/usr/bin/python3
"""vmsbx nsjail preparation: the root side of an nsjail-mode run that systemd mode leaves to
systemd. Pushed with guest.py; guest.py imports it (same directory), or run it directly:

  prepare ID UID    stdin: the run's nsjail config (rendered on the host).
                    After the launcher mounted the workspace and before the unit starts:
                    claims UID for the run (refuses one in use), writes the config into the
                    root-only run directory, and hands the workspace to UID, as StateDirectory=
                    does for a DynamicUser in systemd mode. Prints JSON.
  release ID        gives the run's uid claim back (the launcher's teardown calls this).

Standard library only (python 3.11.2 in Debian 12); every path comes from the run id.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import sys

# The host renders the config with the same contract; this side refuses anything else.
from contract import (
    EXIT_FAILED,
    EXIT_UID_IN_USE,
    EXIT_USAGE,
    NSJAIL,
    OUTSIDE_UID_FIRST,
    OUTSIDE_UID_LAST,
    RUN_ID,
    RunPaths,
)
from contract import NSJAIL_CONFIG_MAX as CONFIG_MAX

CLAIMS = "/run/vmsbx/jail-uids"  # on tmpfs: a crash or reboot cannot leave a uid claimed


class PrepError(Exception):
    """An nsjail run cannot be prepared; the message says why and what to do."""


class UidInUse(PrepError):
    """The drawn outside uid is taken: the host launches again under a new run id."""


def _run_paths(run_id: str) -> RunPaths:
    try:
        return RunPaths(run_id)
    except ValueError as exc:
        raise PrepError(str(exc)) from None


def _uid_in_use(uid: int) -> str | None:
    """Why `uid` is not free for a jail, or None: an account, a group, or a live process."""
    try:
        return f"it belongs to the account {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        pass
    try:
        return f"it is the id of the group {grp.getgrgid(uid).gr_name!r}"
    except KeyError:
        pass
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith(("Uid:", "Gid:")) and str(uid) in line.split()[1:]:
                        return f"process {entry} runs with it"
        except OSError:
            continue  # the process ended meanwhile
    return None


def _claim(run_id: str, uid: int) -> None:
    os.makedirs(CLAIMS, mode=0o700, exist_ok=True)
    path = f"{CLAIMS}/{uid}"
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            owner = _claim_owner(path)
            if owner == run_id:
                return
            if RUN_ID.fullmatch(owner) and os.path.isdir(RunPaths(owner).run_dir):
                raise UidInUse(f"uid {uid} is claimed by the live run {owner}; start the run again") from None
            os.unlink(path)  # left by a run that is gone
            continue
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(run_id)
        return
    raise PrepError(f"could not claim uid {uid}")


def _claim_owner(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(64).strip()
    except OSError:
        return ""


def release(run_id: str) -> int:
    """Give back every uid claimed by `run_id` (idempotent)."""
    _run_paths(run_id)
    if not os.path.isdir(CLAIMS):
        return 0
    for name in os.listdir(CLAIMS):
        path = f"{CLAIMS}/{name}"
        if _claim_owner(path) == run_id:
            os.unlink(path)
    return 0


def _hand_over(top: str, uid: int) -> int:
    """lchown every entry of the workspace to uid:uid; never follows a link, never leaves the
    workspace's filesystem. Returns the number of entries changed."""
    top_stat = os.lstat(top)
    if not stat.S_ISDIR(top_stat.st_mode) or not os.path.ismount(top):
        raise PrepError(f"{top} is not the mounted workspace")
    changed = 0
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if info.st_dev != top_stat.st_dev:
                raise PrepError(f"{path} is on another filesystem")
            os.lchown(path, uid, uid)
            changed += 1
    os.lchown(top, uid, uid)
    os.chmod(top, 0o755)  # noqa: S103 - the jail's workspace root, owned by the jail's user
    return changed + 1


def prepare(run_id: str, config: str, uid: int) -> dict[str, object]:
    """Claim `uid`, write `config`, hand the workspace over. Raises PrepError."""
    p = _run_paths(run_id)
    if not OUTSIDE_UID_FIRST <= uid <= OUTSIDE_UID_LAST:
        raise PrepError(
            f"outside uid {uid} is not in vmsbx's jail range {OUTSIDE_UID_FIRST}-{OUTSIDE_UID_LAST}"
        )
    if uid in (0, os.getuid(), os.geteuid()):
        raise PrepError(f"uid {uid} is the caller's own id")
    if not os.access(NSJAIL, os.X_OK):
        raise PrepError(f'{NSJAIL} is missing: run `vmsbx up` with sandbox.mode = "nsjail" to install it')
    if not config.strip() or len(config.encode()) > CONFIG_MAX:
        raise PrepError("the nsjail config is empty or too large")
    if not os.path.isdir(p.run_dir):
        raise PrepError(f"run {run_id} has no run directory (launch it first)")
    busy = _uid_in_use(uid)
    if busy:
        raise UidInUse(f"uid {uid} is in use ({busy}); start the run again")
    _claim(run_id, uid)
    try:
        fd = os.open(p.nsjail_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config)
        changed = _hand_over(p.workspace_mount, uid)
    except BaseException:
        release(run_id)
        raise
    return {"config": p.nsjail_config, "outside_uid": uid, "workspace_entries": changed}


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 3 and argv[0] == "prepare" and argv[2].isdigit():
            print(json.dumps(prepare(argv[1], sys.stdin.read(CONFIG_MAX + 1), int(argv[2]))))
            return 0
        if len(argv) == 2 and argv[0] == "release":
            return release(argv[1])
    except (PrepError, OSError) as exc:
        sys.stderr.write(f"vmsbx-nsjail-prep: {exc}\n")
        return EXIT_UID_IN_USE if isinstance(exc, UidInUse) else EXIT_FAILED
    sys.stderr.write("usage: nsjail_prep.py prepare ID UID < config | release ID\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
