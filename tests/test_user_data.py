"""Every stage on the user's own model and files, through the commands of the README.

1. A random tiny Hugging Face Llama (with a ChatML tokenizer) saved to disk → scripts.import_hf
   → SFT on a dialogue JSONL → reward model on a preference JSONL → PPO on a prompts JSONL
   (configs/*/hf.py) → scripts.export_hf → transformers loads the policy; its logits equal
   jaxchat's.
2. jaxchat's own (random) SFT checkpoint: collection on a prompts file rated by a "person"
   (0 … 1 ratings from a scripted terminal) → reward model on the pairs the ratings make →
   PPO on the prompts file; no gold scorer anywhere, judged by the reward model.

Stages run as the README runs them: one process each, on one CPU device (tests/smoke.py ENV).
"""

import io
import json
import os

import numpy as np
import pytest
import torch
import transformers

from configs.ppo import tiny as ppo_tiny
from data import preferences as prefs
from tests import smoke
from tests.test_collect import make_sft_checkpoint, tiny_config
from tests.test_hf import jax_logits, make_hf
from tests.test_hf_tokenizer import build_chat_tokenizer
from train import collect

pytestmark = pytest.mark.xdist_group("user_data")
PY = smoke.sys.executable
TOPICS = ["the sea", "a red kite", "old maps", "green tea", "the moon", "small boats", "rain"]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def user_files(folder):
    """Dialogues, preference pairs, rollout prompts and held-out prompts, as a user has them."""
    ask = [f"Tell me about {t}." for t in TOPICS] + [f"What is {i} + {i}?" for i in range(9)]
    dialogues = [{"messages": [{"role": "user", "content": q},
                               {"role": "assistant", "content": f"Sure. {q[:-1]} is fine."}]}
                 for q in ask]
    pairs = [{"prompt": q, "chosen": "A short, kind answer.", "rejected": "no"} for q in ask]
    prompts = [{"prompt": q} for q in ask[:12]]
    prompts.append({"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"},
                                 {"role": "user", "content": "Name a colour."}]})
    held = [{"prompt": f"Describe {t} in one line.", "group": "describe"} for t in TOPICS[:8]]
    return {"dialogues": write_jsonl(folder / "dialogues.jsonl", dialogues),
            "preferences": write_jsonl(folder / "preferences.jsonl", pairs),
            "prompts": write_jsonl(folder / "prompts.jsonl", prompts),
            "heldout": write_jsonl(folder / "heldout_prompts.jsonl", held)}


def cli(*args, timeout=600):
    r = smoke.run([PY, "-m", *args], timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_hf_model_through_sft_reward_ppo_and_back(tmp_path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    build_chat_tokenizer(hf_dir)
    make_hf(hf_dir, vocab_size=416, tie_word_embeddings=False)
    files = user_files(tmp_path)
    base, runs = str(tmp_path / "base"), {s: str(tmp_path / s) for s in ("sft", "rm", "ppo")}
    cli("scripts.import_hf", f"--hf_dir={hf_dir}", f"--workdir={base}", "--max_seq_len=128")
    cli("scripts.train", f"--config=configs/sft/hf.py:{base}", f"--workdir={runs['sft']}",
        f"--config.data.sft_mixture=local:{files['dialogues']}", "--config.data.seq_len=128",
        "--config.data.batch_size=4", "--config.data.val_fraction=0.2", "--config.train.steps=4",
        "--config.train.eval_every=2", "--config.train.ckpt_every=4",
        "--config.eval.max_new_tokens=12", "--config.optim.lr=1e-3")
    sft = smoke.summary(runs["sft"], ".")  # config default: no held-out prompts, no gold
    assert sft["n_prompts"] == 0 and "sft_gold" not in sft and sft["steps"] == 4
    assert np.isfinite(sft["val_loss"])
    cli("scripts.train", f"--config=configs/reward/hf.py:{base}", f"--workdir={runs['rm']}",
        f"--config.init_from={runs['sft']}", f"--config.data.preferences={files['preferences']}",
        "--config.data.seq_len=128", "--config.data.batch_size=4", "--config.train.steps=4",
        "--config.train.eval_every=2", "--config.train.ckpt_every=4")
    cli("scripts.train", f"--config=configs/ppo/hf.py:{base}", f"--workdir={runs['ppo']}",
        f"--config.sft_from={runs['sft']}", f"--config.reward_from={runs['rm']}",
        f"--config.prompts.source=local:{files['prompts']}",
        f"--config.eval.source=local:{files['heldout']}", "--config.rollout.batch_size=4",
        "--config.rollout.max_new_tokens=12", "--config.ppo.iterations=2",
        "--config.ppo.epochs=1", "--config.eval.every=1", "--config.best_of_n.ns=1,2",
        "--config.best_of_n.n_prompts=4")
    ppo = smoke.summary(runs["ppo"], ".")
    assert ppo["world"] == "files" and "gold_diff" not in ppo and "gold" not in ppo["ppo"]
    assert 0.0 <= ppo["ppo"]["rm_win"] <= 1.0 and np.isfinite(ppo["ppo"]["kl"])
    assert [r["n"] for r in ppo["best_of_n"]] == [1, 2]
    out = str(tmp_path / "exported")
    cli("scripts.export_hf", f"--workdir={runs['ppo']}", f"--out={out}", "--dtype=float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me about rain."}],
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = np.asarray(ids, np.int32)[None]
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids)).logits.numpy()
    ours = jax_logits(runs["ppo"], ids, positions)
    assert np.abs(ours - theirs).max() < 1e-4
    # the exported policy is PPO's, not the imported one
    base_logits = jax_logits(base, ids, positions)
    assert np.abs(base_logits - ours).max() > 1e-3


class Ratings(io.StringIO):
    """A scripted person: rates every reply by its length (longer = better, in [0, 1])."""

    def __init__(self):
        super().__init__()
        self.out = io.StringIO()

    def readline(self):
        shown = self.out.getvalue().rsplit("[reply] ", 1)[-1].split("\n" + "-" * 60)[0]
        return f"{min(len(shown), 40) / 40:.3f}\n"


def test_own_sft_checkpoint_on_a_prompts_file_without_gold(tokenizer, tmp_path):
    files = user_files(tmp_path)
    c = tiny_config(tokenizer, tmp_path)
    c.collect.update(dict(source=f"local:{files['prompts']}", heldout_source="",
                          annotator="rate", k=3, pairs_per_prompt=3))
    make_sft_checkpoint(c)
    person = Ratings()
    summary = collect.run(c, in_stream=person, out_stream=person.out)
    assert summary["annotator"] == "human ratings" and summary["train"]["prompts"] == 13
    assert np.isnan(summary["train"]["gold_agreement"]) and "mean_gold" not in summary["train"]
    ratings = prefs.read_preferences(os.path.join(c.collect.out, "train.ratings.jsonl"))
    pairs = prefs.read_preferences(os.path.join(c.collect.out, "train.jsonl"))
    without_id = lambda ps: [{**p.to_json(), "meta": {k: v for k, v in p.meta.items()
                                                      if k != "pair_id"}} for p in ps]
    assert pairs and without_id(ratings) == without_id(pairs)
    assert all(p.meta["rating_chosen"] > p.meta["rating_rejected"] for p in pairs)
    assert summary["train"]["pairs"] == len(pairs)
    # the reward model and PPO read the same folder, as the README's commands do
    cfg_path = tmp_path / "reward.json"
    c.data.heldout = "none"
    c.train.steps, c.train.eval_every, c.train.ckpt_every = 3, 3, 3
    cfg_path.write_text(json.dumps(c.to_dict()))
    rm = str(tmp_path / "rm")
    cli("scripts.train", f"--config=configs/resolved.py:{cfg_path}", f"--workdir={rm}")
    p = ppo_tiny.get_config()
    with p.unlocked():
        p.model = c.model
    p.data.tokenizer, p.sft_from, p.reward_from = tokenizer.path, c.init_from, rm
    p.prompts.source, p.eval.source = f"local:{files['prompts']}", f"local:{files['heldout']}"
    p.rollout.batch_size, p.rollout.max_new_tokens = 8, 8
    p.ppo.iterations, p.eval.every, p.best_of_n.ns = 2, 1, ""
    (tmp_path / "ppo.json").write_text(json.dumps(p.to_dict()))
    ppo_dir = str(tmp_path / "ppo")
    cli("scripts.train", f"--config=configs/resolved.py:{tmp_path / 'ppo.json'}",
        f"--workdir={ppo_dir}")
    ppo = smoke.summary(ppo_dir, ".")
    assert "gold_diff" not in ppo and all("gold" not in p for p in ppo["eval_points"])
    assert ppo["judge"].startswith("no gold") and "rm_win_lo" in ppo["ppo"]


def test_collection_refuses_bad_inputs_before_writing(tokenizer, tmp_path):
    files = user_files(tmp_path)
    c = tiny_config(tokenizer, tmp_path)
    c.collect.source = f"local:{files['prompts']}"
    with pytest.raises(ValueError, match="mix the synthetic tasks and prompt files"):
        collect.run(c)
    c.collect.heldout_source = ""
    with pytest.raises(ValueError, match="gold scorer.*'human' or 'rate'"):
        collect.run(c)
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "Hi"}, {"prompt": "word " * 60}])
    c.collect.update(dict(annotator="rate", source=f"local:{long}"))
    make_sft_checkpoint(c)
    with pytest.raises(ValueError, match=r"long.jsonl:2: the prompt is \d+ tokens; with collect "
                                         r"max_new_tokens=12 it needs \d+ > model.max_seq_len=64"):
        collect.run(c)
    assert not os.path.exists(c.collect.out)  # nothing written
