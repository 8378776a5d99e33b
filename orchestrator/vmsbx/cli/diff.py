"""`vmsbx diff` (see vmsbx.cli.review)."""

from vmsbx.cli.review import diff_command as command

__all__ = ["command"]
