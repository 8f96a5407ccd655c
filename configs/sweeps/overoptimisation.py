"""Gao, Schulman & Hilton 2022 on the embedded synthetic world: reward models trained on more
and more preference pairs, best-of-n and PPO against each, gold and proxy (the RM) against
d = √KL, their functional forms fitted (train/overoptimisation.py).

    python -m scripts.sweep --config configs/sweeps/overoptimisation.py --workdir runs/overopt

Trials: the tiny pipeline with the number of collection prompts swept (4 pairs per prompt, so
about 250 → 4000 synthetic pairs), PPO at the default β = 0.2, plus one reward model trained at
β = 0.02 (a weaker KL penalty: Gao et al. find it acts like early stopping, moving along the
same gold-vs-KL curve). Tokenizer, pretraining and SFT are trained once and shared by every
trial. Best-of-n goes to n = 64 on 64 held-out prompts; PPO is evaluated every 5 iterations.
`analyse` writes the figure (overoptimisation.png) and the table into results.md;
docs/reproductions.md has a run of it.
"""

import json
import os

from configs import sweep
from configs.pipeline import tiny

PROMPTS = (64, 128, 256, 512, 1024)  # × 4 pairs per prompt (fewer after de-duplication)
METRICS = {
    "reward.heldout_accuracy_gold": "max",
    "ppo.ppo.gold": "max",
    "ppo.ppo.kl": "min",
    "evaluate.gold_differences.ppo_minus_sft.mean": "max",
}


def get_config(arg=None):
    del arg
    c = tiny.get_config()
    c.ppo.best_of_n.ns = "1,2,4,8,16,32,64"
    c.ppo.eval.every = 5
    return c


def get_sweep(arg=None):
    del arg
    return sweep.chain(
        sweep.product(sweep.axis("reward.collect.n_prompts", PROMPTS),
                      sweep.fixed({"ppo.kl.coef": 0.2})),
        sweep.fixed({"reward.collect.n_prompts": 256, "ppo.kl.coef": 0.02}),
    )


def analyse(workdir: str, rows: list[dict]) -> str:
    """The figure and the fits table of the finished trials (markdown for results.md)."""
    from train.overoptimisation import report

    runs = []
    for row in rows:
        if row["status"] != "done":
            continue
        run = os.path.join(workdir, "trials", row["trial"], "run")
        with open(os.path.join(run, "ppo", "summary.json")) as f:
            ppo = json.load(f)
        with open(os.path.join(run, "reward", "summary.json")) as f:
            rm = json.load(f)
        runs.append({"pairs": rm["train_pairs"], "kl_coef": row["ppo.kl.coef"],
                     "accuracy": rm.get("heldout_accuracy_gold"), "ppo": ppo})
    return report(runs, os.path.join(workdir, "overoptimisation.png"))
