"""Bad input that needs the guest: arguments and project paths arrive literally.

(The refusals — hostile config, names and run ids with paths, NUL bytes — are in
tests/unit/test_bad_input.py.)
"""

from __future__ import annotations

import json

import pytest
from vmcli import Cli

pytestmark = pytest.mark.vm

NASTY_ARGS = [
    "a; rm -rf /",
    "$(touch /tmp/pwned)",
    "`id`",
    "'single' \"double\" \\back",
    "line one\nline two",
    "*",
    "~",
    "",
    " leading and trailing ",
    "ü ☃ \u202e",
    "--not-an-option",
    "|&><",
]
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


def test_arguments_arrive_literally_from_an_odd_project_path(
    cli: Cli, default_vm: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = tmp_path_factory.mktemp("odd") / "my project ü ☃\nline two $(x)"
    project.mkdir()
    (project / "file with spaces.txt").write_text("inside\n")
    odd = Cli(env=cli.env, cwd=project)
    done = odd.run(
        "run",
        "--workspace-size",
        "64M",
        "--",
        "python3",
        "-c",
        PRINT_ARGV,
        *NASTY_ARGS,
        input=b"",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert json.loads(done.stdout) == NASTY_ARGS
    # The project's files are in the workspace under their own names; nothing ran from the args.
    listed = odd.run(
        "run", "--workspace-size", "64M", "--", "sh", "-c", 'cat "file with spaces.txt"; ls /tmp'
    )
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")
    assert listed.stdout.decode().splitlines()[0] == "inside"
    assert "pwned" not in listed.stdout.decode()
    assert "pwned" not in cli.ok("ssh", "--", "ls", "/tmp").stdout.decode()
