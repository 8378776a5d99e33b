"""What sync-in leaves out of the guest workspace: secrets by default, plus the user's list.

Patterns are gitignore-like: a pattern without "/" matches a name at any depth; one with "/"
matches a run of trailing path components (".aws/credentials" matches "x/.aws/credentials");
a leading "/" anchors it at the project root; "*" and "?" stay within one component and "**"
spans any number of them. A pattern that matches a directory leaves out everything below it.
A pattern starting with "!" takes back an earlier match (the last matching pattern decides).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

# `.envrc` is not a secret (direnv's script) and is synced; bringing it back needs
# --include-sensitive because direnv runs it on the host.
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "!.env.example",
    "!.env.sample",
    "!.env.template",
    ".npmrc",
    ".yarnrc.yml",
    ".pypirc",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".pgpass",
    "id_*",
    "!id_*.pub",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    ".ssh",
    ".gnupg",
    ".aws/credentials",
    ".config/gcloud",
    ".azure",
    "credentials.json",
    "service-account*.json",
    ".docker/config.json",
    ".kube/config",
    ".terraform.d/credentials.tfrc.json",
)


@dataclass(frozen=True, slots=True)
class ExcludeRules:
    """The patterns sync-in applies; build it with `exclude_rules()`."""

    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    """Secret files and folders (the defaults unless the user config replaces them)."""
    extra_patterns: tuple[str, ...] = ()
    """Further patterns from `[sync] exclude` (user config and project file)."""

    def match(self, path: str) -> str | None:
        """Why `path` is left out ("secret pattern '.env'"), or None when it is synced.

        Each list decides on its own, so a "!" in the extra patterns (which the project file
        may add to) can never take back a secret pattern.
        """
        if not _any_of(self.secret_patterns + self.extra_patterns).search(path):
            return None  # the common case, in one regex search
        for label, patterns in (("secret pattern", self.secret_patterns), ("exclude", self.extra_patterns)):
            reason: str | None = None
            for pattern in patterns:
                negated = pattern.startswith("!")
                if _compiled(pattern[1:] if negated else pattern).search(path):
                    reason = None if negated else f"{label} '{pattern}'"
            if reason is not None:
                return reason
        return None


def exclude_rules(secret_patterns: tuple[str, ...] | None, exclude: tuple[str, ...]) -> ExcludeRules:
    """Rules from settings: `secret_patterns` None keeps the defaults."""
    secrets = DEFAULT_SECRET_PATTERNS if secret_patterns is None else secret_patterns
    return ExcludeRules(secret_patterns=secrets, extra_patterns=exclude)


def rules_to_json(rules: ExcludeRules) -> bytes:
    """The rules as stored with a run (what its sync-in left out is what apply refuses)."""
    return json.dumps({"secret_patterns": rules.secret_patterns, "exclude": rules.extra_patterns}).encode()


def rules_from_json(data: bytes) -> ExcludeRules:
    """Rules stored by `rules_to_json`; raise ValueError for anything else."""
    loaded = json.loads(data)
    secrets, extra = loaded["secret_patterns"], loaded["exclude"]
    if not all(isinstance(item, list) and all(isinstance(p, str) for p in item) for item in (secrets, extra)):
        raise ValueError("patterns must be lists of strings")
    return ExcludeRules(secret_patterns=tuple(secrets), extra_patterns=tuple(extra))


@lru_cache(maxsize=16)
def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    positive = [_compiled(pattern).pattern for pattern in patterns if not pattern.startswith("!")]
    return re.compile("|".join(f"(?:{regex})" for regex in positive) or "(?!)", re.DOTALL)


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    anchored = pattern.startswith("/")
    parts = [part for part in pattern.strip("/").split("/") if part]
    regex = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _component(part) + ("" if last else "/")
    start = "^" if anchored else "(?:^|/)"
    # Matching a directory leaves out its whole subtree.
    return re.compile(f"{start}{regex}(?:/|$)", re.DOTALL)


def _component(part: str) -> str:
    out, index = [], 0
    while index < len(part):
        char = part[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := part.find("]", index + 2)) != -1:
            body = part[index + 1 : end].replace("\\", "\\\\")
            out.append("[^/" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)
