"""Start the egress proxy of one run from its settings, logging to runs/<id>/network.jsonl."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from vmsbx.agent.egress.netlog import NETWORK_LOG_NAME, append_decision
from vmsbx.agent.egress.proxy import EgressProxy, ProxyLimits, Resolver, system_resolver
from vmsbx.agent.egress.rules import EgressRules
from vmsbx.config.allow_hosts import IPAddress
from vmsbx.config.models import SandboxSettings
from vmsbx.paths import ensure_private_dir

# Tests map their own names (allowed.test …) to the loopback servers they start. This only
# answers "which address is this name": every address still goes through the same gate, so a
# test must list 127.0.0.1:PORT by IP as any user would. Unset, the system resolver is used.
TEST_RESOLVE_ENV = "VMSBX_TEST_RESOLVE"


def resolver_from_env(environ: Mapping[str, str]) -> Resolver:
    """`VMSBX_TEST_RESOLVE="allowed.test=127.0.0.1,sub.wild.test=127.0.0.1"` or the system's."""
    spec = environ.get(TEST_RESOLVE_ENV, "").strip()
    if not spec:
        return system_resolver
    table: dict[str, list[IPAddress]] = {}
    for item in spec.split(","):
        name, _, address = item.partition("=")
        table.setdefault(name.strip().lower().rstrip("."), []).append(ipaddress.ip_address(address.strip()))

    def resolve(host: str, port: int) -> list[IPAddress]:
        found = table.get(host.lower().rstrip("."))
        if found is None:
            raise OSError(f"{host}: no such name (test resolver)")
        return list(found)

    return resolve


def start_run_proxy(
    run_id: str,
    sandbox: SandboxSettings,
    run_dir: Path,
    *,
    resolver: Resolver | None = None,
    limits: ProxyLimits | None = None,
) -> EgressProxy | None:
    """A started proxy for the run's policy, or None under "none" (the run gets no path out).

    Every decision is appended to `run_dir/network.jsonl`. The caller forwards the run's path
    to `proxy.address` and calls `proxy.close()` when the run ends (that also records the
    tunnels still open, with their byte counts).
    """
    if sandbox.network == "none":
        return None
    log_path = run_dir / NETWORK_LOG_NAME
    ensure_private_dir(run_dir)
    proxy = EgressProxy(
        run_id,
        EgressRules.from_settings(sandbox.network, sandbox.allow_hosts),
        lambda _run, record: append_decision(log_path, record),
        resolver=resolver or resolver_from_env(os.environ),
        limits=limits,
    )
    proxy.start()
    return proxy
