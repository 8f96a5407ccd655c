"""Report tables built from a hand-made evaluate folder (no training)."""

import json

from train import report


def _answer(family, golds):
    row = {"prompt": "p", "family": family, "reference": "r"}
    for name, g in zip(("base", "sft", "ppo"), golds, strict=True):
        row[name] = {"text": "t", "gold": g, "rm": 0.0}
    return row


def test_family_table_averages_each_family_and_policy(tmp_path):
    (tmp_path / "evaluate").mkdir()
    rows = [
        _answer("add", (0.0, 0.2, 0.5)),
        _answer("add", (0.0, 0.4, 1.0)),
        _answer("sort", (0.1, 0.3, 0.3)),
    ]
    with open(tmp_path / "evaluate" / "answers.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    lines = report.family_table(str(tmp_path)).splitlines()
    assert lines[0] == "| Family | n | base gold | sft gold | ppo gold |"
    assert lines[2] == "| add | 2 | 0.000 | 0.300 | 0.750 |"
    assert lines[3] == "| sort | 1 | 0.100 | 0.300 | 0.300 |"
    assert report.family_table(str(tmp_path / "missing")) == ""


def test_headline_shows_correctness_and_chatty_share_when_measured():
    ci = {"mean": 0.25, "lo": 0.2, "hi": 0.3}
    policy = {"gold": ci, "rm": {"mean": 0.5}, "terminated": 1.0, "length": 20.0}
    table = report.headline_table(
        {"policies": {"old": policy, "new": {**policy, "correctness": ci, "chatty": 0.33}}}
    )
    old, new = table.splitlines()[2:]
    assert old == "| old | 0.250 [0.200, 0.300] | – | – | +0.50 | 100% | 20.0 |"
    assert new == (
        "| new | 0.250 [0.200, 0.300] | 0.250 [0.200, 0.300] | 33% | +0.50 | 100% | 20.0 |"
    )


def test_demonstrators_line_reads_the_sft_share(tmp_path):
    assert report.demonstrators_line(str(tmp_path)) == ""
    config = {"sft": {"data": {"task_chatty_fraction": 0.6}}}
    (tmp_path / "pipeline_config.json").write_text(json.dumps(config))
    assert "40% direct replies, 60% chatty" in report.demonstrators_line(str(tmp_path))
