"""The host's side of the guest launcher (provision/guest/guest.py), over the host agent."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from vmsbx.agent.client import AgentClient, ByteSink
from vmsbx.agent.protocol import HEADER, MAX_FRAME, Frame, FrameWriter
from vmsbx.bounded import BoundedBuffer, MiB, TailBuffer
from vmsbx.contract import EXIT_FAILED, EXIT_NOT_ENDED, GUEST_ARGV, ContractError, Launched, RunPaths
from vmsbx.errors import TransportError, VmsbxError
from vmsbx.runs.outcome import GuestResult
from vmsbx.sync.manifest import MAX_MANIFEST_BYTES
from vmsbx.textsafe import strip_control

if TYPE_CHECKING:
    from vmsbx.runs.conversation import SessionFile

GUEST = list(GUEST_ARGV)  # -S: see sandbox.systemd.NO_SITE
_REPLY_MAX = 1 * MiB  # a verb's JSON reply or error text
STDOUT, STDERR, EXIT = Frame.STDOUT, Frame.STDERR, Frame.EXIT  # the holder's frames, as the agent's
# What one `vmsbx logs` pull may bring (the end of a run streams its journal to a file instead).
JOURNAL_PULL_MAX = 256 * MiB


class LaunchFailed(VmsbxError):
    """The sandbox could not be started; nothing ran. `guest_code` is the launcher's exit code
    (the contract's EXIT_*; None when the host itself refused): what the host decides by."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str = "", guest_code: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.guest_code = guest_code


class GuestControl:
    def __init__(self, client: AgentClient) -> None:
        self.client = client

    def launch(self, stream: BinaryIO) -> Launched:
        """Start a run: `stream` is the request line, then the workspace sync stream."""
        stdout, stderr = BoundedBuffer(_REPLY_MAX, "launch reply"), TailBuffer(_REPLY_MAX)
        code = self.client.exec([*GUEST, "launch"], stdin=stream, stdout=stdout, stderr=stderr)
        if code != 0:
            message = strip_control(stderr.getvalue().decode(errors="replace")).strip()[-2000:]
            raise LaunchFailed(
                f"the sandbox did not start: {message}",
                hint="if a property is not supported by this guest's systemd, vmsbx refuses rather than "
                "run with less isolation; `vmsbx doctor` and `vmsbx up` check the guest",
                guest_code=code,
            )
        lines = stdout.getvalue().decode(errors="replace").strip().splitlines()
        try:
            launched: Launched = Launched.from_json(lines[-1] if lines else "")
        except ContractError as exc:
            raise LaunchFailed(
                f"the guest launcher's reply breaks the contract: {strip_control(str(exc))[:400]}",
                hint="`vmsbx up` pushes the launcher of this vmsbx version",
            ) from None
        return launched

    def attach(
        self,
        run_id: str,
        *,
        stdin: BinaryIO | bytes | None,
        stdout: ByteSink,
        stderr: ByteSink,
        pty: bool = False,
        size: tuple[int, int] = (80, 24),
        on_open: Callable[[FrameWriter], None] | None = None,
    ) -> int:
        return self.client.exec(
            [*GUEST, "attach", run_id],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pty=pty,
            size=size,
            on_open=on_open,
        )

    def result(self, run_id: str, *, wait: float) -> GuestResult | None:
        """systemd's verdict on the run, or None if it has not ended within `wait` seconds."""
        code, out, err = self.client.run([*GUEST, "result", run_id, str(wait)])
        if code == EXIT_NOT_ENDED:
            return None
        if code != 0:
            raise TransportError(
                "could not read the run's result: " + strip_control(err.decode(errors="replace")).strip(),
                hint="`vmsbx runs` shows what vmsbx recorded",
            )
        return GuestResult.model_validate_json(out)

    def is_active(self, run_id: str) -> bool:
        """Whether the run's unit is still up in the guest (starting, running or stopping)."""
        _code, out, _err = self.client.run(["systemctl", "is-active", RunPaths(run_id).unit])
        return out.strip() in (b"active", b"activating", b"deactivating", b"reloading")

    def ended(
        self,
        run_id: str,
        invocation_id: str,
        after: str | None,
        *,
        wait: float,
        spool: BinaryIO,
        manifest: bool = False,
        collect_max: int | None = None,
    ) -> Ended | None:
        """`result`, with `manifest` the run's workspace manifest, and `journal` from `after`,
        in one guest call; None if the run did not end within `wait`. The journal streams to
        `spool`: a run that printed 100,000 lines must not sit in memory. `collect_max`: the
        guest lists no manifest (`null`) when the surely new files exceed it."""
        argv = [*GUEST, "ended", run_id, str(wait), invocation_id, *_end_args(after, manifest, collect_max)]
        out, err = JournalSink(spool, after, heads=2 if manifest else 1), TailBuffer(_REPLY_MAX)
        code = self.client.exec(argv, stdin=None, stdout=out, stderr=err)
        out.close()
        return self._ended_reply(code, out, err)

    @staticmethod
    def _ended_reply(code: int, out: JournalSink, err: TailBuffer) -> Ended | None:
        if code == EXIT_NOT_ENDED:
            return None
        if code != 0:
            raise TransportError(
                "could not read the run's result: "
                + strip_control(err.getvalue().decode(errors="replace")).strip(),
                hint="`vmsbx runs` shows what vmsbx recorded",
            )
        listed = out.heads[1] if len(out.heads) > 1 and out.heads[1] != b"null" else None
        return Ended(GuestResult.model_validate_json(out.heads[0]), out.cursor, listed)

    def follow(
        self,
        run_id: str,
        invocation_id: str,
        after: str | None,
        *,
        stdin: BinaryIO | bytes | None,
        stdout: ByteSink,
        stderr: ByteSink,
        wait: float,
        spool: BinaryIO,
        manifest: bool = False,
        collect_max: int | None = None,
    ) -> Ended | None:
        """A headless run's `attach` and then `ended`, in one guest call: the run's output goes
        to `stdout`/`stderr` as it comes, then what `ended` returns (the journal to `spool`)."""
        argv = [*GUEST, "follow", run_id, str(wait), invocation_id, *_end_args(after, manifest, collect_max)]
        end = JournalSink(spool, after, heads=2 if manifest else 1)
        out, err = OutputThenEnd(stdout, stderr, end), TeeTail(stderr, _REPLY_MAX)
        code = self.client.exec(argv, stdin=stdin, stdout=out, stderr=err)
        end.close()
        if not out.ended:
            raise TransportError(
                "the guest's stream of the run stopped before the run's end: "
                + strip_control(err.tail.getvalue().decode(errors="replace")).strip()[-2000:],
                hint="`vmsbx runs` shows what vmsbx recorded",
            )
        return self._ended_reply(code, end, err.tail)

    def sessions(self, run_id: str) -> tuple[list[SessionFile], list[str]]:
        """The Claude Code conversations the guest saved of an ended run, oldest first, checked
        (conversation.parse_sessions), and notes on what was left out. Call before `release`,
        which drops them in the guest."""
        from vmsbx.runs.conversation import FETCH_MAX, parse_sessions

        code, out, err = self.client.run([*GUEST, "sessions", run_id], max_output=FETCH_MAX)
        if code != 0:
            raise TransportError(
                "could not fetch the run's conversation: "
                + strip_control(err.decode(errors="replace")).strip()[-400:],
                hint="`vmsbx runs` shows what vmsbx recorded",
            )
        return parse_sessions(out)

    def release(self, run_id: str, *, later: bool = False) -> None:
        """Free an ended run's workspace and tmpfs in the guest (its record stays). `later`: the
        host agent does it after the CLI has returned (nothing the user waits for; a next run
        of the project may launch meanwhile, which the project's owner lock allows for)."""
        if later:
            self.client.exec_later([*GUEST, "release", run_id])
        else:
            self.client.run([*GUEST, "release", run_id])

    def stop(self, run_id: str) -> None:
        self.client.run([*GUEST, "stop", run_id])

    def journal(self, run_id: str, invocation_id: str, after: str | None) -> tuple[list[bytes], str | None]:
        """New journal entries (raw JSON lines) of the run and the cursor to resume from."""
        argv = [*GUEST, "journal", run_id, invocation_id]
        if after:
            argv.append(after)
        code, out, err = self.client.run(argv, max_output=JOURNAL_PULL_MAX)
        if code != 0:
            raise TransportError(
                "could not read the run's journal: " + strip_control(err.decode(errors="replace")).strip(),
                hint="check `vmsbx status`",
            )
        return _journal_lines(out, after)

    def score(self, unit_file: str) -> float:
        code, out, err = self.client.run([*GUEST, "score"], stdin=unit_file.encode())
        if code != 0:
            raise LaunchFailed(
                "could not score the sandbox policy: " + strip_control(err.decode(errors="replace")).strip(),
                hint="vmsbx refuses to start a run it cannot score",
            )
        return float(json.loads(out)["exposure"])


@dataclass(frozen=True)
class Ended:
    """What `GuestControl.ended` brings back besides the journal it spooled."""

    result: GuestResult
    cursor: str | None
    manifest: bytes | None  # the workspace manifest's JSON, when asked for and made


def _end_args(after: str | None, manifest: bool, collect_max: int | None) -> list[str]:
    """What `ended` and `follow` take after the run: the journal cursor, the manifest flag."""
    args = [after] if after else []
    if manifest:
        args.append(f"--manifest={collect_max}" if collect_max else "--manifest")
    return args


class OutputThenEnd:
    """`guest.py follow`'s stdout: the holder's frames (STDOUT and STDERR payloads go to the
    run's sinks), up to the EXIT frame; everything after it is `ended`'s reply, for `end`.
    Frames are length-prefixed, so the run's output cannot pass for the reply; a frame longer
    than the holder ever writes (the guest is not trusted) fails the call."""

    FRAME_MAX = MAX_FRAME

    def __init__(self, stdout: ByteSink, stderr: ByteSink, end: JournalSink) -> None:
        self.sinks = {STDOUT: stdout, STDERR: stderr}
        self.end = end
        self.ended = False  # the EXIT frame came: the rest is the reply
        self._partial = bytearray()

    def write(self, data: bytes, /) -> int:
        if self.ended:
            return self.end.write(data)
        self._partial += data
        while len(self._partial) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._partial)
            if length > self.FRAME_MAX or kind not in (STDOUT, STDERR, EXIT):
                raise TransportError("the guest sent a malformed output frame", hint="run again")
            if len(self._partial) < HEADER.size + length:
                break
            payload = bytes(self._partial[HEADER.size : HEADER.size + length])
            del self._partial[: HEADER.size + length]
            if kind == EXIT:
                self.ended = True
                rest, self._partial = bytes(self._partial), bytearray()
                if rest:
                    self.end.write(rest)
                break
            self.sinks[kind].write(payload)
            self.sinks[kind].flush()
        return len(data)

    def flush(self) -> None:
        self.end.flush()


class TeeTail:
    """The guest's stderr: shown as it comes (what `attach` said goes to the user), and its
    tail kept for an error message."""

    def __init__(self, sink: ByteSink, limit: int) -> None:
        self.sink = sink
        self.tail = TailBuffer(limit)

    def write(self, data: bytes, /) -> int:
        self.tail.write(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()


class JournalSink:
    """`journalctl -o json --show-cursor` output as it arrives: entries go to `spool` one line
    each, the cursor is kept, and the first `heads` lines (the verdict, the manifest) too. At
    most one line is held in memory, of at most LINE_MAX bytes (journald caps its lines, but
    the guest is not trusted to): a longer one is dropped, or fails the call if it is a head."""

    LINE_MAX = 2 * MiB

    def __init__(self, spool: BinaryIO, after: str | None, *, heads: int = 0) -> None:
        self.spool = spool
        self.cursor = after
        self.entries = 0
        self.heads: list[bytes] = []
        self._want_heads = heads
        self._partial = bytearray()
        self._dropping = False  # inside a line over LINE_MAX: skip to its end

    def write(self, data: bytes, /) -> int:
        self._partial += data
        start = 0
        while (end := self._partial.find(b"\n", start)) >= 0:
            if not self._dropping:
                self._line(bytes(self._partial[start:end]))
            self._dropping = False
            start = end + 1
        del self._partial[:start]
        limit = self.LINE_MAX if len(self.heads) >= self._want_heads else MAX_MANIFEST_BYTES
        if len(self._partial) > limit:
            if len(self.heads) < self._want_heads:
                raise TransportError("the guest sent an oversized result or manifest line", hint="run again")
            self._partial.clear()
            self._dropping = True
        return len(data)

    def flush(self) -> None:
        self.spool.flush()

    def close(self) -> None:
        """The last line, if the output did not end with a newline."""
        if self._partial and not self._dropping:
            self._line(bytes(self._partial))
            self._partial.clear()
        self.flush()

    def _line(self, line: bytes) -> None:
        if len(self.heads) < self._want_heads:
            self.heads.append(line)
        elif line.startswith(b"-- cursor: "):
            self.cursor = line[len(b"-- cursor: ") :].decode(errors="replace").strip()
        elif line.startswith(b"{"):
            self.spool.write(line + b"\n")
            self.entries += 1


def _journal_lines(out: bytes, after: str | None) -> tuple[list[bytes], str | None]:
    """journalctl -o json --show-cursor output: the entries and the cursor to resume from."""
    spool = io.BytesIO()
    sink = JournalSink(spool, after)
    sink.write(out)
    sink.close()
    return spool.getvalue().splitlines(), sink.cursor
