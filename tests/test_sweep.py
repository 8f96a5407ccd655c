"""Sweeps: the combinators, trial names and errors, and scripts.sweep on a fake trial function
(run, killed, resumed without redoing finished trials; failures kept; submitit's local
executor). The pipeline sweep sharing its stages is in tests/test_sweep_pipeline.py."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import sweep
from tests import smoke
from train.sweeps import results, trials

FAKE = '''
import json, os, time
import ml_collections
from configs import sweep

METRICS = {"score": "max"}


def get_config(arg=None):
    c = ml_collections.ConfigDict(dict(seed=0, optim=dict(lr=0.1), width=2, fail=-1,
                                       workdir=""))
    c.lock()
    return c


def get_sweep(arg=None):
    return sweep.product(sweep.axis("optim.lr", [0.1, 0.3]), sweep.seeds(2))


def run_trial(config, workdir):
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(workdir))),
                           "calls.txt"), "a") as f:
        f.write(f"{os.path.basename(os.path.dirname(workdir))}\\n")
    if config.optim.lr == config.fail:
        raise RuntimeError("this trial fails on purpose")
    time.sleep(float(os.environ.get("FAKE_TRIAL_SLEEP", "0")))
    return {"score": config.optim.lr * 10 + config.seed, "nested": {"loss": 1 - config.optim.lr}}
'''


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_sweep.py"
    path.write_text(FAKE)
    return str(path)


def run_sweep(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "scripts.sweep", *args], cwd=smoke.ROOT,
                          env=smoke.ENV, capture_output=True, text=True, timeout=timeout)


def calls(workdir):
    path = os.path.join(workdir, "calls.txt")
    return open(path).read().split() if os.path.exists(path) else []


# ------------------------------------------------------------------ combinators and names


def test_combinators_build_the_trial_lists():
    lr, seeds = sweep.axis("optim.lr", [1, 2]), sweep.seeds(2)
    assert sweep.product(lr, seeds) == [{"optim.lr": 1, "seed": 0}, {"optim.lr": 1, "seed": 1},
                                        {"optim.lr": 2, "seed": 0}, {"optim.lr": 2, "seed": 1}]
    assert sweep.zip(lr, sweep.axis("width", [8, 16])) == [{"optim.lr": 1, "width": 8},
                                                           {"optim.lr": 2, "width": 16}]
    assert sweep.chain(lr, sweep.fixed(width=4)) == [{"optim.lr": 1}, {"optim.lr": 2},
                                                     {"width": 4}]
    with pytest.raises(ValueError, match="different lengths"):
        sweep.zip(lr, seeds[:1])
    with pytest.raises(ValueError, match="optim.lr is swept twice"):
        sweep.product(lr, sweep.axis("optim.lr", [3]))
    with pytest.raises(ValueError, match="no values"):
        sweep.axis("x", [])


def test_short_keys_tell_the_swept_keys_apart():
    assert trials.short_keys(["sft.optim.lr", "ppo.optim.lr", "seed", "ppo.kl.coef"]) == {
        "sft.optim.lr": "sft.optim.lr", "ppo.optim.lr": "ppo.optim.lr", "seed": "seed",
        "ppo.kl.coef": "coef"}


def test_trial_names_are_readable_and_follow_the_resolved_config(fake, tmp_path):
    a, b = trials.expand(fake), trials.expand(fake)
    assert [t.name for t in a.trials] == [t.name for t in b.trials]
    assert a.trials[0].name.startswith("lr=0.1-seed=0-") and a.kind == "custom"
    assert len({t.digest for t in a.trials}) == 4
    # the hash follows what is computed: another base value changes every name, a location
    # key (workdir) changes none
    other = tmp_path / "other.py"
    other.write_text(FAKE.replace("width=2", "width=3"))
    assert not {t.name for t in trials.expand(str(other)).trials} & {t.name for t in a.trials}
    moved = tmp_path / "moved.py"
    moved.write_text(FAKE.replace('workdir=""', 'workdir="/elsewhere"'))
    assert [t.name for t in trials.expand(str(moved)).trials] == [t.name for t in a.trials]


@pytest.mark.parametrize("sweep_body, message", [
    ('[{"optim.lrr": 1}]', r"trial 0 \(optim.lrr=1\): the config has no key optim.lrr "
                           r"\(did you mean optim.lr\?\)"),
    ("[]", "get_sweep\\(\\) returned no trials"),
    ('[{"width": 3}, {"width": 3}]', "trials 0 and 1 are the same trial width=3-"),
    ('[{"width": "wide"}]', "trial 0 .*width='wide'"),
])
def test_bad_sweeps_are_refused_with_the_trial_named(tmp_path, sweep_body, message):
    path = tmp_path / "bad.py"
    path.write_text(FAKE.replace(
        'return sweep.product(sweep.axis("optim.lr", [0.1, 0.3]), sweep.seeds(2))',
        f"return {sweep_body}"))
    with pytest.raises((KeyError, ValueError, TypeError), match=message):
        trials.expand(str(path))


def test_dry_run_prints_the_table_and_writes_nothing(fake, tmp_path):
    out = run_sweep(f"--config={fake}", f"--workdir={tmp_path / 'w'}", "--dry_run")
    assert out.returncode == 0, out.stderr
    assert "4 trials (custom): optim.lr, seed" in out.stdout and "lr=0.3-seed=1-" in out.stdout
    assert not (tmp_path / "w").exists()


def test_a_missing_key_is_one_line_naming_it(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(FAKE.replace('sweep.axis("optim.lr"', 'sweep.axis("optim.lrr"'))
    out = run_sweep(f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 2
    assert "the config has no key optim.lrr" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ running


def test_a_killed_sweep_resumes_without_redoing_finished_trials(fake, tmp_path):
    work = str(tmp_path / "w")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.sweep", f"--config={fake}",
                             f"--workdir={work}"], cwd=smoke.ROOT,
                            env=dict(smoke.ENV, FAKE_TRIAL_SLEEP="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while len(calls(work)) < 2 and time.monotonic() < deadline:  # trial 1 done, 2 running
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    first = calls(work)
    done = [r for r in results.collect(trials.expand(fake), work) if r["status"] == "done"]
    assert len(done) == 1 and first[0] == done[0]["trial"]
    # the rest, without the sleep: the finished trial is not run again, the interrupted one is
    out = run_sweep(f"--config={fake}", f"--workdir={work}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 finished, 3 to run" in out.stdout
    names = [t.name for t in trials.expand(fake).trials]
    assert sorted(set(calls(work))) == sorted(names) and calls(work).count(first[0]) == 1


def test_results_are_a_deterministic_table_with_seed_intervals(fake, tmp_path):
    out = run_sweep(f"--config={fake}", f"--workdir={tmp_path / 'a'}")
    assert out.returncode == 0, out.stdout + out.stderr
    table = (tmp_path / "a" / "results.md").read_text()
    (tmp_path / "a" / "results.md").unlink()
    results.write(trials.expand(fake), str(tmp_path / "a"))  # again, from the trial folders
    assert (tmp_path / "a" / "results.md").read_text() == table
    assert "4 of 4 trials finished" in table
    # seeds 0 and 1 of lr=0.3: scores 3 and 4 → mean 3.5 ± t(0.975, 1)·0.7071/√2 = 6.353
    assert "| 0.3 | 2 | 3.5 [-2.853, 9.853] |" in table
    assert "- score (max): lr=0.3-seed=1-" in table
    rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("trial,status,optim.lr,seed,wall_s,score,nested.loss")
    assert len(rows) == 5
    assert (tmp_path / "a" / "plots" / "score_vs_optim.lr.png").exists()


def test_a_failed_trial_is_reported_kept_and_retried_only_when_asked(fake, tmp_path):
    path = tmp_path / "failing.py"
    path.write_text(FAKE.replace("fail=-1", "fail=0.3"))
    work = str(tmp_path / "w")
    out = run_sweep(f"--config={path}", f"--workdir={work}")
    assert out.returncode == 1 and "failed trials" in out.stdout
    failed = [r["trial"] for r in results.collect(trials.expand(str(path)), work)
              if r["status"] == "failed"]
    assert len(failed) == 2
    info = json.loads(open(os.path.join(work, "trials", failed[0], "failed.json")).read())
    assert "this trial fails on purpose" in info["log_tail"]
    assert "this trial fails on purpose" in open(
        os.path.join(work, "trials", failed[0], "log.txt")).read()
    n = len(calls(work))
    out = run_sweep(f"--config={path}", f"--workdir={work}")
    assert "0 to run, 2 failed before" in out.stdout and len(calls(work)) == n
    out = run_sweep(f"--config={path}", f"--workdir={work}", "--retry_failed")
    assert out.returncode == 1 and len(calls(work)) == n + 2


def test_a_trial_folder_holding_another_config_is_refused(fake, tmp_path):
    work = tmp_path / "w"
    sw = trials.expand(fake)
    folder = work / "trials" / sw.trials[0].name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**sw.trials[0].config.to_dict(),
                                                    "width": 99}))
    out = run_sweep(f"--config={fake}", f"--workdir={work}")
    assert out.returncode == 2
    assert f"trial {sw.trials[0].name}" in out.stderr and "width differ" in out.stderr


def test_parallel_trials_get_their_own_cores(fake, tmp_path):
    out = run_sweep(f"--config={fake}", f"--workdir={tmp_path / 'w'}", "--parallel=2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 of 4 trials finished" in (tmp_path / "w" / "results.md").read_text()


def test_the_submitit_backend_runs_through_its_local_executor(fake, tmp_path):
    work = tmp_path / "w"
    out = run_sweep(f"--config={fake}", f"--workdir={work}", "--backend=submitit",
                    "--cluster=local", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("(job ") == 4
    assert "4 of 4 trials finished" in (work / "results.md").read_text()
    assert (work / "submitit").is_dir()


def test_t_interval_matches_the_textbook():
    mean, lo, hi = results.t_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert mean == 2.0 and abs((hi - mean) - 4.3027 / 3 ** 0.5) < 1e-3 and lo < mean


@pytest.mark.parametrize("path", sorted(
    os.path.relpath(p, smoke.ROOT) for p in glob.glob(f"{smoke.ROOT}/configs/sweeps/*.py")
    if not p.endswith("__init__.py")))
def test_every_shipped_sweep_expands(path):
    """Every key they sweep exists in their base config, and the names are unique."""
    expanded = trials.expand(os.path.join(smoke.ROOT, path))
    assert expanded.kind == "pipeline" and len(expanded.trials) >= 2


def test_a_stage_sweep_runs_scripts_train_in_each_trial_folder(tmp_path):
    path = tmp_path / "stage_sweep.py"
    path.write_text("from configs import sweep\nfrom configs.pretrain import tiny\n"
                    "def get_config(arg=None):\n    return tiny.get_config()\n"
                    "def get_sweep(arg=None):\n    return sweep.axis('optim.lr', [1e-3, 3e-3])\n")
    expanded = trials.expand(str(path))
    assert expanded.kind == "stage"
    from train.sweeps import runner

    cmd = runner.prepare(expanded, expanded.trials[1], str(tmp_path / "w"))
    folder = tmp_path / "w" / "trials" / expanded.trials[1].name
    assert cmd[1:] == ["-m", "scripts.train",
                       f"--config=configs/resolved.py:{folder}/config.json",
                       f"--workdir={folder}/run"]
    assert json.loads((folder / "config.json").read_text())["optim"]["lr"] == 3e-3
