"""PPO of an imported model's SFT run against its reward model, on the user's prompts.

    python -m scripts.train --config configs/ppo/hf.py:runs/hf_base --workdir runs/hf_ppo \\
        --config.prompts.source=local:my_prompts.jsonl \\
        --config.eval.source=local:my_heldout_prompts.jsonl

Prompts files (data/worlds.py): {"prompt": "..."} or {"messages": [..., user turn]} rows.
Without a gold scorer, summary.json judges PPO by the reward model: score, win rate over the
SFT policy on the held-out prompts, KL to the reference, length, share of replies that end.
The PPO switches are those of configs/ppo/tiny.py (which documents each).
"""

from configs import common
from configs.ppo import tiny


def get_config(arg="runs/hf_base"):
    model, tokenizer, hf = common.imported(arg)
    c = tiny.get_config()
    c.unlock()
    c.sft_from, c.reward_from = "runs/hf_sft", "runs/hf_reward"
    c.model = model
    c.hf = hf
    c.data.tokenizer = tokenizer
    c.prompts.source = "local:prompts.jsonl"
    c.eval.source = "local:heldout_prompts.jsonl"  # "" = no held-out evaluation
    c.rollout.update(dict(batch_size=16, max_new_tokens=128))
    c.ppo.iterations = 100
    c.optim.lr, c.optim.warmup_steps = 1e-6, 10
    c.critic_optim.lr = 1e-5
    c.best_of_n.update(dict(ns="1,2,4", n_prompts=16))
    return common.lock(c)
