"""`vmsbx apply` (see vmsbx.cli.review)."""

from vmsbx.cli.review import apply_command as command

__all__ = ["command"]
