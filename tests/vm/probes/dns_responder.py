"""A one-name DNS server for the DNS probe's positive control (runs as root in the guest).

Answers every A query with ADDRESS, and every other query with an empty answer, on UDP port 53 of
all the guest's addresses. The guest's restricted network has no DNS of its own, so without this
the probe would fail inside and outside the sandbox alike and prove nothing.

usage: python3 dns_responder.py ADDRESS
"""

import socket
import struct
import sys

A_RECORD = 1


def answer(query: bytes, address: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    if end + 5 > len(query):
        return None
    question = query[12 : end + 5]
    (qtype,) = struct.unpack(">H", query[end + 1 : end + 3])
    records = b""
    if qtype == A_RECORD:
        records = b"\xc0\x0c" + struct.pack(">HHIH", A_RECORD, 1, 60, 4) + address
    header = query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if records else 0, 0, 0)
    return header + question + records


def main() -> None:
    address = socket.inet_aton(sys.argv[1])
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 53))
    while True:
        query, peer = server.recvfrom(512)
        reply = answer(query, address)
        if reply is not None:
            server.sendto(reply, peer)


if __name__ == "__main__":
    main()
