"""The main job on the embedded default (2-core CPU: about 20 minutes).

    python -m scripts.pipeline --config configs/pipeline/tiny.py
    python -m scripts.pipeline --config configs/pipeline/tiny.py --config.ppo.kl.coef=0.1

Holds one full config per stage (the same files `scripts.train` reads), so any stage key can be
overridden here; the pipeline points every stage's paths into `workdir`.
"""

import ml_collections

from configs.ppo import tiny as ppo
from configs.pretrain import tiny as pretrain
from configs.reward import tiny as reward
from configs.sft import tiny as sft


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.workdir = "runs/pipeline_tiny"
    c.seed = 0
    # one stage's own seed (-1: `seed`), e.g. PPO seeds over one shared SFT and reward model
    c.stage_seeds = ml_collections.ConfigDict(dict(pretrain=-1, sft=-1, reward=-1, ppo=-1))
    c.cache_dir = ""  # "" = $JAXCHAT_CACHE or cache/data
    # "" = off; a folder: finished stages kept by fingerprint and shared by every pipeline
    # that names it (train/stage_cache.py; sweeps set <sweep>/stages)
    c.stage_cache = ""
    c.pretrain = pretrain.get_config()
    c.sft = sft.get_config()
    c.reward = reward.get_config()
    c.ppo = ppo.get_config()
    c.evaluate = ml_collections.ConfigDict(
        dict(bon_ns="1,2,4,8,16", bon_prompts=64, bon_temperature=0.7))
    c.lock()
    return c
