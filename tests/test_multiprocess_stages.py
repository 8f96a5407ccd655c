"""SFT (with its greedy answers), the reward model and PPO on 2 processes × 4 CPU devices
against 1 process × 8 (tests/multiprocess.py). A random LM checkpoint written here is the
starting point, so this module needs no pretraining run (and runs beside
tests/test_multiprocess.py on another xdist worker)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import common
from configs.ppo import tiny as ppo_tiny
from configs.reward import tiny as reward_tiny
from configs.sft import tiny as sft_tiny
from tests import smoke
from tests.multiprocess import losses, run, train_cmd, write_config
from tests.test_collect import make_sft_checkpoint

pytestmark = pytest.mark.xdist_group("multiprocess_stages")
MODEL = dict(vocab_size=384, max_seq_len=64)


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    """(folder, LM run folder): smoke data and a random LM checkpoint, as a pretraining run."""
    tmp = tmp_path_factory.mktemp("mp_stages")
    smoke.make_data(str(tmp))
    c = sft_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", **MODEL)
    c.init_from = str(tmp / "lm")
    make_sft_checkpoint(c)
    return tmp, c.init_from


def test_sft_with_its_greedy_answers_on_two_processes_equals_one(base, tokenizer):
    """SFT steps and the evaluation's generation (global arrays gathered to every host)."""
    tmp, one = base
    c = sft_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", vocab_size=384, max_seq_len=64)
    c.init_from = one
    c.data.update(dict(tokenizer=tokenizer.path, seq_len=64, batch_size=8, n_tasks=64,
                       n_val_tasks=8, task_word_sources="",
                       sft_mixture=f"tasks=0.8,local:{tmp}/dialogues.jsonl=0.2"))
    c.train.update(dict(steps=2, eval_every=2, eval_batches=1, ckpt_every=2, sample_every=2,
                        log_every=1, async_checkpoint=False))
    c.eval.update(dict(n_prompts=8, max_new_tokens=8, batch_size=8, n_side_by_side=2))
    cfg = write_config(c, tmp / "sft.json")
    folders = {n: str(tmp / f"sft{n}") for n in (1, 2)}
    for n, folder in folders.items():
        run(train_cmd(cfg, folder), tmp, n, f"sft{n}")
    a, b = (smoke.summary(folders[n], ".") for n in (1, 2))
    np.testing.assert_allclose([x for _, x in losses(folders[2])],
                               [x for _, x in losses(folders[1])], rtol=1e-5)
    assert smoke.without_times(a)["sft_gold"] == smoke.without_times(b)["sft_gold"]
    answers = [open(os.path.join(f, "answers.md")).read() for f in folders.values()]
    assert answers[0] == answers[1]


@pytest.fixture(scope="module")
def reward_runs(base, tokenizer):
    """A reward model (trunk: the LM checkpoint) trained on 1 and on 2 processes."""
    tmp, one = base
    prompts = [f"What is {i} plus {i}?" for i in range(24)]
    rows = [{"prompt": p, "chosen": f"{2 * i}.", "rejected": f"It is {i}, I think."}
            for i, p in enumerate(prompts)]
    for name, part in (("train", rows[:16]), ("held", rows[16:])):
        (tmp / f"{name}_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    c = reward_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", vocab_size=384, max_seq_len=64)
    c.init_from = one  # an LM run: the reward model only needs a trunk
    c.data.update(dict(tokenizer=tokenizer.path, seq_len=64, batch_size=8,
                       preferences=str(tmp / "train_pairs.jsonl"),
                       heldout=str(tmp / "held_pairs.jsonl")))
    c.train.update(dict(steps=3, eval_every=3, ckpt_every=3, log_every=1,
                        async_checkpoint=False))
    c.normalise.max_samples = 16
    cfg = write_config(c, tmp / "rm.json")
    folders = {n: str(tmp / f"rm{n}") for n in (1, 2)}
    for n, folder in folders.items():
        run(train_cmd(cfg, folder), tmp, n, f"rm{n}")
    return folders


def test_reward_model_on_two_processes_equals_one(reward_runs):
    """Bradley-Terry steps, held-out accuracy and the normalisation fit on 2 processes."""
    a, b = (smoke.without_times(smoke.summary(reward_runs[n], ".")) for n in (1, 2))
    np.testing.assert_allclose([x for _, x in losses(reward_runs[2])],
                               [x for _, x in losses(reward_runs[1])], rtol=1e-5)
    assert a["heldout_accuracy"] == b["heldout_accuracy"]
    np.testing.assert_allclose(b["heldout_loss"], a["heldout_loss"], rtol=1e-5)


def test_ppo_on_two_processes_equals_one(base, reward_runs, tokenizer):
    """Rollouts, scores, updates, held-out evaluation and best-of-n: replies gathered from
    both processes; the summaries agree to float rounding (KL within rtol 1e-5)."""
    tmp, one = base
    c = ppo_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", vocab_size=384, max_seq_len=64)
    c.data.tokenizer, c.sft_from, c.reward_from = tokenizer.path, one, reward_runs[1]
    c.prompts.n_prompts = 32
    c.rollout.batch_size, c.rollout.max_new_tokens = 8, 8
    c.ppo.iterations, c.ppo.epochs, c.ppo.minibatches, c.ppo.eos_trick = 2, 1, 1, False
    c.optim.warmup_steps, c.optim.lr = 0, 3e-3  # move the policy within two iterations
    c.eval.update(dict(every=2, n_prompts=8))
    c.best_of_n.update(dict(ns="1,2", n_prompts=4))
    c.train.async_checkpoint = False
    cfg = write_config(c, tmp / "ppo.json")
    folders = {n: str(tmp / f"ppo{n}") for n in (1, 2)}
    for n, folder in folders.items():
        run(train_cmd(cfg, folder), tmp, n, f"ppo{n}")
    a, b = (smoke.without_times(smoke.summary(folders[n], ".")) for n in (1, 2))
    assert a["ppo"]["kl"] > 0.1  # the policy moved: the comparison is not of two copies
    np.testing.assert_allclose(b["ppo"]["kl"], a["ppo"]["kl"], rtol=1e-5)
    for side in ("sft", "ppo"):
        assert {k: v for k, v in a[side].items() if k != "kl"} == \
            {k: v for k, v in b[side].items() if k != "kl"}
    assert a["best_of_n"] == b["best_of_n"]


def test_sample_and_score_scripts_on_two_processes_equal_one(base, reward_runs, tmp_path,
                                                             tokenizer):
    """scripts.sample (the LM run) and scripts.score (the reward model): both processes hold
    every row, process 0 writes the file, and it equals the 1-process file byte for byte."""
    one = str(tmp_path / "lm")
    shutil.copytree(base[1], one)  # the LM checkpoint as a run folder (with its config.json)
    c = sft_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", **MODEL)
    c.data.tokenizer = tokenizer.path
    write_config(c, tmp_path / "lm" / "config.json")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} plus 2?", "id": i}) + "\n"
                               for i in range(12)))
    out = {}
    for n in (1, 2):
        sampled, scored = tmp_path / f"sampled{n}.jsonl", tmp_path / f"scored{n}.jsonl"
        ranks = run(["scripts.sample", f"--workdir={one}", f"--prompts={prompts}",
                     f"--out={sampled}", "--max_new_tokens=8", "--batch_size=8"],
                    tmp_path, n, f"sample{n}")
        ranks += run(["scripts.score", f"--run={reward_runs[1]}", f"--input={sampled}",
                      f"--output={scored}", "--batch_size=8"], tmp_path, n, f"score{n}")
        assert n == 1 or all("process 1 of 2" in r.log for r in ranks[1::2]), ranks[1].log
        out[n] = sampled.read_text(), scored.read_text()
    assert len(out[1][1].splitlines()) == 12
    assert out[1] == out[2]


def test_hf_import_and_export_on_two_processes_equal_one(tmp_path):
    """scripts.import_hf then scripts.export_hf on 2 processes: the same checkpoint as on one
    (params bit for bit) and the same Hugging Face files, byte for byte, written once."""
    from safetensors.numpy import load_file

    from tests.test_hf import make_hf
    from train import hf_interop

    hf = tmp_path / "hf"
    make_hf(str(hf))
    params, files = {}, {}
    for n in (1, 2):
        imported, exported = tmp_path / f"imported{n}", tmp_path / f"exported{n}"
        run(["scripts.import_hf", f"--hf_dir={hf}", f"--workdir={imported}",
             "--max_seq_len=64"], tmp_path, n, f"import{n}")
        run(["scripts.export_hf", f"--workdir={imported}", f"--out={exported}"],
            tmp_path, n, f"export{n}")
        params[n] = hf_interop.read_run(str(imported))[2]
        files[n] = {p.name: p.read_bytes() for p in sorted(exported.iterdir())}
    for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[2]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert files[1] == files[2] and "config.json" in files[1]
    original = {k: v for p in hf.glob("*.safetensors") for k, v in load_file(str(p)).items()}
    exported = {k: v for p in (tmp_path / "exported2").glob("*.safetensors")
                for k, v in load_file(str(p)).items()}
    assert exported.keys() == original.keys()
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
