"""Host services the host agent offers to runs: the API relay (and later the egress proxy).

Each service listens on the host's loopback; the guest reaches it through one SSH reverse
forward per service, on a guest loopback port that stays the same across reconnects (live
runs' bridge units point at it). Which run may use a service is decided by the service itself
(the relay accepts only live runs' tokens), never by where a connection comes from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmsbx.config.models import SandboxSettings
from vmsbx.errors import TransportError
from vmsbx.paths import open_private
from vmsbx.runs.record import run_dir
from vmsbx.sandbox.layout import is_run_id
from vmsbx.transport import Connection
from vmsbx.transport.ssh import RemoteForward

if TYPE_CHECKING:
    from vmsbx.agent.egress.proxy import EgressProxy
    from vmsbx.agent.relay import Relay

log = logging.getLogger("vmsbx.agent")


class HostServices:
    def __init__(self, connection: Callable[[], Connection]) -> None:
        self._connection = connection
        # Re-entrant: registering may reconnect, and a reconnect restores the forwards.
        self._lock = threading.RLock()
        self._relays: dict[tuple[str, str | None], Relay] = {}
        self._run_relay: dict[str, Relay] = {}
        self._run_proxy: dict[str, EgressProxy] = {}
        # name -> (host port, guest port, the forward, the connection it lives on)
        self._forwards: dict[str, tuple[int, int, RemoteForward, Connection]] = {}

    def register_run(self, request: dict[str, Any]) -> dict[str, int]:
        """Admit a run to its host services: the API relay (if it has a credential) and its
        own egress proxy (unless its policy is none). Returns each service's guest port."""
        # Imported when a run needs them: the agent starts without the services' dependencies.
        from vmsbx.agent.egress.run_proxy import start_run_proxy

        run_id = str(request["run_id"])
        if not is_run_id(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        ports: dict[str, int] = {}
        with self._lock:
            relay_request = request.get("relay")
            if relay_request:
                relay = self._relay_for(relay_request)
                admit_to_relay(relay, run_id, relay_request)
                self._run_relay[run_id] = relay
                ports["relay"] = self._forward(f"relay:{relay.address[1]}", relay.address[1])
            egress = request.get("egress")
            if egress:
                policy = SandboxSettings(network=egress["network"], allow_hosts=tuple(egress["allow_hosts"]))
                proxy = start_run_proxy(run_id, policy, run_dir(run_id))
                if proxy is not None:
                    self._run_proxy[run_id] = proxy
                    ports["proxy"] = self._forward(f"egress:{run_id}", proxy.address[1])
        log.info("run %s admitted to %s", run_id, ", ".join(sorted(ports)) or "no service")
        return ports

    def _relay_for(self, request: dict[str, Any]) -> Relay:
        upstream, ca_file = str(request["upstream"]), request.get("ca_file")
        key = (upstream, str(ca_file) if ca_file else None)
        relay = self._relays.get(key)
        if relay is None:
            from vmsbx.agent.relay import Relay

            relay = Relay(upstream, ca_file=Path(ca_file) if ca_file else None, on_event=_record_event)
            relay.start()
            self._relays[key] = relay
        return relay

    def unregister_run(self, run_id: str) -> None:
        with self._lock:
            relay = self._run_relay.pop(run_id, None)
            proxy = self._run_proxy.pop(run_id, None)
            forward = self._forwards.pop(f"egress:{run_id}", None)
        if relay is not None:
            relay.unregister_run(run_id)
        if forward is not None:
            forward[2].close()
        if proxy is not None:
            proxy.close()
        log.info("run %s left its host services", run_id)

    def usage(self, run_id: str) -> dict[str, Any] | None:
        relay = self._run_relay.get(run_id)
        return dataclasses.asdict(relay.usage(run_id)) if relay is not None else None

    @property
    def active(self) -> bool:
        return bool(self._run_relay or self._run_proxy)

    def close(self) -> None:
        with self._lock:
            for proxy in self._run_proxy.values():
                proxy.close()
            self._run_proxy.clear()
            for relay in self._relays.values():
                relay.stop()
            self._relays.clear()

    def reforward(self, conn: Connection) -> None:
        """After a reconnect: the same guest ports again, so live runs' bridges keep working."""
        with self._lock:
            for name, (host_port, *_rest) in list(self._forwards.items()):
                try:
                    self._forward(name, host_port, conn)
                except TransportError as exc:
                    log.warning("could not restore the %s forward: %s", name, exc)

    def _forward(self, name: str, host_port: int, conn: Connection | None = None) -> int:
        """The guest port that leads to `host_port`, on the current connection. A new
        connection asks for the same guest port again, so bridges of live runs keep working."""
        conn = conn or self._connection()
        known = self._forwards.get(name)
        if known is not None and known[3] is conn and known[0] == host_port:
            return known[1]
        wanted = known[1] if known is not None else 0
        try:
            forward = conn.forward_remote("127.0.0.1", wanted, "127.0.0.1", host_port)
        except TransportError:
            if not wanted:
                raise
            log.warning("guest port %d for %s is taken; live runs lose that service", wanted, name)
            forward = conn.forward_remote("127.0.0.1", 0, "127.0.0.1", host_port)
        self._forwards[name] = (host_port, forward.remote_port, forward, conn)
        return forward.remote_port


def admit_to_relay(relay: Relay, run_id: str, request: dict[str, Any]) -> None:
    """Register a run with `relay` from the CLI's wire form (`run_register`'s "relay" part):
    its token, credential, budget and concurrency cap."""
    from vmsbx.agent.budget import Budget
    from vmsbx.agent.credential import Credential
    from vmsbx.config.models import DEFAULT_MAX_CONCURRENT
    from vmsbx.logsetup import register_secret

    wire, cap = request["credential"], request.get("budget")
    register_secret(str(wire["secret"]))
    register_secret(str(request["token"]))
    relay.register_run(
        run_id,
        str(request["token"]),
        Credential(wire["kind"], str(wire["secret"]), source="the vmsbx CLI"),
        Budget(tokens=cap.get("tokens"), usd=cap.get("usd")) if cap else None,
        max_concurrent=int(request.get("max_concurrent") or DEFAULT_MAX_CONCURRENT),
    )


def _record_event(run_id: str, event: dict[str, Any]) -> None:
    """The relay's own account of a run's API use (trusted): runs/<id>/relay.jsonl."""
    if not is_run_id(run_id):
        return
    folder = run_dir(run_id)
    if not folder.is_dir():
        return
    with open_private(folder / "relay.jsonl", "ab") as sink:
        sink.write(json.dumps(event, sort_keys=True).encode() + b"\n")
