"""The sinks that cap what the guest sends to the host (vmsbx.bounded, vmsbx.sync.sparse)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmsbx.bounded import BoundedBuffer, TailBuffer
from vmsbx.errors import TransportError
from vmsbx.sync.sparse import BLOCK, SparseWriter


def test_bounded_buffer_refuses_the_write_past_its_limit() -> None:
    buffer = BoundedBuffer(10, "manifest")
    buffer.write(b"0123456789")
    with pytest.raises(TransportError, match="more than 10 bytes of manifest"):
        buffer.write(b"x")
    assert buffer.getvalue() == b"0123456789"


def test_tail_buffer_keeps_only_the_end() -> None:
    tail = TailBuffer(8)
    for piece in (b"abc", b"defghijklmnop", b"qr"):
        tail.write(piece)
    assert tail.getvalue() == b"klmnopqr"


@pytest.mark.parametrize("chunk", [1000, BLOCK, 3 * BLOCK + 17])
def test_sparse_writer_gives_back_the_same_bytes(tmp_path: Path, chunk: int) -> None:
    data = b"a" * 100 + bytes(5 * BLOCK) + b"b" * 10 + bytes(2 * BLOCK + 5)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = SparseWriter(fd)
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
        writer.finish()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
