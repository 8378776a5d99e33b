"""Start the egress proxy of one run from its settings, logging to runs/<id>/network.jsonl."""

from __future__ import annotations

from pathlib import Path

from vmsbx.agent.egress.netlog import NETWORK_LOG_NAME, append_decision
from vmsbx.agent.egress.proxy import EgressProxy, ProxyLimits, Resolver, system_resolver
from vmsbx.agent.egress.rules import EgressRules
from vmsbx.config.models import SandboxSettings


def start_run_proxy(
    run_id: str,
    sandbox: SandboxSettings,
    run_dir: Path,
    *,
    resolver: Resolver = system_resolver,
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
    run_dir.mkdir(parents=True, exist_ok=True)
    proxy = EgressProxy(
        run_id,
        EgressRules.from_settings(sandbox.network, sandbox.allow_hosts),
        lambda _run, record: append_decision(log_path, record),
        resolver=resolver,
        limits=limits,
    )
    proxy.start()
    return proxy
