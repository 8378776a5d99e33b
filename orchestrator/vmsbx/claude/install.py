"""Installing Claude Code in the guest, by one of two paths, skipped when the same build is there.

* push (the guests here have no network): the host verifies its cached tarball and streams it
  over the agent's SSH connection into the guest installer, which checks it again and unpacks
  it. The tarball travels, not the program (186 MB, not 402 MB): under TCG on a busy host the
  bytes through the guest's sshd cost more than gunzip in the guest (measured: ~300 s to push
  the program, ~180 s to fetch and unpack the tarball in the guest, at the same load).
* guest-fetch (a guest with a network): the guest installer downloads the tarball from the
  registry itself and refuses it unless it matches the integrity the host hands it (from the
  lock, or from the registry over the host's verified HTTPS).

Both end in `provision/guest/claude_install.py`, which installs the program root-owned and 0755
under /usr/local/lib/vmsbx/claude/<version>/, checks `claude --version` as `nobody`, and writes
the marker that `guest-facts.sh` reports as `claude_installed`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field

from vmsbx.agent.client import AgentClient
from vmsbx.claude.package import ClaudeTarball, ensure_tarball, platform_for_arch, resolve
from vmsbx.config.models import Settings
from vmsbx.contract import claude_binary, claude_marker
from vmsbx.errors import GuestCheckFailed
from vmsbx.guest import GuestFacts
from vmsbx.sandbox.layout import GUEST_LIB

log = logging.getLogger(__name__)

GUEST_INSTALLER = f"{GUEST_LIB}/claude_install.py"

Method = Literal["push", "guest-fetch"]
_MiB = 1024 * 1024


class ClaudeInstall(BaseModel):
    """What `vmsbx up` did about Claude Code in the guest."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    state: Literal["installed", "present"] = Field(description="installed now, or already there.")
    version: str = Field(description="Claude Code version in the guest.")
    platform: str = Field(description="npm platform package: linux-x64 or linux-arm64.")
    method: Method | None = Field(description="How it got there this time; None when present.")
    path: str = Field(description="The program in the guest.")
    integrity: str = Field(description="npm integrity (sha512) the build was verified against.")
    pinned: bool = Field(description="True if verified against vmsbx's lock, not registry metadata.")
    reported: str | None = Field(default=None, description="`claude --version` as nobody, if run.")
    seconds: float = Field(ge=0, description="Time spent on the install (0 when present).")

    @property
    def marker(self) -> str:
        """The guest marker of this exact build."""
        return claude_marker(self.version, self.platform, self.integrity)


def choose_method(install: str, guest_network: str) -> Method | None:
    """`agent.install` resolved: auto pushes unless the guest has a network of its own; none
    (None) installs nothing."""
    if install == "none":
        return None
    if install == "auto":
        return "guest-fetch" if guest_network == "nat" else "push"
    if install in ("push", "guest-fetch"):
        return install  # type: ignore[return-value]
    raise ValueError(f"unknown install method {install!r}")


def provision_claude(
    client: AgentClient,
    *,
    arch: str,
    installed: str,
    version: str,
    method: Method,
    registry: str,
    report: Callable[[str], None] = lambda _m: None,
) -> ClaudeInstall:
    """Make the guest hold Claude Code `version` for its architecture, verified; a no-op (state
    "present") when the guest's marker names this exact build. `installed` is the marker the
    guest reported. On the push path the host's cached tarball is verified first, every time,
    so a corrupted cache is refused even when nothing would be pushed."""
    platform = platform_for_arch(arch)
    if method == "push":
        tarball = ensure_tarball(version, platform, registry=registry, progress=_download_report(report))
        integrity, pinned = tarball.integrity, tarball.pinned
    else:
        integrity, pinned = resolve(version, platform, registry=registry)
    done = ClaudeInstall(
        state="present",
        version=version,
        platform=platform,
        method=None,
        path=claude_binary(version),
        integrity=integrity,
        pinned=pinned,
        seconds=0.0,
    )
    if installed.strip() == claude_marker(version, platform, integrity):
        return done
    started = time.monotonic()
    if method == "push":
        result = _push(client, tarball, report)
    else:
        report(f"guest fetching Claude Code {version} from {registry}")
        code, out, err = client.run(
            ["python3", GUEST_INSTALLER, "fetch", version, platform, integrity, registry]
        )
        result = _result(code, out, err)
    seconds = round(time.monotonic() - started, 1)
    log.info("Claude Code %s installed in the guest by %s in %.1f s", version, method, seconds)
    return done.model_copy(
        update={"state": "installed", "method": method, "reported": result["reported"], "seconds": seconds}
    )


def provision_claude_for(
    client: AgentClient, facts: GuestFacts, settings: Settings, report: Callable[[str], None]
) -> ClaudeInstall | None:
    """`vmsbx up`'s step: the configured Claude Code in the guest, by the configured path (None
    when agent.install is "none")."""
    method = choose_method(settings.agent.install, settings.vm.guest_network)
    if method is None:
        return None
    report(f"checking Claude Code {settings.agent.claude_version} in the guest")
    install = provision_claude(
        client,
        arch=facts.arch,
        installed=facts.claude_installed,
        version=settings.agent.claude_version,
        method=method,
        registry=settings.agent.registry,
        report=report,
    )
    if install.state == "installed":
        report(f"installed Claude Code {install.version} ({install.reported}) in {install.seconds} s")
    return install


def up_summary(install: ClaudeInstall | None) -> dict[str, object]:
    """The `claude*` keys of `vmsbx up --json`."""
    if install is None:
        return {"claude": "skipped", "claude_version": None, "claude_seconds": 0.0}
    return {"claude": install.state, "claude_version": install.version, "claude_seconds": install.seconds}


def _result(code: int, out: bytes, err: bytes) -> dict[str, str]:
    """The installer's JSON line. Guest output is hostile: parsed strictly, shown escaped."""
    try:
        reply = json.loads(out[-8192:].decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        reply = None
    if code == 0 and isinstance(reply, dict) and isinstance(reply.get("reported"), str):
        return {"reported": reply["reported"][:200]}
    why = reply.get("error") if isinstance(reply, dict) else None
    detail = str(why)[:500] if why else err.decode(errors="replace")[-500:]
    raise GuestCheckFailed(
        f"installing Claude Code in the guest failed (exit {code}): {detail!r}",
        hint="run `vmsbx up` again; if it keeps failing, `vmsbx reset` gives a fresh guest",
    )


def _push(client: AgentClient, tarball: ClaudeTarball, report: Callable[[str], None]) -> dict[str, str]:
    """Stream the verified tarball into the guest installer's stdin, through a pipe fed by a
    thread so that progress can be counted; the installer checks its sha512 again and unpacks."""
    with tarball.path.open("rb") as source_file:
        read_fd, write_fd = os.pipe()
        sent = [0]
        feeder = threading.Thread(target=_feed, args=(source_file, write_fd, sent), daemon=True)
        stop = threading.Event()
        ticker = threading.Thread(
            target=_tick, args=(stop, sent, tarball.size, tarball.version, report), daemon=True
        )
        out, err = io.BytesIO(), io.BytesIO()
        argv = [
            "python3", GUEST_INSTALLER, "receive",
            tarball.version, tarball.platform, tarball.integrity, str(tarball.size),
        ]  # fmt: skip
        feeder.start()
        ticker.start()
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            try:
                code = client.exec(argv, stdin=source, stdout=out, stderr=err)
            finally:
                stop.set()
        # Closing the read end unblocks a feeder whose reader (the guest) gave up early.
        feeder.join(timeout=30)
        ticker.join(timeout=5)
    return _result(code, out.getvalue(), err.getvalue())


def _feed(binary: IO[bytes], write_fd: int, sent: list[int]) -> None:
    with contextlib.suppress(OSError), os.fdopen(write_fd, "wb", buffering=0) as sink:
        while chunk := binary.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[sink.write(view) or 0 :]
            sent[0] += len(chunk)


def _tick(
    stop: threading.Event, sent: list[int], size: int, version: str, report: Callable[[str], None]
) -> None:
    # Steps of 5 %: a spinner stays lively, and a log (stderr not a terminal) gets 20 lines, not 200.
    started = time.monotonic()
    shown = -1
    while not stop.wait(1.0):
        step = sent[0] * 20 // max(size, 1)
        if step == shown:
            continue
        shown = step
        if step >= 20:
            report(f"checking and unpacking Claude Code {version} in the guest")
            continue
        rate = sent[0] / _MiB / max(time.monotonic() - started, 0.1)
        total = size // _MiB
        report(f"pushing Claude Code {version} to the guest: {step * 5} % of {total} MiB ({rate:.1f} MiB/s)")


def _download_report(report: Callable[[str], None]) -> Callable[[int, int], None]:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            whole = f"/{total // _MiB}" if total else ""
            report(f"downloading Claude Code into the host cache: {done // _MiB}{whole} MiB")

    return progress
