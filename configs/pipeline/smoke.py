"""Every stage in a couple of minutes on small local data (the end-to-end test uses it).

    python -m scripts.pipeline --config configs/pipeline/smoke.py:DATA_DIR \\
        --config.workdir=/tmp/smoke

DATA_DIR holds `corpus.jsonl` ({"text": ...} documents) and `dialogues.jsonl`
({"messages": [...]} rows): no download is needed. The model is the "test" size; the numbers
mean nothing, the plumbing does.
"""

import os

from configs import common
from configs.pipeline import tiny


def get_config(arg=None):
    data_dir = arg or "tests/data"
    c = tiny.get_config()
    c.workdir = "runs/pipeline_smoke"
    model = common.model_config("test", vocab_size=384, max_seq_len=128)
    for stage in (c.pretrain, c.sft, c.reward, c.ppo):
        stage.model = model
        stage.train.ckpt_every = 5
    pre, sft, rm, ppo = c.pretrain, c.sft, c.reward, c.ppo
    pre.data.mixture = f"local:{os.path.join(data_dir, 'corpus.jsonl')}=1"
    pre.data.update(dict(vocab_size=384, seq_len=64, batch_size=8, val_fraction=0.1))
    pre.train.update(dict(steps=10, eval_every=5, eval_batches=1, sample_every=10, log_every=5))
    sft.data.sft_mixture = f"tasks=0.8,local:{os.path.join(data_dir, 'dialogues.jsonl')}=0.2"
    sft.data.update(dict(seq_len=128, batch_size=8, n_tasks=200, n_val_tasks=8,
                         task_word_sources=""))
    sft.train.update(dict(steps=10, eval_every=10, eval_batches=1, sample_every=10, log_every=5))
    sft.eval.update(dict(n_prompts=8, max_new_tokens=16, batch_size=8, n_side_by_side=2))
    rm.collect.update(dict(n_prompts=8, heldout_prompts=8, k=2, pairs_per_prompt=1,
                           max_new_tokens=16, batch_size=16))
    rm.data.update(dict(seq_len=128, batch_size=4))
    rm.train.update(dict(steps=6, eval_every=6, log_every=3))
    rm.normalise.max_samples = 16
    ppo.rollout.update(dict(batch_size=8, max_new_tokens=16))
    ppo.prompts.n_prompts = 64
    ppo.ppo.update(dict(iterations=2, epochs=1, minibatches=2))
    ppo.eval.update(dict(every=2, n_prompts=8))
    ppo.best_of_n.update(dict(ns="1,2", n_prompts=4))
    c.evaluate.update(dict(bon_ns="1,2", bon_prompts=4))
    return c
