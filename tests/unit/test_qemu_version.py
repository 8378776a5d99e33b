"""`vmsbx doctor`'s QEMU version, read from the recorded real output of `qemu-system-x86_64
--version` (Debian bookworm's package: its version holds spaces and parentheses)."""

from __future__ import annotations

from goldens import GOLDEN

from vmsbx.providers.qemu_argv import parse_qemu_version


def test_doctor_reads_qemus_version_from_its_recorded_output() -> None:
    recorded = (GOLDEN / "qemu_version.txt").read_text()
    assert parse_qemu_version(recorded) == "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert parse_qemu_version("QEMU emulator version 9.2.0\n") == "9.2.0"
    assert parse_qemu_version("") is None and parse_qemu_version("something else 1.2\n") is None
