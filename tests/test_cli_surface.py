"""No flag changes by accident: every ``perfpilot`` command's options, every ``pytest --perfpilot*`` option and
both entry points match ``tests/data/cli_surface.json`` (captured before the pytest plugin became a package).

A deliberate change updates the snapshot with ``.venv/bin/python tests/cli_surface.py --update`` in the same
commit, so the diff shows it.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli_surface import SNAPSHOT, flatten, surface


@pytest.fixture(scope="module")
def live() -> dict:
    return surface()


def test_every_flag_and_entry_point_is_as_snapshotted(live):
    want, got = flatten(json.loads(SNAPSHOT.read_text())), flatten(live)
    lost = sorted(set(want) - set(got))
    added = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    assert not (lost or added or changed), (
        f"lost: {lost}\nadded: {added}\nchanged: {[(k, want[k], got[k]) for k in changed]}\n"
        "if deliberate: .venv/bin/python tests/cli_surface.py --update")


def test_every_command_help_renders(live):
    from perfpilot.cli import cli

    runner = CliRunner()
    for path in live["commands"]:
        result = runner.invoke(cli, [*path.split()[1:], "--help"], prog_name="perfpilot")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: perfpilot" in result.output, path
        names = [n for p in live["commands"][path] if p["kind"] == "option" for n in p["names"]]
        for name in names:
            assert name in result.output, (path, name)


def test_snapshot_can_catch_a_dropped_flag(live):
    trimmed = json.loads(json.dumps(live))
    trimmed["pytest_options"].pop()
    assert set(flatten(live)) - set(flatten(trimmed))
