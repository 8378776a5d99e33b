"""Writing guest data to host files without expanding holes.

An agent's `truncate -s 3G big.bin` is a file of 3 GiB apparent size and almost no blocks. Tar
(and the hash) carry it as 3 GiB of zeros; written back naively it costs 3 GiB of host disk in
the run's changes/ and again in the project. Here every all-zero block is skipped with a seek
instead of written, and the file is extended to its length at the end: on file systems with
sparse files (ext4, xfs, btrfs, APFS, tmpfs) the zeros stay holes; elsewhere the seek reads back
as zeros all the same.
"""

from __future__ import annotations

import os

BLOCK = 64 * 1024
_ZEROS = bytes(BLOCK)


class SparseWriter:
    """Writes to a descriptor opened for writing at offset 0, leaving zero blocks as holes.

    Call `finish()` once the last byte is written: it sets the file's length (a trailing hole
    is only a seek until then).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0

    def write(self, data: bytes | memoryview) -> int:
        """Write all of `data` (returns its length); zero blocks are seeked over."""
        view = memoryview(data)
        start = 0
        while start < len(view):
            # Blocks stay aligned to the file's offset, so holes line up with the file system's.
            end = min(len(view), start + BLOCK - self.offset % BLOCK)
            piece = view[start:end]
            if piece == _ZEROS[: len(piece)]:
                os.lseek(self.fd, len(piece), os.SEEK_CUR)
            else:
                while piece:
                    piece = piece[os.write(self.fd, piece) :]
            self.offset += end - start
            start = end
        return len(view)

    def finish(self) -> None:
        """Give the file its full length (a run of zeros at the end was only seeked over)."""
        os.ftruncate(self.fd, self.offset)
