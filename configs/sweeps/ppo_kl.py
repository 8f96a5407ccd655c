"""The KL coefficient of PPO on the embedded default, three seeds each: the gold-vs-KL trade-off
with seed intervals. Pretraining, SFT and the reward model are trained once and shared by the
trials (the stage cache), so the sweep costs one pipeline plus eight PPO runs and evaluations.
SEED_KEY tells the results which key is the seed (their seed means and intervals).

    python -m scripts.sweep --config configs/sweeps/ppo_kl.py --workdir runs/sweep_ppo_kl
"""

from configs import sweep
from configs.pipeline import tiny

SEED_KEY = "stage_seeds.ppo"
METRICS = {
    "evaluate.gold_differences.ppo_minus_sft.mean": "max",
    "evaluate.policies.ppo.gold.mean": "max",
    "evaluate.rm_win_rates.ppo_over_sft.mean": "max",
    "ppo.ppo.kl": "min",
}


def get_config(arg=None):
    del arg
    return tiny.get_config()


def get_sweep(arg=None):
    del arg
    # PPO's own seed: the shared stages keep the pipeline's seed
    return sweep.product(sweep.axis("ppo.kl.coef", [0.05, 0.1, 0.2]),
                         sweep.seeds(3, "stage_seeds.ppo"))
