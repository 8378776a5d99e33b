#!/usr/bin/python3
"""Entry point of the guest launcher (launcher.py): `python3 guest.py VERB …`, as root.

Python compiles the script it is started with on every start, but imports modules from cached
bytecode, which vmsbx writes when it provisions the guest. Under TCG compiling the launcher
cost 0.3-1 s per guest call; this stub is all that is compiled now.
"""

import sys

import launcher

if __name__ == "__main__":
    sys.exit(launcher.main(sys.argv[1:]))
