#!/usr/bin/python3
"""Entry point of the session holder (session_holder.py): `python3 holder.py RUN`, in the unit.

A stub for the same reason as guest.py: the holder itself loads from the bytecode vmsbx
compiled at provisioning (the run's user could not write a cache, so it compiled every run).
"""

import sys

import session_holder

if __name__ == "__main__":
    sys.exit(session_holder.main())
