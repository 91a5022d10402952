from __future__ import annotations

import json

import pytest

from perfpilot.agent.proposals import MAX_PROPOSALS_PER_REPLY, parse_reply

DIFF = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"


def reply(*proposals: dict) -> str:
    return json.dumps({"proposals": list(proposals)})


def test_all_four_kinds_parse():
    parsed = parse_reply(reply(
        {"kind": "patch", "title": "p", "rationale": "r", "diff": DIFF},
        {"kind": "config", "title": "c", "file": "train.toml", "key": "data.num_workers", "value": 4},
        {"kind": "env", "title": "e", "name": "OMP_NUM_THREADS", "value": 2},
        {"kind": "knob", "title": "k", "knob": "amp", "value": "1"},
    ))
    assert parsed.problems == []
    assert [p.kind for p in parsed.proposals] == ["patch", "config", "env", "knob"]
    assert parsed.proposals[2].value == "2"  # env values are strings
    assert parsed.proposals[1].key == "data.num_workers"


@pytest.mark.parametrize("wrap", [
    "```json\n{}\n```",
    "Here you go:\n```\n{}\n```\nHope it helps!",
    "Sure. {} That is all.",
    "{}",
])
def test_tolerates_fences_and_prose(wrap):
    text = wrap.replace("{}", reply({"kind": "patch", "title": "t", "diff": DIFF}), 1)
    parsed = parse_reply(text)
    assert [p.title for p in parsed.proposals] == ["t"]


def test_bare_list_and_single_object_accepted():
    assert len(parse_reply(json.dumps([{"kind": "env", "name": "A", "value": "1"}])).proposals) == 1
    assert len(parse_reply(json.dumps({"kind": "env", "name": "A", "value": "1"})).proposals) == 1


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("I think you should use a set.", "no JSON"),
    ('```json\n{"proposals": [{"kind": "patch", "diff": "--- a/x\n', "not valid JSON"),
    ('{"proposals": "patch it"}', "must be a list"),
    ('{"proposals": []}', "no proposals"),
    ('{"answer": 42}', "expected"),
    (reply({"kind": "rewrite", "diff": DIFF}), "kind must be one of"),
    (reply({"kind": "patch", "title": "t"}), "missing diff"),
    (reply({"kind": "patch", "diff": "just replace line 3"}), "not a unified diff"),
    (reply({"kind": "env", "name": "1BAD", "value": "x"}), "not a valid environment variable"),
    (reply({"kind": "env", "name": "LD_PRELOAD", "value": "/tmp/x.so"}), "not allowed"),
    (reply({"kind": "env", "name": "PERFPILOT_METRICS_FILE", "value": "x"}), "not allowed"),
    (reply({"kind": "config", "file": "a.toml", "key": "", "value": 1}), "key"),
    (reply({"kind": "config", "file": "a.toml", "key": "a", "value": {"nested": 1}}), "value must be"),
    ("[1, 2]", "expected an object"),
])
def test_malformed_replies_are_problems_never_exceptions(text, problem):
    parsed = parse_reply(text)
    assert parsed.proposals == []
    assert parsed.malformed
    assert any(problem in p for p in parsed.problems), parsed.problems


def test_partly_valid_reply_keeps_the_good_and_reports_the_bad():
    parsed = parse_reply(reply({"kind": "env", "name": "A", "value": "1"}, {"kind": "nope"}))
    assert [p.name for p in parsed.proposals] == ["A"]
    assert not parsed.malformed
    assert "proposal 2" in parsed.problems[0]


def test_too_many_proposals_are_cut():
    many = [{"kind": "env", "name": f"V{i}", "value": "1"} for i in range(MAX_PROPOSALS_PER_REPLY + 3)]
    parsed = parse_reply(reply(*many))
    assert len(parsed.proposals) == MAX_PROPOSALS_PER_REPLY
    assert "only the first" in parsed.problems[0]


def test_describe_and_to_dict_round_trip_shape():
    p = parse_reply(reply({"kind": "knob", "knob": "amp", "value": "1"})).proposals[0]
    assert p.describe() == "knob amp=1"
    assert p.to_dict()["kind"] == "knob" and p.to_dict()["knob"] == "amp"


def test_trailing_commas_are_tolerated_outside_strings():
    text = ('Sure:\n```json\n{"proposals": [{"kind": "env", "name": "OMP_NUM_THREADS", "value": "a,]",},\n'
            '  {"kind": "knob", "knob": "amp", "value": "1",},\n]}\n```')
    parsed = parse_reply(text)
    assert parsed.problems == []
    assert [(p.kind, p.value) for p in parsed.proposals] == [("env", "a,]"), ("knob", "1")]


def test_git_rename_without_hunks_is_a_patch():
    rename = "diff --git a/old.py b/new.py\nsimilarity index 100%\nrename from old.py\nrename to new.py\n"
    parsed = parse_reply(reply({"kind": "patch", "title": "rename", "diff": rename}))
    assert parsed.problems == [] and parsed.proposals[0].diff == rename
