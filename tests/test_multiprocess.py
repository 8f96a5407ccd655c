"""Two processes × 4 CPU devices (jax.distributed, gloo) against one process × 8 devices: the
same pretraining run, a checkpoint handed between process counts, a dead rank, the start-up
errors. (SFT, reward model and PPO: tests/test_multiprocess_stages.py.)

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
from configs.pretrain import tiny as pretrain_tiny
from tests import multiprocess, smoke
from tests.multiprocess import losses, run, train_cmd, write_config
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
    """The 1-process step-4 checkpoint continued to step 6 on 2 processes equals its 1-process
    continuation. (Not against a 6-step run from scratch: the learning-rate schedule spans
    train.steps. The other direction, a 2-process checkpoint read by 1 process, is
    test_two_processes_train_like_one's final_params.)"""
    _, tmp, one, _, _ = runs
    cfg6 = write_config(pretrain_config(tokenizer, tmp, 6), tmp / "cfg6.json")
    resumed = {}
    for name, n in (("one_one", 1), ("one_two", 2)):
        resumed[name] = str(tmp / name)
        shutil.copytree(one, resumed[name])
        ranks = run(train_cmd(cfg6, resumed[name]), tmp, n, name)
        assert "resumed from" in ranks[0].log and "at step 4" in ranks[0].log
    want, got = dict(losses(resumed["one_one"])), dict(losses(resumed["one_two"]))
    assert sorted(got) == list(range(1, 7))  # steps 5 and 6 appended after the resume
    np.testing.assert_allclose([got[s] for s in (5, 6)], [want[s] for s in (5, 6)], rtol=1e-5)


def test_a_dead_rank_is_an_error_not_a_hang_and_the_rerun_resumes_exactly(runs, tokenizer):
    """Rank 1 is killed once the step-4 checkpoint exists: rank 0 stops by itself with a
    reason; the same command then resumes from the checkpoint and every loss equals an
    uninterrupted run's (1 process × 8 devices)."""
    config, tmp, _, _, _ = runs
    steps = 24  # long enough that the kill lands mid-run (checkpoints every 2 steps)
    cfg = write_config(pretrain_config(tokenizer, tmp, steps), tmp / "cfg_dead.json")
    dead, whole = str(tmp / "dead"), str(tmp / "whole")
    logs = tmp / "logs_dead"
    logs.mkdir()
    ranks = multiprocess.launch(train_cmd(cfg, dead), n=2, devices=4, log_dir=str(logs),
                                timeout=200, barrier_timeout_s=20,
                                kill_rank=(1, lambda: os.path.isdir(f"{dead}/ckpt/4")))
    assert ranks[1].code == -9
    assert ranks[0].code not in (0, None), ranks[0].log[-2000:]  # it stopped by itself ...
    assert "another task died" in ranks[0].log or "heartbeat" in ranks[0].log  # ... and why
    rerun = run(train_cmd(cfg, dead), tmp, 2, "dead_rerun")
    assert "resumed from" in rerun[0].log, rerun[0].log[-2000:]
    run(train_cmd(cfg, whole), tmp, 1, "whole")
    got, want = dict(losses(dead)), dict(losses(whole))
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-5)
    a, b = final_params(config, dead), final_params(config, whole)
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


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
