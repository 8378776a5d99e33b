"""vmsbx: run a coding agent behind two walls, a Linux VM and a per-run sandbox inside it."""

__version__ = "0.1.0"
