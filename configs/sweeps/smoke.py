"""Two PPO settings on the smoke pipeline (a few minutes on 2 CPU cores): the trials share one
tokenizer, pretraining, SFT, collection and reward model through the sweep's stage cache.

    python -m scripts.sweep --config configs/sweeps/smoke.py:DATA_DIR --workdir runs/sweep_smoke

DATA_DIR as for configs/pipeline/smoke.py (corpus.jsonl and dialogues.jsonl).
"""

from configs import sweep
from configs.pipeline import smoke

METRICS = {"evaluate.policies.ppo.rm.mean": "max", "ppo.ppo.kl": "min"}


def get_config(arg=None):
    return smoke.get_config(arg)


def get_sweep(arg=None):
    del arg
    return sweep.axis("ppo.kl.coef", [0.05, 0.2])
