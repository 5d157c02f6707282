"""What users meet first: the README's two commands, CI, lint and the architecture rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```(?:sh|bash|shell)?\n(.*?)```", section, re.S)
    assert block, "the Quickstart section opens with a shell code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_the_two_commands_demo_first() -> None:
    demo, tests = quickstart_commands()
    assert "streamer demo" in demo
    assert "pytest" in tests
    for command in (demo, tests):
        assert "venv" in command and "pip install" in command  # self-contained


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert quickstart_commands()[1] in ci.splitlines()


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is installed by the test extra"
    return found


def test_ruff() -> None:
    result = subprocess.run([_tool("ruff"), "check", "streamer", "tests", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    """style.md: type everything, mypy strict (configured in pyproject.toml)."""
    result = subprocess.run([_tool("mypy"), "streamer"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_configuration_reference_is_current() -> None:
    from streamer.settings import reference_markdown

    assert reference_markdown() in (ROOT / "README.md").read_text(), (
        "regenerate README's configuration tables: python -m streamer.settings")


def test_readme_documents_every_setting() -> None:
    from streamer.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [
        f"STREAMER__{section.upper()}__{field.upper()}"
        for section, info in Settings.model_fields.items()
        for field in info.annotation.model_fields  # type: ignore[union-attr]
        if f"STREAMER__{section.upper()}__{field.upper()}" not in readme
    ]
    assert not missing, f"README's configuration reference lacks {missing}"


def test_readme_documents_every_command() -> None:
    from typer.main import get_command

    from streamer.cli import app

    readme = (ROOT / "README.md").read_text()
    commands = get_command(app).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"streamer {name}" not in readme]
    assert not missing, f"README's command table lacks {missing}"
