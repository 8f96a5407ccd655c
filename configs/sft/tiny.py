"""Supervised fine-tuning of the tiny pretrained model (2-core CPU: about 3 minutes).

    python -m scripts.train --config configs/sft/tiny.py --workdir runs/sft_tiny
    python -m scripts.train --config configs/sft/tiny.py --config.init_from=runs/pretrain_tiny \\
        --config.data.sft_mixture="tasks=0.8,chitchat=0.2" --workdir runs/sft_x

Starts from the params of the pretraining run in `init_from` (fresh optimizer). The mixture
names conversation sets and their shares of the conversations drawn:
  tasks              demonstrations of the synthetic assistant tasks (data/tasks.py),
  chitchat, chatterbot  real dialogues (data/sources.py), cut into pieces of max_turns turns,
  local:<file.jsonl> {"messages": [...]} or HH-form rows (data/dialogues.py read_dialogues).
The run prints the mean gold score of greedy answers on held-out task prompts for the base
model and for the SFT model (same prompts, same chat format) and writes summary.json and
answers.md.
"""

import ml_collections

from configs import common
from configs.pretrain import tiny as pretrain_tiny

FAMILIES = "add,subtract,compare,reverse,count_letter,number_words,sort,uppercase"
SFT_MIXTURE = "tasks=0.85,chitchat=0.1,chatterbot=0.05"


def data_config(**overrides) -> ml_collections.ConfigDict:
    pre = pretrain_tiny.data_config()
    cfg = dict(
        tokenizer=pre.tokenizer,  # must exist: SFT never trains a tokenizer
        cache_dir=pre.cache_dir,
        sft_mixture=SFT_MIXTURE,
        seq_len=256,
        batch_size=8,  # more, smaller updates: better gold than 16 x 300 for the same compute
        # held-out dialogues: the same hash split as pretraining's documents
        val_fraction=pre.val_fraction,
        split_seed=pre.split_seed,
        max_turns=6,  # long dialogues are cut into conversations of at most this many turns
        max_conversations=5000,  # per dialogue set, after the split (0 = all)
        n_tasks=20000,  # training demonstrations (train split of data/tasks.py)
        n_val_tasks=128,  # held-out demonstrations for the validation loss
        task_families=FAMILIES,
        task_difficulty=1,
        # share of task demonstrations written by the chatty demonstrator (data/demonstrators.py):
        # SFT imitates both writers; the preference for direct answers is RLHF's to learn
        task_chatty_fraction=0.6,
        task_word_sources="chitchat,chatterbot",  # common words of these dialogues
        n_task_words=1000,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """The held-out prompts every later stage is measured on too (data/worlds.py: source
    "tasks" = the synthetic task prompts and their gold scorer; "local:<prompts.jsonl>" = the
    user's prompts, answers without gold; "" = none, validation loss only)."""
    cfg = dict(
        source="tasks",
        families=FAMILIES,
        n_prompts=128,
        seed=1234,
        difficulty=1,
        max_new_tokens=48,
        batch_size=64,
        n_side_by_side=8,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.stage = "sft"
    c.seed = 0
    c.init_from = "runs/pretrain_tiny"  # run folder of the pretraining stage (its ckpt/)
    c.model = common.model_config("tiny")
    c.mesh = common.mesh_config()
    c.data = data_config()
    # Below pretraining's 3e-3; tuned on the tiny run: held-out gold 0.24 (lr 1e-3, 70% tasks,
    # batch 16 x 300 steps), 0.34 (2e-3, 85% tasks), 0.35 (2e-3, 85%, batch 8 x 600 steps).
    c.optim = common.optim_config(lr=2e-3, warmup_steps=20)
    c.z_loss = 0.0  # PaLM's z-loss coefficient (1e-4 there): + z_loss·log²Z per token
    c.train = common.train_config(
        steps=600, eval_every=300, eval_batches=8, ckpt_every=300, sample_every=300
    )
    c.eval = eval_config()
    return common.lock(c)
