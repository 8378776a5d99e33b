"""Wait for a booting guest to answer SSH: the project's one retry policy.

Everything that waits for a guest goes through `wait_for_ssh`, so backoff, deadline and what
counts as "not up yet" are decided once, here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    stop_before_delay,
    wait_exponential,
)

from vmsbx.errors import BootTimeout, VmsbxError
from vmsbx.sshinfo import SSHInfo
from vmsbx.transport.ssh import Connection, SSHAuthFailed, SSHUnreachable

_log = logging.getLogger("vmsbx.transport.wait")

__all__ = ["SERIAL_TAIL_LINES", "wait_for_ssh"]

SERIAL_TAIL_LINES = 30
# One attempt never waits longer than this for TCP/banner/auth, so a half-open guest cannot
# eat the whole deadline in a single try.
_ATTEMPT_TIMEOUT = 10.0
_MIN_ATTEMPT_TIMEOUT = 0.5
# While sleeping between attempts, notice a dead VM this quickly.
_ALIVE_POLL_SECONDS = 0.1


class _VMDied(Exception):
    """The VM process exited while we were waiting; retrying is pointless."""


def wait_for_ssh(
    info: SSHInfo,
    *,
    timeout: float,
    serial_tail: Callable[[], str] = lambda: "",
    is_alive: Callable[[], bool] | None = None,
    auth_grace: float = 10.0,
    vm_name: str | None = None,
) -> Connection:
    """Connect to a booting guest, retrying until it answers; return the open `Connection`.

    Retries (backoff 0.25 s doubling to 2 s, overall deadline `timeout`) while the guest is
    unreachable or the handshake breaks off, and for `auth_grace` seconds after the first
    rejected key (sshd can start before the key is installed). Never retries a host-key
    mismatch: that raises `HostKeyMismatch` at once. Raises `BootTimeout`, carrying the last
    error and the serial log tail, on the deadline or as soon as `is_alive()` says the VM died;
    the auth error itself once `auth_grace` is spent.
    """
    started = time.monotonic()
    deadline = started + timeout
    first_auth_failure: list[float] = []

    def attempt() -> Connection:
        if is_alive is not None and not is_alive():
            raise _VMDied
        remaining = deadline - time.monotonic()
        connection = Connection(info, vm_name=vm_name)
        try:
            connection.open(timeout=max(_MIN_ATTEMPT_TIMEOUT, min(_ATTEMPT_TIMEOUT, remaining)))
        except Exception as exc:
            _log.debug(
                "ssh connect attempt failed", extra={"target": f"{info.host}:{info.port}", "error": str(exc)}
            )
            raise
        _log.info(
            "ssh connected",
            extra={"target": f"{info.host}:{info.port}", "seconds": round(time.monotonic() - started, 3)},
        )
        return connection

    def should_retry(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        error = outcome.exception()
        if isinstance(error, SSHUnreachable):
            return True
        if isinstance(error, SSHAuthFailed):
            now = time.monotonic()
            if not first_auth_failure:
                first_auth_failure.append(now)
            return now - first_auth_failure[0] < auth_grace
        return False

    def sleep(seconds: float) -> None:
        _log.info("ssh retry", extra={"target": f"{info.host}:{info.port}", "backoff": round(seconds, 2)})
        # Sleep in slices so a VM that dies mid-backoff is reported now, not after the nap.
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if is_alive is not None and not is_alive():
                return
            time.sleep(min(left, _ALIVE_POLL_SECONDS))

    retrying = Retrying(
        retry=should_retry,
        wait=wait_exponential(multiplier=0.25, max=2),
        stop=stop_before_delay(timeout),
        sleep=sleep,
    )
    try:
        return retrying(attempt)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise _boot_timeout(info, timeout, last, serial_tail) from last
    except _VMDied:
        raise BootTimeout(
            f"the VM stopped while waiting for SSH on {info.host}:{info.port}" + _serial_section(serial_tail),
            hint="the guest crashed or powered off during boot; read the serial log above",
        ) from None


def _boot_timeout(
    info: SSHInfo,
    timeout: float,
    last: BaseException | None,
    serial_tail: Callable[[], str],
) -> BootTimeout:
    return BootTimeout(
        f"{info.user}@{info.host}:{info.port} did not answer SSH within {timeout:g}s; "
        f"last error: {_describe(last)}" + _serial_section(serial_tail),
        hint="read the serial log above: a guest still booting needs a longer timeout, "
        "one stuck in boot needs rebuilding",
    )


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "none"
    # The hint of a retried error ("wait for the guest") would contradict the timeout's own.
    return error.message if isinstance(error, VmsbxError) else repr(error)


def _serial_section(serial_tail: Callable[[], str]) -> str:
    try:
        tail = serial_tail()
    except Exception as exc:  # a broken log reader must not hide the boot failure itself
        tail = f"(could not read the serial log: {exc})"
    lines = tail.rstrip("\n").splitlines()[-SERIAL_TAIL_LINES:]
    if not lines:
        return "\n(the serial console printed nothing)"
    return f"\n--- serial console, last {len(lines)} lines ---\n" + "\n".join(lines)
