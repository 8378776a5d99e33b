"""The wheel: it carries the code, the templates and the guest scripts, and finds them installed.

Not a unit test: it runs `python -m build` (hatchling, no isolation, so no network) and installs
the result into a throw-away venv. The venv sees the system site-packages for vmsbx's
dependencies, but vmsbx itself must come from the wheel.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

REQUIRED_FILES = (
    "vmsbx/__init__.py",
    "vmsbx/cli/main.py",
    "vmsbx/py.typed",
    "vmsbx/_data/vm-templates/qemu/recipe.toml",
    "vmsbx/_data/vm-templates/qemu/customize.sh",
    "vmsbx/_data/vm-templates/qemu/load-keys.sh",
    "vmsbx/_data/vm-templates/qemu/sshd-vmsbx.conf",
    "vmsbx/_data/vm-templates/qemu/customize-lima.sh",
    "vmsbx/_data/vm-templates/lima/vmsbx.yaml",
    "vmsbx/_data/provision/guest-facts.sh",
)


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would make a child import vmsbx from elsewhere."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"} and not name.startswith("VMSBX_")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Both come with the test extra (scripts/setup installs it); under CI a skip fails.
    install = "pip install -e '.[test]'"
    pytest.importorskip("build", reason=f"needs the `build` package: {install}")
    pytest.importorskip("hatchling", reason=f"needs hatchling (the build backend): {install}")
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    wheels = sorted(outdir.glob("vmsbx-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def installed_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a fresh venv with the wheel installed (--no-deps: dependencies come from the host)."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install",
            "--no-deps", "--no-index", "--disable-pip-version-check", "--quiet", str(wheel),
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    if result.returncode != 0 and "no such option: --python" in result.stderr:
        pytest.fail("needs pip >= 22.3 (pip --python)")
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return python


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_wheel_contains(wheel_names: set[str], name: str) -> None:
    assert name in wheel_names


def test_wheel_ships_no_tests_or_repo_clutter(wheel_names: set[str]) -> None:
    for name in wheel_names:
        assert not name.startswith(("tests/", "orchestrator/", "scripts/")), name
        assert "__pycache__" not in name, name


def test_wheel_declares_the_console_script(wheel: Path, wheel_names: set[str]) -> None:
    [entry_points] = [name for name in wheel_names if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser["console_scripts"]["vmsbx"].strip() == "vmsbx.cli.main:main"


def test_installed_package_finds_its_data(installed_python: Path) -> None:
    probe = (
        "import json, vmsbx, vmsbx.paths as p\n"
        "from vmsbx.providers.image import load_recipe, templates_dir\n"
        "recipe = templates_dir() / 'recipe.toml'\n"
        "print(json.dumps({'package': vmsbx.__file__, 'data': str(p.data_dir()),\n"
        "  'recipe_text': recipe.read_text(), 'packages': list(load_recipe('bookworm').packages),\n"
        "  'facts': (p.data_dir() / 'provision' / 'guest-facts.sh').is_file()}))\n"
    )
    result = subprocess.run(
        [str(installed_python), "-I", "-c", probe],
        cwd=installed_python.parent,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    venv_root = installed_python.parent.parent
    package_dir = Path(facts["package"]).parent
    assert package_dir.is_relative_to(venv_root), f"vmsbx was imported from {package_dir}, not the venv"
    assert Path(facts["data"]) == package_dir / "_data"
    assert "[bookworm]" in facts["recipe_text"]
    assert "openssh-server" in facts["packages"]
    assert facts["facts"] is True


def test_installed_console_script_runs(installed_python: Path) -> None:
    script = installed_python.parent / "vmsbx"
    assert script.is_file()
    result = subprocess.run(
        [str(script), "--help"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "destroy" in result.stdout
