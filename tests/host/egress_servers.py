"""Real loopback servers and a name resolver for the egress proxy's tests (host and VM)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmsbx.config.allow_hosts import IPAddress


@dataclass
class LoopServer:
    """A loopback server that answers each connection with its tag and the request head it got."""

    host: str
    tag: bytes
    tls: ssl.SSLContext | None = None
    heads: list[bytes] = field(default_factory=list)
    port: int = 0

    def start(self, port: int = 0) -> LoopServer:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, port))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            # An SSH client sends one banner line and waits: answer that too.
            while b"\r\n\r\n" not in data and not (data.startswith(b"SSH-") and b"\r\n" in data):
                if len(data) >= 65536:
                    break
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.heads.append(data)
            body = self.tag + b"\n" + data
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()


class MapResolver:
    """Test names -> addresses; counts calls per name. `answers` may change between calls."""

    def __init__(self, answers: dict[str, Sequence[str] | Callable[[int], Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls[host] = self.calls.get(host, 0) + 1
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found = answer(self.calls[host]) if callable(answer) else answer
        return [ipaddress.ip_address(text) for text in found]


def tls_server_context(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file
