#!/usr/bin/python3
"""vmsbx verify: the targets the attempts aim at, run as root in the guest for one verify.

    listener.py PORT TOKEN CANARY SECONDS

Listens on TCP and UDP PORT (all addresses) and on the abstract Unix socket @vmsbx-verify-TOKEN,
answering anything; and plants the fake credential CANARY where a leaked real one would be: in
its own arguments and environment, in the journal, and in a root-only file. Exits after SECONDS
(or when stopped) and removes the file. Standard library only.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time

CANARY_DIR = "/var/lib/vmsbx/verify"


def main(port: int, token: str, canary: str, seconds: float) -> int:
    os.makedirs(CANARY_DIR, mode=0o700, exist_ok=True)
    canary_file = f"{CANARY_DIR}/{token}.credential"
    fd = os.open(canary_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, f"ANTHROPIC_API_KEY={canary}\n".encode())
    os.close(fd)
    print(f"vmsbx verify: planted a fake credential {canary}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sel = selectors.DefaultSelector()
    tcp = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))  # noqa: S104 - every address a probe from the sandbox may try
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0vmsbx-verify-{token}")
    abstract.listen()
    for sock in (tcp, udp, abstract):
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sock = ready
                if sock is udp:
                    data, peer = udp.recvfrom(512)
                    udp.sendto(data[:2] + b"\x81\x80" + data[4:], peer)
                else:
                    conn, _ = sock.accept()
                    conn.close()
    finally:
        os.unlink(canary_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])))
