"""vmsbx's own log: structured JSON lines in the state dir, rotated, with secrets masked.

Every process (CLI and host agents) appends to `<state>/logs/vmsbx.log`; `-v` (info) and `-vv`
(debug) also print the lines on stderr. Masking runs before any handler sees a record: values
registered with `register_secret` and anything shaped like an API key or token become `***`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from vmsbx.paths import ensure_private_dir, state_root

MASK = "***"
_MAX_BYTES = 5 * 1024 * 1024
_BACKUPS = 3
_PATTERNS = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"
    r"|\bsk-[A-Za-z0-9_\-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # JWT
    r"|(?i:(?<=bearer\s))[A-Za-z0-9._~+/\-]{8,}=*"
    r"|(?i:(?<=api[_-]key=)|(?<=token=)|(?<=password=)|(?<=secret=))[^\s&\"']+"
)
# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_secrets: set[str] = set()
_lock = threading.Lock()
_configured: list[int] = []


def register_secret(value: str) -> None:
    """Mask this exact value wherever it appears in a log line from now on (short values are
    ignored: masking every "a" would destroy the log)."""
    if len(value) >= 6:
        with _lock:
            _secrets.add(value)


def looks_secret(text: str) -> bool:
    """Whether `text` holds something shaped like an API key, a token or a password (what the
    log masks), or a value registered with `register_secret`."""
    return mask(text) != text


def mask(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return _PATTERNS.sub(MASK, text)


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The log file (and each one it rotates to) created 0600 whatever the umask."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        return io.TextIOWrapper(os.fdopen(fd, "ab"), encoding=self.encoding, errors=self.errors)


def log_file() -> Path:
    return state_root() / "logs" / "vmsbx.log"


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, mask(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | type(None)) else mask(str(value))
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        )
        return f"vmsbx: {record.levelname.lower()}: {record.name}: {record.getMessage()}" + (
            f" ({fields})" if fields else ""
        )


def setup(verbosity: int = 0, *, stderr: bool = True) -> Path | None:
    """Log vmsbx's steps to the log file (debug and up) and, with verbosity 1/2, info/debug to
    stderr. Idempotent per process. Returns the file, or None when it cannot be written (the
    run goes on; logging never stops vmsbx)."""
    root = logging.getLogger("vmsbx")
    with _lock:
        if _configured:
            return log_file()
        _configured.append(os.getpid())
    root.setLevel(logging.DEBUG)
    masker = _MaskFilter()
    path: Path | None = log_file()
    try:
        assert path is not None
        ensure_private_dir(path.parent)
        handler: logging.Handler = _PrivateRotatingFileHandler(
            path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
        )
        handler.setFormatter(JsonFormatter())
        handler.addFilter(masker)
        root.addHandler(handler)
    except OSError:
        path = None
    if verbosity > 0 and stderr:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
        terminal.setFormatter(_TerminalFormatter())
        terminal.addFilter(masker)
        root.addHandler(terminal)
    return path
