"""End to end: the smoke pipeline runs every stage on data made here, no download.

Checks that every stage's outputs exist, are finite, and are consumed by the next stage.
"""

import json
import math
import os
import random
import subprocess
import sys

import pytest

from data import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One CPU device in the stage processes (not the 8 virtual ones of the tests), fast compiles.
ENV = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
STAGES = ("pretrain", "sft", "collect", "reward", "ppo", "evaluate")


def make_data(folder):
    rng = random.Random(0)
    words = list(tasks.FALLBACK_WORDS)
    lines = []
    for t in tasks.make_tasks(tasks.FAMILIES, 300, seed=1, split="train"):
        lines += [t.prompt, t.answer]
    for _ in range(600):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))).capitalize()
                     + rng.choice([".", "?", "!"]))
    with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
        for i in range(0, len(lines), 12):  # 12 lines = one document
            f.write(json.dumps({"text": "\n".join(lines[i:i + 12])}) + "\n")
    with open(os.path.join(folder, "dialogues.jsonl"), "w") as f:
        for _ in range(40):
            q = " ".join(rng.choice(words) for _ in range(6))
            a = " ".join(rng.choice(words) for _ in range(8))
            msgs = [{"role": "user", "content": f"Tell me about {q}?"},
                    {"role": "assistant", "content": f"Well, {a}."}]
            f.write(json.dumps({"messages": msgs}) + "\n")


def _finite_numbers(obj):
    if isinstance(obj, dict):
        return all(_finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite_numbers(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("smoke_data")
    make_data(str(data))
    work = str(tmp_path_factory.mktemp("smoke") / "run")
    cmd = [sys.executable, "-m", "scripts.pipeline", f"--config=configs/pipeline/smoke.py:{data}",
           f"--config.workdir={work}", f"--config.cache_dir={data}/cache"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return work, str(data)


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
    cmd = [sys.executable, "-m", "scripts.pipeline", f"--config=configs/pipeline/smoke.py:{data}",
           f"--config.workdir={work}", f"--config.cache_dir={data}/cache"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("skipped") == 8
