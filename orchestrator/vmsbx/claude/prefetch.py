"""`python -m vmsbx.claude.prefetch [ARCH…]`: fetch and verify Claude Code into the host cache.

scripts/setup runs it so that tests (and the first `vmsbx up`) find the verified tarball in the
cache instead of racing each other to download 186 MB. Without arguments it fetches the package
for this host's architecture (a QEMU guest here has the host's). Prints one line per package.
"""

from __future__ import annotations

import platform
import sys

from vmsbx.claude.package import ensure_tarball, platform_for_arch
from vmsbx.config.models import AgentSettings
from vmsbx.errors import VmsbxError


def main(argv: list[str]) -> int:
    version = AgentSettings().claude_version
    try:
        for arch in argv or [platform.machine()]:
            tarball = ensure_tarball(version, platform_for_arch(arch))
            print(f"claude-code {tarball.version} {tarball.platform}: verified {tarball.path}")
    except VmsbxError as exc:
        print(f"prefetch: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
