"""The command line's help, as a user first sees it."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from streamer.cli import app


def test_the_command_list_shows_each_commands_summary_as_flowing_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's first docstring paragraph reads as one text in ``streamer --help``,
    not broken where the docstring's lines end (what Typer's "rich" help mode did)."""
    monkeypatch.setenv("COLUMNS", "400")  # wide enough for every summary on one line
    out = CliRunner().invoke(app, ["--help"]).output
    commands = [c for c in app.registered_commands if c.callback is not None]
    assert len(commands) >= 10
    for command in commands:
        summary = " ".join(inspect.getdoc(command.callback).split("\n\n")[0].split())
        assert any(summary in line for line in out.splitlines()), summary
