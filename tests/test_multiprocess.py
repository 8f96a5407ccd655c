"""Two processes × 4 CPU devices (jax.distributed, gloo) against one process × 8 devices: the
same pretraining run, a checkpoint handed between process counts, a dead rank.

Why not bitwise: with 8 devices in one process, XLA:CPU reduces gradients in-process; across
two processes the same all-reduce goes through gloo, which sums in another order. The same
global batches reach the same devices (data/pipeline.py: each process keeps the rows its
devices hold), so the runs differ only by float rounding in the reductions.
"""

import json
import os
import shutil

import numpy as np
import pytest

from configs import common
from configs.ppo import tiny as ppo_tiny
from configs.pretrain import tiny as pretrain_tiny
from configs.reward import tiny as reward_tiny
from configs.sft import tiny as sft_tiny
from tests import multiprocess, smoke
from train import metrics
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params

pytestmark = pytest.mark.xdist_group("multiprocess")
STEPS = 4


def pretrain_config(tokenizer, data_dir, steps):
    c = pretrain_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", vocab_size=384, max_seq_len=64)
    c.data.update(dict(mixture=f"local:{data_dir}/corpus.jsonl=1", tokenizer=tokenizer.path,
                       vocab_size=384, seq_len=64, batch_size=8, val_fraction=0.1))
    c.train.update(dict(steps=steps, eval_every=steps, eval_batches=1, ckpt_every=2,
                        sample_every=0, log_every=1, async_checkpoint=False))
    return c


def train_cmd(cfg_path, workdir):
    return ["scripts.train", f"--config=configs/resolved.py:{cfg_path}", f"--workdir={workdir}"]


def write_config(c, path):
    path.write_text(json.dumps(c.to_dict()))
    return str(path)


def run(cmd, tmp_path, n, name):
    logs = tmp_path / f"logs_{name}"
    logs.mkdir()
    ranks = multiprocess.launch(cmd, n=n, devices=8 // n, log_dir=str(logs), timeout=400)
    for r in ranks:
        assert r.code == 0, f"{name}: a rank exited {r.code}:\n{r.log[-3000:]}"
    return ranks


def losses(workdir):
    return [(r["step"], r["loss"]) for r in metrics.read_metrics(workdir, "train")]


def final_params(config, workdir):
    setup = setup_lib.make_setup(config)  # this test process: 1 process, 8 devices
    shardings, abstract = setup.param_shardings()
    params, _ = load_params(os.path.join(workdir, "ckpt"), abstract_like(abstract, shardings))
    return {k: np.asarray(v) for k, v in _flat(params)}


def _flat(tree, prefix=""):
    for k, v in tree.items():
        yield from (_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else [(prefix + k, v)])


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory):
    """The same 4-step pretraining on 1 process × 8 devices and on 2 processes × 4."""
    tmp = tmp_path_factory.mktemp("mp")
    smoke.make_data(str(tmp))
    config = pretrain_config(tokenizer, tmp, STEPS)
    cfg = write_config(config, tmp / "cfg.json")
    one, two = str(tmp / "one"), str(tmp / "two")
    run(train_cmd(cfg, one), tmp, 1, "one")
    ranks = run(train_cmd(cfg, two), tmp, 2, "two")
    return config, tmp, one, two, ranks


def test_two_processes_train_like_one(runs):
    config, _, one, two, ranks = runs
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([x for _, x in b], [x for _, x in a], rtol=1e-5)
    p1, p2 = final_params(config, one), final_params(config, two)  # 2-process ckpt, 1 process
    assert p1.keys() == p2.keys()
    worst = max(float(np.abs(p1[k] - p2[k]).max()) for k in p1)
    assert worst < 1e-5, worst
    assert "eval" in {r["split"] for r in metrics.read_metrics(two)}


def test_files_are_written_once_by_process_zero(runs):
    _, _, _, two, ranks = runs
    lines = open(os.path.join(two, "metrics.jsonl")).read().splitlines()
    assert len([r for r in map(json.loads, lines) if r["split"] == "train"]) == STEPS
    assert not [f for f in os.listdir(two) if ".tmp" in f]
    assert "summary.json" in os.listdir(two) and "config.json" in os.listdir(two)
    assert "gloo" in ranks[1].log.lower()  # the ranks really talked through gloo


def test_a_checkpoint_moves_between_process_counts_and_resumes_exactly(runs, tokenizer):
    """The step-4 checkpoints continued to step 6: the 1-process one on 1 process (the
    reference) and on 2 processes, the 2-process one on 1 process. (Not against a 6-step run
    from scratch: the learning-rate schedule spans train.steps, so it differs.)"""
    _, tmp, one, two, _ = runs
    cfg6 = write_config(pretrain_config(tokenizer, tmp, 6), tmp / "cfg6.json")
    resumed = {}
    for name, source, n in (("one_one", one, 1), ("one_two", one, 2), ("two_one", two, 1)):
        resumed[name] = str(tmp / name)
        shutil.copytree(source, resumed[name])
        ranks = run(train_cmd(cfg6, resumed[name]), tmp, n, name)
        assert "resumed from" in ranks[0].log and "at step 4" in ranks[0].log
    want = dict(losses(resumed["one_one"]))
    for name in ("one_two", "two_one"):
        got = dict(losses(resumed[name]))
        assert sorted(got) == list(range(1, 7))  # steps 5 and 6 appended after the resume
        np.testing.assert_allclose([got[s] for s in (5, 6)], [want[s] for s in (5, 6)],
                                   rtol=1e-5, err_msg=name)


def test_a_dead_rank_is_an_error_not_a_hang(runs, tokenizer):
    config, tmp, _, _, _ = runs
    cfg = write_config(pretrain_config(tokenizer, tmp, 200), tmp / "cfg200.json")
    logs = tmp / "logs_dead"
    logs.mkdir()
    ranks = multiprocess.launch(train_cmd(cfg, str(tmp / "dead")), n=2, devices=4,
                                log_dir=str(logs), timeout=200, barrier_timeout_s=20,
                                kill_rank=(1, 25.0))
    assert ranks[1].code == -9
    assert ranks[0].code not in (0, None), ranks[0].log[-2000:]  # it stopped by itself ...
    assert "another task died" in ranks[0].log or "heartbeat" in ranks[0].log  # ... and why


def test_sft_with_its_greedy_answers_on_two_processes_equals_one(runs, tokenizer):
    """SFT steps and the evaluation's generation (global arrays gathered to every host)."""
    _, tmp, one, _, _ = runs
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


def test_processes_started_with_different_configs_are_refused(runs):
    _, tmp, _, _, _ = runs
    logs = tmp / "logs_mismatch"
    logs.mkdir()
    ranks = multiprocess.launch(train_cmd(tmp / "cfg.json", str(tmp / "mismatch")), n=2,
                                devices=4, log_dir=str(logs), timeout=120, barrier_timeout_s=15,
                                rank_args={1: ["--config.optim.lr=0.5"]})
    assert ranks[1].code == 2, ranks[1].log[-2000:]
    assert "process 1 was started with another config than process 0" in ranks[1].log
    assert ranks[0].code not in (0, None)  # no training happened on half a cluster
    assert not os.path.exists(tmp / "mismatch" / "ckpt")


def test_an_unreachable_coordinator_is_a_one_line_error_within_the_timeout(tmp_path):
    env = multiprocess.rank_env(2, 1, 4, multiprocess.free_port(), timeout_s=5)
    cmd = [smoke.sys.executable, "-m", "scripts.train", "--config=configs/pretrain/tiny.py",
           f"--workdir={tmp_path}"]
    r = smoke.subprocess.run(cmd, cwd=smoke.ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "jax.distributed could not start (coordinator localhost:" in r.stderr
    assert "process 1 of 2, timeout 5 s" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def reward_runs(runs, tokenizer):
    """A reward model (trunk: the pretraining run) trained on 1 and on 2 processes."""
    _, tmp, one, _, _ = runs
    prompts = [f"What is {i} plus {i}?" for i in range(24)]
    rows = [{"prompt": p, "chosen": f"{2 * i}.", "rejected": f"It is {i}, I think."}
            for i, p in enumerate(prompts)]
    for name, part in (("train", rows[:16]), ("held", rows[16:])):
        (tmp / f"{name}_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    c = reward_tiny.get_config()
    with c.unlocked():
        c.model = common.model_config("test", vocab_size=384, max_seq_len=64)
    c.init_from = one  # a pretraining run: the reward model only needs a trunk
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


def test_ppo_on_two_processes_equals_one(runs, reward_runs, tokenizer):
    """Rollouts, scores, updates, held-out evaluation and best-of-n: replies gathered from
    both processes; the summaries agree to float rounding (KL within 1e-6 nats)."""
    _, tmp, one, _, _ = runs
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
    np.testing.assert_allclose(b["ppo"]["kl"], a["ppo"]["kl"], atol=1e-6)
    for side in ("sft", "ppo"):
        assert {k: v for k, v in a[side].items() if k != "kl"} == \
            {k: v for k, v in b[side].items() if k != "kl"}
    assert a["best_of_n"] == b["best_of_n"]
