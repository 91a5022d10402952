"""The speedscope export validates against speedscope's own file-format schema
(vendored from the speedscope npm package, MIT: tests/data/LICENSE-speedscope)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from perfpilot.profilers import hotspots as hs
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import collapsed, speedscope

DATA = Path(__file__).resolve().parent / "data"
SCHEMA = json.loads((DATA / "speedscope-file-format-schema.json").read_text())
ROOT = Path(__file__).resolve().parent.parent


def check(document: dict, profile: Profile) -> None:
    jsonschema.validate(document, SCHEMA)
    assert document["$schema"] == speedscope.SCHEMA_URL
    frames = document["shared"]["frames"]
    rate = profile.stacks["rate_hz"]
    total = 0.0
    for prof in document["profiles"]:
        assert len(prof["samples"]) == len(prof["weights"])
        assert all(0 <= i < len(frames) for sample in prof["samples"] for i in sample)
        assert prof["endValue"] == pytest.approx(sum(prof["weights"]))
        total += sum(prof["weights"])
    assert total == pytest.approx(profile.stacks["samples"] / rate)


def synthetic() -> Profile:
    stacks = {
        'process 1:"python main.py";main (/m.py:3);wait (/m.py:9)': 5,
        'process 1:"python main.py";process 2:"python -c a, b";work (/w.py:4)': 40,
        'process 1:"python main.py";process 3:"python -c a, b";work (/w.py:4)': 35,
        'process 1:"python main.py";process 3:"python -c a, b";PyEval_EvalFrameDefault (libpython3.11.so)': 2,
    }
    return Profile(target={"command": ["python", "main.py"], "pid": 1},
                   stacks={"rate_hz": 100, "samples": sum(stacks.values()), "collapsed": stacks})


def test_synthetic_profile_validates_with_one_profile_per_process() -> None:
    profile = synthetic()
    document = speedscope.build(profile)
    check(document, profile)
    names = [p["name"] for p in document["profiles"]]
    assert names[0].startswith("pid 2:") and names[1].startswith("pid 3:") and names[2].startswith("pid 1:")
    frames = document["shared"]["frames"]
    work = [f for f in frames if f["name"] == "work"]
    assert work == [{"name": "work", "file": "/w.py", "line": 4}]  # shared across processes
    native = next(f for f in frames if f["name"] == "PyEval_EvalFrameDefault")
    assert "line" not in native


def test_schema_rejects_a_broken_document() -> None:
    document = speedscope.build(synthetic())
    document["profiles"][0]["type"] = "sampled-ish"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_collapsed_round_trips() -> None:
    profile = synthetic()
    text = collapsed.render(profile)
    assert hs.parse_collapsed(text) == profile.stacks["collapsed"]
    assert text.splitlines()[0].endswith(" 40")  # heaviest first


def test_no_stacks_is_a_clear_error() -> None:
    profile = Profile(annotations={"stacks_note": "py-spy is not installed"})
    with pytest.raises(collapsed.NoStacksError, match="no Python stacks to export: py-spy is not installed"):
        speedscope.build(profile)


@pytest.mark.slow
def test_real_run_exports_valid_speedscope(perfpilot_cli, python_exe, tmp_path) -> None:
    out, ss = tmp_path / "run.json", tmp_path / "run.speedscope.json"
    result = perfpilot_cli("profile", "-o", str(out), "--speedscope", str(ss), "--", python_exe,
                           str(ROOT / "examples" / "hotspot" / "hot_function.py"), "--seconds", "0.8")
    assert result.returncode == 0, result.stderr
    profile = Profile.load(out)
    document = json.loads(ss.read_text())
    check(document, profile)
    heaviest = max(document["profiles"][0]["samples"], key=len)
    leaf_names = {document["shared"]["frames"][s[-1]]["name"] for s in document["profiles"][0]["samples"]}
    assert "crunch" in leaf_names and len(heaviest) >= 3
