"""Claude Code in the guest: the pinned npm package, the host cache, and installing it."""
