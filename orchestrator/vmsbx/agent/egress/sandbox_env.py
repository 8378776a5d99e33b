"""The environment that points programs in a run's sandbox at its egress proxy (pure).

Inside the sandbox the proxy is `127.0.0.1:<port>` (a forwarder in the run's own network
namespace leads to the host agent). HTTP and SOCKS5 share that port, as in Anthropic's
sandbox-runtime, so every URL below names the same place. Programs that ignore these variables
simply get no network: nothing else is routable from the sandbox.
"""

from __future__ import annotations

from vmsbx.config.models import NetworkMode

# Loopback stays direct: the API relay is there (ANTHROPIC_BASE_URL), and so is the proxy.
_NO_PROXY = "localhost,127.0.0.1,::1"


def env_for_sandbox(policy: NetworkMode, port: int) -> dict[str, str]:
    """The variables to set in the run for `policy` with the proxy on sandbox-local `port`.

    "none" gets nothing (there is no proxy). "api", "allowlist" and "open" all go through the
    proxy, which enforces the policy (under "api" it denies every request, and says why).
    """
    if policy == "none":
        return {}
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"proxy port must be a number from 1 to 65535, not {port!r}")
    url = f"http://127.0.0.1:{port}"
    env: dict[str, str] = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = _NO_PROXY
    # Node's own fetch ignores *_PROXY unless asked (Node >= 22.21 / 24).
    env["NODE_USE_ENV_PROXY"] = "1"
    # git over SSH: the guest's socat (1.7 on bookworm) speaks HTTP CONNECT but not SOCKS5, so the
    # proxy command uses CONNECT on the same port, with the same rules (github.com:22 must be
    # listed). Connection sharing is off: its socket would live outside the sandbox's view.
    env["GIT_SSH_COMMAND"] = (
        "ssh -o ControlMaster=no -o ControlPath=none "
        f"-o ProxyCommand='socat - PROXY:127.0.0.1:%h:%p,proxyport={port}'"
    )
    return env
