"""SFT of an imported Hugging Face model on the user's dialogues (README: "Start from a Hugging
Face model").

    python -m scripts.import_hf --hf_dir ~/models/Qwen2.5-0.5B-Instruct --workdir runs/hf_base
    python -m scripts.train --config configs/sft/hf.py:runs/hf_base --workdir runs/hf_sft \\
        --config.data.sft_mixture=local:my_dialogues.jsonl

The argument is the imported folder: model config, tokenizer (its tokenizer.json and chat
template) and init_from all come from it. Dialogues: {"messages": [...]} or HH rows
(data/dialogues.py). A held-out slice of the same file (data.val_fraction) gives the
validation loss; `eval.source=local:<prompts.jsonl>` adds greedy answers to held-out prompts
(answers.md; no gold scorer outside the synthetic world).
"""

from configs import common
from configs.sft import tiny


def get_config(arg="runs/hf_base"):
    model, tokenizer, hf = common.imported(arg)
    c = tiny.get_config()
    c.unlock()
    c.init_from = arg
    c.model = model
    c.hf = hf  # architecture and dtype, for export
    c.data = tiny.data_config(
        tokenizer=tokenizer,
        sft_mixture="local:dialogues.jsonl",  # comma-separated sets with weights, as tiny.py
        seq_len=min(1024, model.max_seq_len),
        batch_size=8,
        max_conversations=0,
        task_word_sources="",  # no synthetic tasks here
    )
    c.optim = common.optim_config(lr=1e-5, warmup_steps=20, weight_decay=0.0)
    c.train = common.train_config(steps=500, eval_every=100, ckpt_every=100, sample_every=0)
    c.eval = tiny.eval_config(source="", max_new_tokens=128, batch_size=8, n_side_by_side=8)
    return common.lock(c)
