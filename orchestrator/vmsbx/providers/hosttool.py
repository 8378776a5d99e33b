"""Running a provider's host program (limactl, multipass, wsl.exe): one place for the rules.

Every call has a timeout larger than the tool's own, stdin closed (wsl.exe has hung on an
inherited console), output captured as bytes, and a missing program turned into `ToolMissing`
with the install command. Interpreting exit codes and messages is each provider's job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmsbx.errors import ProviderError, ToolMissing
from vmsbx.textsafe import strip_control


@dataclass(frozen=True)
class ToolResult:
    """What one host-tool call did. A non-zero exit is a result; the provider decides."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def message(self) -> str:
        """stderr (or stdout when stderr is empty) as safe text for an error message."""
        raw = self.stderr if self.stderr.strip() else self.stdout
        return strip_control(decode_tool_text(raw)).strip()[-2000:]


def decode_tool_text(raw: bytes) -> str:
    """Decode a host tool's own messages: UTF-16LE when it is (wsl.exe without WSL_UTF8), UTF-8
    otherwise; carriage returns dropped (wsl.exe ends lines with \\r\\n and sometimes \\r\\r\\n)."""
    if raw.count(b"\0") * 4 >= len(raw) > 0:
        text = raw.decode("utf-16-le", errors="replace").lstrip("\ufeff")
    else:
        text = raw.decode("utf-8", errors="replace")
    return text.replace("\r", "")


def find_tool(program: str) -> str | None:
    return shutil.which(program)


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    install_hint: str,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> ToolResult:
    """Run `argv` (argv[0] is looked up on PATH) and return what it did.

    Raises ToolMissing when the program is not installed and ProviderError when it outlives
    `timeout` (the VM may still be changing state: callers re-read it rather than assume).
    """
    program = find_tool(argv[0])
    if program is None:
        raise ToolMissing(f"{argv[0]} is not installed (or not on PATH)", hint=install_hint)
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        done = subprocess.run(
            [program, *argv[1:]],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(
            f"`{' '.join(argv[:3])} …` did not finish within {timeout:.0f} s",
            hint="the VM may still be changing state; `vmsbx status` shows where it is, "
            "and `vmsbx up` picks up from there",
        ) from exc
    return ToolResult(tuple(argv), done.returncode, done.stdout, done.stderr)


_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first dotted version number in `text` ("limactl version 2.2.0" -> (2, 2, 0))."""
    match = _VERSION_RE.search(text)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)
