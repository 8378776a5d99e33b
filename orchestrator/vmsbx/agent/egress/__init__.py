"""The egress proxy: the only way out of a sandbox whose policy grants any network.

`rules` decides (pure), `proxy` enforces (one listener per run, in the host agent), `netlog`
reads back the decision log, `sandbox_env` tells programs in the sandbox where the proxy is.
"""
