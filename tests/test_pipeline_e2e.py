"""End to end: the smoke pipeline runs every stage on data made here, no download.

Checks that every stage's outputs exist, are finite, and are consumed by the next stage.
"""

import json
import math
import os
import re

import pytest

from tests import smoke

pytestmark = pytest.mark.xdist_group("smoke")  # one worker builds the shared smoke run
STAGES = smoke.STAGES


def _finite_numbers(obj):
    if isinstance(obj, dict):
        return all(_finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite_numbers(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@pytest.fixture(scope="module")
def smoke_run(smoke_pipeline):
    work, data, _ = smoke_pipeline
    return work, data


def _summary(work, stage):
    with open(os.path.join(work, stage, "summary.json")) as f:
        return json.load(f)


def test_every_stage_writes_finite_outputs(smoke_run):
    work, _ = smoke_run
    assert os.path.exists(os.path.join(work, "tokenizer", "jaxchat.model"))
    for stage in STAGES:
        summary = _summary(work, stage)
        assert summary and _finite_numbers(summary), (stage, summary)
    for stage in ("pretrain", "sft", "reward", "ppo"):
        assert os.listdir(os.path.join(work, stage, "ckpt")), stage
        assert os.path.exists(os.path.join(work, stage, "metrics.jsonl")), stage
    report = open(os.path.join(work, "report.md")).read()
    assert "programmatic labeller" in report and "| base |" in report
    compute = json.load(open(os.path.join(work, "compute.json")))
    assert set(STAGES) <= set(compute)
    for stage in ("pretrain", "sft", "reward", "ppo"):  # each stage said what compiling cost
        assert 0 < compute[stage]["compile_s"] < compute[stage]["wall_s"], compute[stage]
        assert compute[stage]["compiles"] > 0
        assert 0 < compute[stage]["first_step_s"] < compute[stage]["wall_s"], compute[stage]
    assert "of which compiling" in report and "First step after" in report


def test_each_stage_consumes_the_previous_one(smoke_run):
    work, _ = smoke_run
    cfg = {s: json.load(open(os.path.join(work, s, "config.json")))
           for s in ("pretrain", "sft", "reward", "ppo")}
    tok = os.path.join(work, "tokenizer", "jaxchat.model")
    assert all(c["data"]["tokenizer"] == tok for c in cfg.values())
    assert cfg["sft"]["init_from"] == os.path.join(work, "pretrain")
    assert cfg["reward"]["init_from"] == os.path.join(work, "sft")
    assert cfg["reward"]["collect"]["out"] == os.path.join(work, "collect")
    assert (cfg["ppo"]["sft_from"], cfg["ppo"]["reward_from"]) == (
        os.path.join(work, "sft"), os.path.join(work, "reward"))
    assert _summary(work, "reward")["train_pairs"] == _summary(work, "collect")["train"]["pairs"]
    ev = _summary(work, "evaluate")
    assert set(ev["policies"]) == {"base", "sft", "ppo"}
    for policy in ev["policies"].values():  # style and content measured apart for every policy
        assert 0.0 <= policy["chatty"] <= 1.0 and 0.0 <= policy["correctness"]["mean"] <= 1.0


def test_finished_stages_are_skipped_on_rerun(smoke_run, tmp_path):
    work, data = smoke_run
    before = {f: os.path.getmtime(os.path.join(work, f))
              for f in ("pipeline_config.json", "ppo/stage_config.json")}
    out = smoke.run(smoke.pipeline_cmd(work, data), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("skipped") == 8
    after = {f: os.path.getmtime(os.path.join(work, f)) for f in before}
    assert after == before  # nothing ran, so no metadata was rewritten


def test_third_party_info_logs_are_quiet(smoke_pipeline):
    _, _, out = smoke_pipeline
    text = out.stdout + out.stderr
    info = [line for line in text.splitlines() if re.match(r"I\d{4} |INFO:", line)]
    assert not info, info[:5]
