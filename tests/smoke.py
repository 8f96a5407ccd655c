"""The smoke pipeline the end-to-end and fault tests share: its data, command and folder."""

import json
import os
import random
import subprocess
import sys

from data import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One CPU device in the stage processes (not the 8 virtual ones of the tests), fast compiles.
ENV = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
ENV.pop("JAXCHAT_DEBUG", None)
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


def pipeline_cmd(work, data, *extra):
    return [sys.executable, "-m", "scripts.pipeline", f"--config=configs/pipeline/smoke.py:{data}",
            f"--config.workdir={work}", f"--config.cache_dir={data}/cache", *extra]


def run(cmd, timeout=600):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def summary(work, stage):
    with open(os.path.join(work, stage, "summary.json")) as f:
        return json.load(f)


def without_times(obj):
    """A summary without its wall-clock entries (everything else must repeat exactly)."""
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items()
                if "time" not in k and "wall" not in k}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj
