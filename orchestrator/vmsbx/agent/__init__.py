"""The host agent: one background process per running VM that owns its SSH connection.

The CLI talks to it over a Unix socket in the VM's 0700 directory, so a CLI that exits or a
terminal that closes does not take the VM's connection (and, in later stages, its tunnels,
relay and log pulls) down.
"""
