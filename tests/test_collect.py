"""Preference collection: pair formation, the synthetic rater's label frequencies, the whole
synthetic collection from a tiny random SFT checkpoint, and a human session that resumes."""

import io
import json
import math
import os

import numpy as np
import pytest

from configs import common
from configs.reward import tiny as reward_tiny
from data import preferences as prefs
from data import tasks
from train import collect
from train import setup as setup_lib
from train.checkpoint import Checkpoints


def tiny_config(tok, tmp_path):
    """The reward tiny config shrunk to the test model, with its paths under tmp_path."""
    c = reward_tiny.get_config()
    c.model = common.model_config("test", vocab_size=384)
    c.init_from = str(tmp_path / "sft")
    c.data.tokenizer = tok.path
    c.data.seq_len = 64
    c.data.batch_size = 16
    c.eval.batch_size = 32
    c.collect.update(
        dict(
            out=str(tmp_path / "prefs"),
            n_prompts=8,
            heldout_prompts=8,
            k=3,
            pairs_per_prompt=2,
            max_new_tokens=12,
            batch_size=24,
        )
    )
    return c


def make_sft_checkpoint(config, extras=None):
    """A randomly initialised LM saved as if it were an SFT run (config.init_from)."""
    setup = setup_lib.make_setup(config)
    params, params_sh = setup.init_params(1, "lm")
    state, _, _ = setup_lib.make_train_state(setup, params, params_sh, config.optim, 10, 0)
    ckpt = Checkpoints(os.path.join(config.init_from, "ckpt"), async_save=False)
    ckpt.save(1, state, {}, extras or {})
    ckpt.close()
    return params


def candidate(i, a, b, gold=(0.0, 0.0), split="train", term=(True, True)):
    prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
    return collect.Candidate(
        collect.pair_id(split, i, (0, 1), prompt, (a, b), term),
        split,
        "add",
        i,
        (0, 1),
        prompt,
        (a, b),
        term,
        gold,
    )


def test_form_pairs_puts_distinct_replies_first():
    rng = np.random.default_rng(0)
    keys = ["x", "x", "y"]
    pairs = collect.form_pairs(keys, 3, rng)
    assert sorted(pairs[:2]) == [(0, 2), (1, 2)] and pairs[2] == (0, 1)
    assert all(keys[i] != keys[j] for i, j in collect.form_pairs(keys, 2, rng))
    assert len(collect.form_pairs(["a", "b", "c", "d"], 10, rng)) == 6  # all C(4, 2)


def test_synthetic_label_frequencies_follow_bradley_terry_with_flips(tmp_path):
    tau, eps, n, (ga, gb) = 0.1, 0.1, 4000, (0.6, 0.5)
    cands = [candidate(i, f"A{i}", f"B{i}", (ga, gb)) for i in range(n)]
    cands.append(candidate(n, "same", "same", (0.3, 0.3)))  # identical replies: a tie
    path = str(tmp_path / "train.jsonl")
    counts = collect.label_synthetic(cands, path, tau, eps, seed=0)
    rows = prefs.read_preferences(path)
    assert counts["ties"] == 1 and len(rows) == n
    sigma = 1 / (1 + math.exp(-(ga - gb) / tau))
    p_a = (1 - eps) * sigma + eps * (1 - sigma)
    share_a = np.mean([r.chosen.startswith("A") for r in rows])
    assert abs(share_a - p_a) < 4 * math.sqrt(p_a * (1 - p_a) / n)
    assert {r.annotator for r in rows} == {collect.synthetic_name(tau, eps)}
    # label agreement with gold ordering = P(a) as well (chosen has the higher gold)
    agree, n_diff = collect.gold_agreement([r.to_json() for r in rows])
    assert n_diff == n and agree == pytest.approx(share_a)


def test_synthetic_collection_end_to_end(tokenizer, tmp_path):
    config = tiny_config(tokenizer, tmp_path)
    # the SFT run's task words (its extras): reversed fallback words, so their origin shows
    words = [w[::-1] for w in tasks.FALLBACK_WORDS if len(w) <= 5]
    make_sft_checkpoint(config, {"task_words": words})
    out = config.collect.out
    summary = collect.run(config, out)
    for s in collect.SPLITS:
        rows = prefs.read_preferences(os.path.join(out, f"{s}.jsonl"))
        assert len(rows) == summary[s]["pairs"] > 0
        assert summary[s]["pairs"] + summary[s]["ties"] == summary[s]["candidates"]
        for r in rows:
            assert r.annotator == f"synthetic-bt(tau={config.collect.tau:g},eps=0.05)"
            assert r.chosen != r.rejected or (
                r.meta["chosen_terminated"] != r.meta["rejected_terminated"]
            )
            task = tasks.gold_for_prompt(r.prompt[-1]["content"])
            assert task is not None and task.family == r.meta["family"]
            values = {k: v for k, v in task.spec.items() if k != "target"}
            assert tasks.split_of(task.family, values) == s  # held-out prompts stay held out
            assert values.get("w", words[0]) in words
            assert r.meta["gold_chosen"] == tasks.gold(task, r.chosen, r.meta["chosen_terminated"])
    train = {json.dumps(r.prompt) for r in prefs.read_preferences(f"{out}/train.jsonl")}
    held = {json.dumps(r.prompt) for r in prefs.read_preferences(f"{out}/heldout.jsonl")}
    assert not train & held
    stamp = os.path.getmtime(f"{out}/train.jsonl")
    assert collect.run(config, out) == summary  # complete: nothing is redone
    assert os.path.getmtime(f"{out}/train.jsonl") == stamp
    os.remove(f"{out}/summary.json")  # unfinished, but sampled with other settings: refuse
    config.collect.n_prompts = 9
    with pytest.raises(ValueError, match="other settings"):
        collect.run(config, out)


def test_human_session_appends_labels_and_resumes(tokenizer, tmp_path):
    config = tiny_config(tokenizer, tmp_path)
    config.collect.annotator = "human"
    out = config.collect.out
    os.makedirs(out)
    train = [
        candidate(1, "one", "uno"),
        candidate(2, "two", "dos"),
        candidate(3, "three", "tres"),
        candidate(4, "same", "same"),
    ]
    held = [candidate(5, "five", "cinco", split="heldout")]
    collect.save_candidates(f"{out}/candidates_train.json", train, {})
    collect.save_candidates(f"{out}/candidates_heldout.json", held, {})

    shown = io.StringIO()
    result = collect.run(config, out, in_stream=io.StringIO("a\nt\nq\n"), out_stream=shown)
    assert result == {"complete": False} and not os.path.exists(f"{out}/summary.json")
    rows = prefs.read_preferences(f"{out}/train.jsonl")  # written as it went
    assert len(rows) == 1 and rows[0].meta["pair_id"] == train[0].pair_id
    assert rows[0].annotator == "human"
    assert "What is 3 plus 3?" in shown.getvalue()  # asked, then quit

    shown = io.StringIO()
    summary = collect.run(config, out, in_stream=io.StringIO("b\na\n"), out_stream=shown)
    text = shown.getvalue()
    assert "What is 1 plus 1?" not in text and "What is 2 plus 2?" not in text  # resumed
    assert "What is 4 plus 4?" not in text  # identical replies: a tie without asking
    rows = prefs.read_preferences(f"{out}/train.jsonl")
    assert [r.meta["pair_id"] for r in rows] == [train[0].pair_id, train[2].pair_id]
    first_shown_b = text.split("[B] ", 1)[1].split("\n", 1)[0]  # "b" picked what [B] showed
    assert rows[1].chosen == first_shown_b
    assert summary["train"]["pairs"] == 2 and summary["train"]["ties"] == 2
    assert summary["heldout"]["pairs"] == 1 and summary["annotator"] == "human"
