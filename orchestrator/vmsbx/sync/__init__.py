"""Workspace sync, review and apply.

Host side of the mirror between the project folder and the guest workspace: what to leave out
(`rules`), what the tree holds (`manifest`), what must travel (`delta`, `stream`), what the agent
changed (`changeset`, `blobs`, `diff`) and bringing it back safely (`apply`). The guest side is
`provision/guest/wsync.py`; both speak the manifest JSON defined in `manifest`.
"""
