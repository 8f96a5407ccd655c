"""Reward model on the user's preference pairs, from an SFT run of an imported model.

    python -m scripts.train --config configs/reward/hf.py:runs/hf_base --workdir runs/hf_reward \\
        --config.init_from=runs/hf_sft --config.data.preferences=my_pairs.jsonl \\
        --config.data.heldout=my_heldout_pairs.jsonl

Preference files (data/preferences.py): {"prompt", "chosen", "rejected"} rows (prompt a string
or messages), HH rows, or ratings {"prompt", "response", "rating" in [0, 1]} — replies to the
same prompt with different ratings become pairs, the higher one chosen. To label the SFT
policy's own replies instead: `python -m scripts.collect_preferences` with this config,
`--config.collect.source=local:prompts.jsonl` and `--config.collect.annotator=rate` (or human).
"""

from configs import common
from configs.reward import tiny


def get_config(arg="runs/hf_base"):
    model, tokenizer, hf = common.imported(arg)
    c = tiny.get_config()
    c.unlock()
    c.init_from = "runs/hf_sft"
    c.model = model
    c.hf = hf
    c.collect = tiny.collect_config(
        out="runs/hf_prefs", source="local:prompts.jsonl", heldout_source="",
        annotator="rate", k=2, pairs_per_prompt=1, max_new_tokens=128, batch_size=8)
    c.data = tiny.get_config().data
    c.data.update(dict(tokenizer=tokenizer, seq_len=min(1024, model.max_seq_len), batch_size=8,
                       preferences="preferences.jsonl", heldout="none", epochs=1.0))
    c.optim = common.optim_config(lr=1e-5, warmup_steps=10, weight_decay=0.0)
    c.eval.batch_size = 8
    c.normalise.max_samples = 256
    return common.lock(c)
