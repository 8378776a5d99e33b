"""Size-capped sinks for guest output: the guest decides how much it sends, so nothing it sends
is held or stored without a limit (a hostile guest could otherwise fill host memory or disk)."""

from __future__ import annotations

import io
from typing import BinaryIO

from vmsbx.errors import TransportError, VmsbxError

KiB = 1024
MiB = 1024 * KiB


class CappedSink(io.RawIOBase):
    """Passes writes to `sink` until `limit` bytes; the write past it raises `error` instead."""

    def __init__(self, sink: BinaryIO | io.BytesIO, limit: int, error: VmsbxError) -> None:
        super().__init__()
        self._sink, self._left, self._error = sink, limit, error

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._left -= len(data)
        if self._left < 0:
            raise self._error
        return self._sink.write(data)


class BoundedBuffer(CappedSink):
    """An in-memory buffer of at most `limit` bytes of guest output (TransportError past it)."""

    def __init__(self, limit: int, what: str) -> None:
        self._buffer = io.BytesIO()
        super().__init__(
            self._buffer,
            limit,
            TransportError(f"the guest sent more than {limit} bytes of {what}", hint="run `vmsbx up` again"),
        )

    def getvalue(self) -> bytes:
        return self._buffer.getvalue()


class TailBuffer(io.RawIOBase):
    """Keeps only the last `limit` bytes written (error text: its end says what went wrong)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._kept = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._kept += data[-self._limit :]
        del self._kept[: max(0, len(self._kept) - self._limit)]
        return len(data)

    def getvalue(self) -> bytes:
        return bytes(self._kept)
