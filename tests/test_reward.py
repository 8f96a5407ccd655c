"""Reward model: the Bradley-Terry loss, reading the reward at the last response token under
left and right padding, one combined forward pass, normalisation, and the whole stage
(training raises held-out accuracy; the checkpoint's gain/bias are applied when scoring)."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import preferences as prefs
from data import tasks
from model import sampler
from model.config import ModelConfig
from model.transformer import Transformer
from scripts import score as score_script
from tests.test_collect import make_sft_checkpoint, tiny_config
from train import reward, reward_data
from train import setup as setup_lib


@pytest.fixture(scope="module")
def rm():
    """(model, params, jitted score_sequences) of the test model with a scalar head."""
    from configs import common

    model = Transformer(
        ModelConfig.from_config(common.model_config("test", vocab_size=384)), head="scalar"
    )
    ones = jnp.ones((1, 8), jnp.int32)
    params = jax.tree.map(lambda x: x, model.init(jax.random.key(0), ones, ones, ones)["params"])
    params = jax.tree.map(
        lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value")
    )
    # a larger head, so rewards differ clearly between conversations
    params["score"]["kernel"] = params["score"]["kernel"] * 10
    return model, params, jax.jit(functools.partial(reward_data.score_sequences, model))


def conversations(tok, n=3):
    out = []
    for t in tasks.make_tasks(tasks.FAMILIES, n, seed=0):
        ids, _ = reward_data.render_reply(
            tok, tasks.prompt_messages(t), t.answer[: 5 + 7 * len(out)]
        )
        out.append(ids)
    return out


def test_bradley_terry_loss_is_the_formula():
    r = jnp.array([0.3, -1.0, 2.0])
    loss, sums = reward.bradley_terry(r, r, jnp.ones(3))
    assert float(loss) == pytest.approx(3 * math.log(2), rel=1e-6)  # equal rewards: log 2
    assert float(sums["accuracy"]) == 1.5 and float(sums["weight"]) == 3
    rc, rr, m = np.array([1.0, 0.5, -2.0]), np.array([0.0, 1.5, -2.5]), 0.25
    loss, sums = reward.bradley_terry(jnp.array(rc), jnp.array(rr), jnp.array([1, 1, 0]), m)
    want = sum(math.log1p(math.exp(-(c - r - m))) for c, r in zip(rc[:2], rr[:2]))
    assert float(loss) == pytest.approx(want, rel=1e-6)  # the padding pair counts nothing
    assert float(sums["accuracy"]) == 1 and float(sums["margin"]) == pytest.approx(0.0)
    assert float(sums["weight"]) == 2


def test_heldout_metrics_against_labels_and_gold():
    r_c, r_r = [2.0, 0.0, 1.0, 3.0], [1.0, 1.0, 1.0, 0.0]  # label hits: 1, 0, ½, 1
    gold_c, gold_r = [1.0, 0.25, 0.5, 0.25], [0.0, 0.5, 0.5, 0.375]  # gold: c, r, tie, r
    m = reward.pair_metrics(r_c, r_r, gold_c, gold_r)
    assert m["accuracy"] == pytest.approx(2.5 / 4)
    assert m["gold_pairs"] == 3 and m["accuracy_gold"] == pytest.approx(2 / 3)
    assert m["clear_pairs"] == 2 and m["accuracy_gold_clear"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(np.mean(np.logaddexp(0, -(np.subtract(r_c, r_r)))))


def test_last_index_under_left_and_right_padding():
    segs = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]])
    assert reward_data.compute_last_index(jnp.asarray(segs)).tolist() == [2, 4, 4, 3]


def test_reward_is_the_same_left_or_right_padded(tokenizer, rm):
    model, params, score = rm
    seqs = conversations(tokenizer)
    right = reward_data.right_pad(seqs, tokenizer.pad_id, 64)
    left = dict(zip(reward_data.KEYS, sampler.left_pad(seqs, tokenizer.pad_id, 64)))
    r_right, r_left = score(params, right), score(params, left)
    np.testing.assert_allclose(r_right, r_left, atol=1e-5)
    assert np.ptp(np.asarray(r_right)) > 1e-3  # different conversations, different rewards
    end = tokenizer.special_id("<|end|>")
    for rows in (right, left):  # read at the <|end|> closing the reply
        last = reward_data.compute_last_index(jnp.asarray(rows["segment_ids"]))
        assert (rows["tokens"][np.arange(len(seqs)), np.asarray(last)] == end).all()
    # an unterminated reply is read at its own last token
    cut, _ = reward_data.render_reply(tokenizer, [{"role": "user", "content": "Hi"}], "Hel", False)
    assert cut[-1] != end and cut[-len(tokenizer.encode("Hel")) :] == tokenizer.encode("Hel")


def test_one_combined_forward_equals_two_separate(tokenizer, rm):
    model, params, score = rm
    seqs = conversations(tokenizer, 4)
    chosen = reward_data.right_pad(seqs[:2], tokenizer.pad_id, 64)
    rejected = reward_data.right_pad(seqs[2:], tokenizer.pad_id, 64)
    batch = {
        f"{side}_{k}": v
        for side, rows in (("chosen", chosen), ("rejected", rejected))
        for k, v in rows.items()
    }
    loss, sums = jax.jit(reward.make_reward_loss(model, 0.1))(params, batch, jax.random.key(0))
    r_c, r_r = np.asarray(score(params, chosen)), np.asarray(score(params, rejected))
    want, want_sums = reward.bradley_terry(r_c, r_r, jnp.ones(2), 0.1)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(sums["margin"]) == pytest.approx(float(want_sums["margin"]), rel=1e-5, abs=1e-6)


def test_normalisation_gives_mean_zero_std_one_on_its_sample():
    raw = np.random.default_rng(0).normal(3.0, 0.2, 500)
    norm = reward.fit_normalisation(raw)
    assert np.mean(norm(raw)) == pytest.approx(0.0, abs=1e-9)
    assert np.std(norm(raw)) == pytest.approx(1.0, rel=1e-9)
    assert reward.fit_normalisation(raw, 1.0, 2.0)(raw).std() == pytest.approx(2.0)


def test_trunk_comes_from_sft_and_the_head_is_fresh():
    sft = {"embed_tokens": 1, "layers": 2, "norm": 3, "lm_head": 4}
    fresh = {"embed_tokens": 0, "layers": 0, "norm": 0, "score": 5}
    assert reward.init_from_sft(sft, fresh) == {
        "embed_tokens": 1,
        "layers": 2,
        "norm": 3,
        "score": 5,
    }
    with pytest.raises(ValueError, match="layers"):
        reward.init_from_sft({"embed_tokens": 1}, fresh)


def test_pair_iterator_resumes_exactly_and_covers_each_epoch():
    from model import sharding

    mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
    ids = np.arange(20, dtype=np.int32)[:, None] + np.zeros((1, 4), np.int32)
    arrays = {f"{side}_{k}": ids for side in ("chosen", "rejected") for k in reward_data.KEYS}
    it = reward_data.PairIterator(arrays, 8, mesh, seed=3)
    first = [np.asarray(next(it)["chosen_tokens"])[:, 0] for _ in range(5)]  # 40 rows, 2 epochs
    assert sorted(np.concatenate(first)[:16].tolist()) != list(range(16))  # shuffled
    assert sorted(np.concatenate(first)[:20].tolist()) == list(range(20))  # each pair once
    it = reward_data.PairIterator(arrays, 8, mesh, seed=3)
    for _ in range(3):
        next(it)
    again = reward_data.PairIterator(arrays, 8, mesh, seed=3)
    again.set_state(json.loads(json.dumps(it.get_state())))
    for want in first[3:]:
        np.testing.assert_array_equal(np.asarray(next(again)["chosen_tokens"])[:, 0], want)


def easy_pairs(path, n, seed, split):
    """Chosen replies always end with 'yes!', rejected ones with 'no.' (gold 1 vs 0)."""
    with open(path, "w") as f:
        for i, t in enumerate(tasks.make_tasks(tasks.FAMILIES, n, seed=seed, split=split)):
            word = tasks.FALLBACK_WORDS[i % len(tasks.FALLBACK_WORDS)]
            row = {
                "prompt": tasks.prompt_messages(t),
                "chosen": f"{word} yes!",
                "rejected": f"{word} no.",
                "annotator": "test",
                "meta": {"gold_chosen": 1.0, "gold_rejected": 0.0},
            }
            f.write(json.dumps(row) + "\n")


def test_reward_stage_learns_and_normalises(tokenizer, tmp_path):
    config = tiny_config(tokenizer, tmp_path)
    make_sft_checkpoint(config)
    os.makedirs(config.collect.out)
    easy_pairs(f"{config.collect.out}/train.jsonl", 64, 0, "train")
    easy_pairs(f"{config.collect.out}/heldout.jsonl", 32, 1, "heldout")
    config.train.update(dict(steps=30, eval_every=30, ckpt_every=30, async_checkpoint=False))
    config.optim.update(dict(lr=3e-3, warmup_steps=3))
    workdir = str(tmp_path / "rm")
    result = reward.run(config, workdir)
    with open(f"{workdir}/summary.json") as f:
        summary = json.load(f)
    assert summary["heldout_accuracy"] >= 0.9 > summary["init_heldout_accuracy"]
    assert summary["heldout_accuracy_gold"] == summary["heldout_accuracy"]
    assert summary["train_pairs"] == 64 and summary["heldout_pairs"] == 32
    assert result.extras["reward_gain"] == summary["reward_gain"]

    setup = setup_lib.make_setup(config)
    params, norm = reward.load_reward_model(workdir, setup)
    assert (norm.gain, norm.bias) == (summary["reward_gain"], summary["reward_bias"])
    pairs = prefs.read_preferences(f"{config.collect.out}/train.jsonl")
    seqs = reward.normalisation_sample(tokenizer, pairs, 1024, config.seed)
    assert len(seqs) == 128  # every distinct reply of the 64 pairs
    scores = np.asarray(
        reward.make_reward_fn(setup, params, norm)(
            reward_data.right_pad(seqs, tokenizer.pad_id, 64)
        )
    )
    assert np.mean(scores) == pytest.approx(0.0, abs=1e-4)  # gain and bias were applied:
    assert np.std(scores) == pytest.approx(1.0, abs=1e-4)  # the raw scores are far from it
    assert abs(summary["reward_raw_mean"]) > 0.1 or abs(summary["reward_raw_std"] - 1) > 0.1
    raw = (scores - norm.bias) / norm.gain  # the same raw scores as when gain/bias were fitted
    assert raw.mean() == pytest.approx(summary["reward_raw_mean"], abs=1e-3)

    # scripts/score.py: normalised rewards per row; a malformed row is named by file:line
    src, dst = tmp_path / "convs.jsonl", tmp_path / "scored.jsonl"
    p = pairs[0]
    src.write_text(
        json.dumps({"messages": p.prompt + [{"role": "assistant", "content": p.chosen}]})
        + "\n"
        + json.dumps({"prompt": p.prompt[0]["content"], "response": p.rejected})
        + "\n"
        + '{"prompt": 3}\n'
    )
    with pytest.warns(UserWarning, match="convs.jsonl:3"):
        rewards = score_script.score_file(workdir, str(src), str(dst), max_bad_fraction=0.5)
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["reward"] for r in rows] == rewards and rewards[0] > rewards[1]
