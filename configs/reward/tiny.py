"""Reward model on the tiny default: collect synthetic preferences from the SFT policy, then
train a Bradley-Terry reward model on them (2-core CPU: about 2–3 minutes for both).

    python -m scripts.collect_preferences --config configs/reward/tiny.py --workdir runs/prefs_tiny
    python -m scripts.train --config configs/reward/tiny.py --workdir runs/reward_tiny

The labels are synthetic preferences from a programmatic labeller (a noisy Bradley-Terry rater
over the gold scorer of data/tasks.py), not human data; `collect.annotator="human"` asks a
person at the terminal instead and writes the same files.
"""

import ml_collections

from configs import common


def collect_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        out="runs/prefs_tiny",  # folder of train.jsonl / heldout.jsonl / summary.json
        # prompts sampled from (data/worlds.py): "tasks" = the synthetic tasks (families,
        # difficulty, n_prompts, heldout_prompts apply), "local:<prompts.jsonl>" = a prompts
        # file (every row; no gold, so a person labels: annotator "human" or "rate"); "" = none
        source="tasks",
        heldout_source="tasks",
        families="",  # comma-separated task families; "" = all of data/tasks.py
        difficulty=1,
        n_prompts=384,  # train-split task prompts sampled from
        heldout_prompts=128,  # held-out-split prompts (evaluation pairs only)
        k=4,  # samples per prompt
        pairs_per_prompt=4,  # of the k·(k-1)/2 index pairs, distinct responses first
        temperature=1.0,
        top_k=0,
        max_new_tokens=48,
        batch_size=64,  # generation batch (rounded up to the mesh's batch shards)
        # "synthetic" (noisy BT over gold; the tasks world only) | "human" (a person picks the
        # better of two replies) | "rate" (a person rates each reply 0 = off … 1 = perfect;
        # pairs from ratings: data/preferences.py pairs_from_ratings)
        annotator="synthetic",
        tau=0.05,  # Bradley-Terry temperature over gold differences
        eps=0.05,  # label flip rate
        seed=0,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.stage = "reward"
    c.seed = 0
    c.model = common.model_config("tiny")
    c.mesh = common.mesh_config()
    c.init_from = "runs/sft_tiny"  # SFT run folder: the trunk (and the collection policy)
    c.collect = collect_config()
    c.data = ml_collections.ConfigDict(
        dict(
            tokenizer="runs/tokenizer/jaxchat.model",
            seq_len=96,  # prompt + response; longer pairs keep their end (the prompt is cut)
            batch_size=32,  # PAIRS per step (2x rows in the forward pass)
            # comma-separated JSONL files; "" = <collect.out>/train.jsonl (heldout.jsonl)
            preferences="",
            heldout="",
            epochs=2.0,  # used when train.steps == 0: steps = ceil(epochs · pairs / batch_size)
            max_bad_fraction=0.01,
        )
    )
    c.optim = common.optim_config(lr=1e-3, warmup_steps=10, weight_decay=0.0)
    c.train = common.train_config(steps=0, log_every=5, eval_every=25, ckpt_every=50)
    c.margin = 0.0  # Bradley-Terry margin: loss = −log σ(r_c − r_r − margin)
    c.eval = ml_collections.ConfigDict(dict(batch_size=64))  # rows per scoring batch
    # gain/bias fitted after training on up to this many distinct collected SFT responses
    c.normalise = ml_collections.ConfigDict(dict(max_samples=1024, target_mean=0.0, target_std=1.0))
    return common.lock(c)
