"""Make guest-produced text safe to show on the host's terminal.

Everything from the guest is attacker-controlled: escape sequences could rewrite the screen,
set the window title or, on some terminals, inject input. Views strip them; only the raw
`--tty` passthrough is byte-exact.
"""

from __future__ import annotations

import re

# CSI, OSC (terminated by BEL or ST), other two-byte ESC sequences, and C0/C1 controls except
# tab and newline. An unterminated OSC is dropped only up to the end of its line: its ESC goes
# with it, so what follows is inert, and it cannot swallow the lines after it (a commit message
# hiding the patch below it).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]"
    # Bidirectional overrides and isolates: they cannot drive the terminal but can make guest
    # text read as something else (file names, log lines).
    r"|[\u202a-\u202e\u2066-\u2069]"
)


def strip_control(text: str) -> str:
    """Remove terminal control sequences and control characters, keeping tabs and newlines."""
    return _ESCAPES.sub("", text.replace("\r\n", "\n"))
