"""Sync-in's exclude rules and the [sync] settings: secrets stay out; the project only adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsbx.config.loader import load_settings
from vmsbx.errors import ConfigError
from vmsbx.sync.manifest import sanitize_git_config
from vmsbx.sync.rules import DEFAULT_SECRET_PATTERNS, ExcludeRules, exclude_rules


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "app/.env.production",
        ".npmrc",
        ".pypirc",
        ".netrc",
        "deploy/id_rsa",
        "id_ed25519",
        "certs/server.pem",
        "tls.key",
        "store.p12",
        "x.pfx",
        ".aws/credentials",
        "infra/.aws/credentials",
        ".config/gcloud/application_default_credentials.json",
        ".azure/accessTokens.json",
        "credentials.json",
        "service-account-prod.json",
        ".docker/config.json",
        ".kube/config",
    ],
)
def test_default_rules_leave_secrets_out(path: str) -> None:
    reason = ExcludeRules().match(path)
    assert reason is not None and reason.startswith("secret pattern")


@pytest.mark.parametrize(
    "path",
    [".envrc", ".env.example", "id_rsa.pub", "keys/id_ed25519.pub", "src/main.py", "key.txt", "docs/env.md"],
)
def test_default_rules_keep_ordinary_files(path: str) -> None:
    assert ExcludeRules().match(path) is None


def test_patterns_anchor_glob_within_components_and_cover_subtrees() -> None:
    rules = exclude_rules(None, ("/build", "**/*.log", "node_modules", "a?c"))
    assert rules.match("build/out.o") == "exclude '/build'"
    assert rules.match("src/build") is None
    assert rules.match("x/y/z.log") == "exclude '**/*.log'"
    assert rules.match("web/node_modules/left-pad/index.js") == "exclude 'node_modules'"
    assert rules.match("abc") is not None and rules.match("a/c") is None
    assert rules.secret_patterns == DEFAULT_SECRET_PATTERNS


def test_an_extra_negation_cannot_take_back_a_secret() -> None:
    rules = exclude_rules(None, ("!.env", "!*.pem"))
    assert rules.match(".env") == "secret pattern '.env'"
    assert rules.match("a.pem") == "secret pattern '*.pem'"


def test_user_can_replace_the_secret_list() -> None:
    rules = exclude_rules(("*.secret",), ())
    assert rules.match(".env") is None
    assert rules.match("db.secret") is not None


def test_git_config_credentials_are_removed() -> None:
    config = (
        b'[remote "origin"]\n\turl = https://alice:ghp_TOKEN123@github.com/a/b.git\n'
        b"\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        b'[http "https://github.com/"]\n\textraheader = AUTHORIZATION: basic c2VjcmV0\n'
        b'[remote "up"]\n\turl = ssh://git@example.org/x.git\n'
    )
    clean = sanitize_git_config(config)
    assert b"ghp_TOKEN123" not in clean and b"alice" not in clean
    assert b"c2VjcmV0" not in clean and b"extraheader" not in clean
    assert b"url = https://github.com/a/b.git" in clean
    assert b"fetch = +refs/heads/*:refs/remotes/origin/*" in clean
    assert b"url = ssh://example.org/x.git" in clean


def _load(tmp_path: Path, user: str, project: str) -> object:
    user_file = tmp_path / "user.toml"
    user_file.write_text(user, encoding="utf-8")
    project_dir = tmp_path / "project"
    project_dir.mkdir(exist_ok=True)
    (project_dir / "vmsbx.toml").write_text(project, encoding="utf-8")
    return load_settings(project_dir=project_dir, env={"VMSBX_CONFIG": str(user_file)})


def test_project_file_may_add_excludes(tmp_path: Path) -> None:
    settings = _load(tmp_path, '[sync]\nexclude = ["dist"]\n', '[sync]\nexclude = ["dist", "*.log"]\n')
    assert settings.sync.exclude == ("dist", "*.log")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("project", "needle"),
    [
        ('[sync]\nexclude = ["*.log"]\n', '"dist"'),
        ('[sync]\nexclude = ["dist", "!.env"]\n', '"!.env"'),
        ('[sync]\nsecret_patterns = ["nothing"]\n', "not allowed in a project file"),
    ],
)
def test_project_file_cannot_loosen_the_sync_rules(tmp_path: Path, project: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, '[sync]\nexclude = ["dist"]\n', project)
    assert needle in str(caught.value)


def test_user_config_sets_secret_patterns_and_env_splits_lists(tmp_path: Path) -> None:
    user_file = tmp_path / "user.toml"
    user_file.write_text('[sync]\nsecret_patterns = [".env"]\n', encoding="utf-8")
    settings = load_settings(
        project_dir=tmp_path, env={"VMSBX_CONFIG": str(user_file), "VMSBX_SYNC_EXCLUDE": "a, b/c"}
    )
    assert settings.sync.secret_patterns == (".env",)
    assert settings.sync.exclude == ("a", "b/c")


def test_submodule_configs_are_sanitized_too(tmp_path: Path) -> None:
    from vmsbx.sync.manifest import scan

    module = tmp_path / ".git" / "modules" / "lib"
    module.mkdir(parents=True)
    (module / "config").write_text("[remote]\n\turl = https://u:secret@example.org/lib.git\n")
    (tmp_path / ".git" / "config").write_text("[remote]\n\turl = https://u:secret2@example.org/x.git\n")
    result = scan(tmp_path, ExcludeRules())
    assert set(result.overrides) == {".git/config", ".git/modules/lib/config"}
    assert all(b"secret" not in data for data in result.overrides.values())
    sizes = {e.path: e.size for e in result.manifest.entries}
    assert sizes[".git/config"] == len(result.overrides[".git/config"])
