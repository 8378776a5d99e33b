"""`vmsbx discard` (see vmsbx.cli.review)."""

from vmsbx.cli.review import discard_command as command

__all__ = ["command"]
