"""Fault injection on the smoke pipeline, as a user meets faults: kill -9, SIGTERM, a changed
override on a finished folder, bad input. Each test copies the shared finished smoke run
(conftest.smoke_pipeline) and compares against it: an interrupted-then-resumed stage must end
with the same summary as the uninterrupted one."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests import smoke

pytestmark = pytest.mark.xdist_group("smoke")  # shares the smoke run with test_pipeline_e2e


@pytest.fixture
def copy(smoke_pipeline, tmp_path):
    """(a private copy of the finished smoke folder, data dir, the original folder)."""
    work, data, _ = smoke_pipeline
    mine = str(tmp_path / "run")
    shutil.copytree(work, mine, ignore=shutil.ignore_patterns(".lock"))
    return mine, data, work


def _one_line_error(out, *expected):
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    progress = re.compile(r"\d+%\|")  # tqdm's bars, also on stderr
    lines = [line for line in out.stderr.splitlines()
             if line.strip() and not progress.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _tree_bytes(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files if f != ".lock"}


def _forget(work, stage):
    """The folder as if `stage` had never run (its results and fingerprint gone)."""
    shutil.rmtree(os.path.join(work, stage))
    os.remove(os.path.join(work, "fingerprints", f"{stage}.json"))


def _wait_for(path, proc, timeout=300):
    start = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.time() - start < timeout, f"no {path} after {timeout}s"
        time.sleep(0.05)


def _lock_pid(folder):
    with open(os.path.join(folder, ".lock")) as f:
        return int(f.read().split()[-1])


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------ config changes


def test_a_changed_override_reruns_that_stage_and_its_dependants(copy):
    work, data, original = copy
    out = smoke.run(smoke.pipeline_cmd(work, data, "--config.ppo.kl.coef=0.1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "=== ppo: reruns: kl.coef 0.2 → 0.1" in out.stdout, out.stdout[-3000:]
    for stage in ("tokenizer", "pretrain", "sft", "collect", "reward"):
        assert f"=== {stage}: done" in out.stdout, stage
    for stage in ("ppo", "evaluate", "report"):
        assert f"=== {stage}: reruns" in out.stdout, stage
    assert json.load(open(f"{work}/ppo/config.json"))["kl"]["coef"] == 0.1
    assert json.load(open(f"{work}/pipeline_config.json"))["ppo"]["kl"]["coef"] == 0.1
    assert os.path.exists(f"{work}/previous/ppo/summary.json")  # the old result, kept aside
    assert smoke.summary(work, "ppo") != smoke.summary(original, "ppo")
    # --no_rerun refuses a further change in one line and touches nothing.
    before = _tree_bytes(work)
    out = smoke.run(smoke.pipeline_cmd(work, data, "--config.ppo.kl.coef=0.3", "--no_rerun"))
    _one_line_error(out, "--no_rerun", "kl.coef 0.1 → 0.3", "ppo, evaluate, report")
    assert _tree_bytes(work) == before


def test_from_with_a_bad_input_is_refused_before_anything_is_deleted(copy):
    work, data, _ = copy
    before = _tree_bytes(work)
    bad = "--config.sft.data.sft_mixture=tasks=0.5,local:/nonexistent/d.jsonl=0.5"
    out = smoke.run(smoke.pipeline_cmd(work, data, "--from", "sft", bad))
    _one_line_error(out, "sft.data.sft_mixture", "/nonexistent/d.jsonl does not exist")
    assert _tree_bytes(work) == before


def test_a_second_pipeline_on_the_same_folder_is_refused(copy):
    work, data, _ = copy
    from train import cli

    with cli.folder_lock(work, "pipeline"):
        out = smoke.run(smoke.pipeline_cmd(work, data, "--from", "report"))
    _one_line_error(out, f"{work} is in use by pipeline pid {os.getpid()}")
    assert os.path.exists(f"{work}/report.md")


# ------------------------------------------------------------------------------ kill and resume


@pytest.mark.parametrize("stage,first_ckpt,extra", [
    ("pretrain", 5, ()), ("sft", 5, ()), ("reward", 5, ()),
    ("ppo", 1, ("--config.ppo.train.ckpt_every=1",)),
])
def test_kill_9_mid_stage_then_rerun_ends_equal(copy, stage, first_ckpt, extra):
    work, data, original = copy
    _forget(work, stage)
    cmd = smoke.pipeline_cmd(work, data, "--only", stage, *extra)
    proc = subprocess.Popen(cmd, cwd=smoke.ROOT, env=smoke.ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(f"{work}/{stage}/ckpt/{first_ckpt}", proc)
    os.kill(_lock_pid(f"{work}/{stage}"), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "failed (exit -9)" in err, err[-2000:]
    out = smoke.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout
    assert smoke.without_times(smoke.summary(work, stage)) == smoke.without_times(
        smoke.summary(original, stage))


@pytest.mark.parametrize("stage", ["pretrain", "sft", "collect", "reward", "ppo", "evaluate"])
def test_kill_after_the_final_checkpoint_recomputes_an_equal_summary(copy, stage):
    """A kill after a stage's last checkpoint and before its summary.json (written last)
    leaves exactly this folder: the rerun must finish from the checkpoint, not write NaN."""
    work, data, original = copy
    os.remove(f"{work}/{stage}/summary.json")
    out = smoke.run(smoke.pipeline_cmd(work, data, "--only", stage))
    assert out.returncode == 0, out.stderr[-3000:]
    assert smoke.without_times(smoke.summary(work, stage)) == smoke.without_times(
        smoke.summary(original, stage))


def test_sigterm_to_the_pipeline_stops_its_stage_then_resumes_equal(copy):
    work, data, original = copy
    _forget(work, "ppo")
    cmd = smoke.pipeline_cmd(work, data, "--only", "ppo", "--config.ppo.train.ckpt_every=1")
    proc = subprocess.Popen(cmd, cwd=smoke.ROOT, env=smoke.ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(f"{work}/ppo/ckpt/1", proc)
    stage_pid = _lock_pid(f"{work}/ppo")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-2000:])
    assert not _alive(stage_pid)  # no orphan left training
    out = smoke.run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert smoke.without_times(smoke.summary(work, "ppo")) == smoke.without_times(
        smoke.summary(original, "ppo"))


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_stage_ends_equal(copy):
    from tests.test_faults import corrupt

    work, data, original = copy
    os.remove(f"{work}/pretrain/summary.json")
    corrupt(f"{work}/pretrain/ckpt/10", "bitflip")
    out = smoke.run(smoke.pipeline_cmd(work, data, "--only", "pretrain"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint step 10" in out.stdout and "checksum" in out.stdout
    assert os.listdir(f"{work}/pretrain/ckpt_corrupt")[0].startswith("10-")
    assert smoke.without_times(smoke.summary(work, "pretrain")) == smoke.without_times(
        smoke.summary(original, "pretrain"))


# ------------------------------------------------------------------------------ bad input


def _train(*args):
    return smoke.run([sys.executable, "-m", "scripts.train", *args], timeout=300)


def test_a_config_typo_is_one_line_naming_the_key():
    out = _train("--config=configs/pretrain/tiny.py", "--workdir=/tmp/never",
                 "--config.optim.lrr=1")
    _one_line_error(out, "--config.optim.lrr", "'optim.lrr'", "did you mean 'lr'")


@pytest.mark.parametrize("flag,expected", [
    ("--config.optim.lr=abc", "--config.optim.lr=abc: could not convert string to float"),
    ("--config=configs/nowhere.py", "cannot load the experiment file: [Errno 2]"),
    ("--config=SYNTAX", ":1: invalid syntax"),
])
def test_bad_flags_and_experiment_files_are_one_line(tmp_path, flag, expected):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    args = ["--config=configs/pretrain/tiny.py", "--workdir=/tmp/never"]
    if flag.startswith("--config="):  # another experiment file instead of the good one
        args[0] = flag.replace("SYNTAX", str(bad))
    else:
        args.append(flag)
    _one_line_error(_train(*args), expected)


def test_a_missing_local_sft_file_is_one_line_naming_the_key(copy, tmp_path):
    work, _, _ = copy
    out = _train(f"--config=configs/resolved.py:{work}/sft/stage_config.json",
                 f"--workdir={tmp_path}/sft",
                 "--config.data.sft_mixture=tasks=0.5,local:/nonexistent/d.jsonl=0.5")
    _one_line_error(out, "data.sft_mixture", "/nonexistent/d.jsonl")


def test_a_missing_reward_run_is_one_line_and_creates_nothing(copy, tmp_path):
    work, _, _ = copy
    out = _train(f"--config=configs/resolved.py:{work}/ppo/stage_config.json",
                 f"--workdir={tmp_path}/ppo", f"--config.reward_from={tmp_path}/no_rm")
    _one_line_error(out, "reward_from=", "no checkpoint folder")
    assert not os.path.exists(f"{tmp_path}/no_rm")


def test_a_refused_resume_leaves_config_and_run_info_intact(copy):
    work, _, _ = copy
    before = _tree_bytes(f"{work}/pretrain")
    out = _train(f"--config=configs/resolved.py:{work}/pretrain/stage_config.json",
                 f"--workdir={work}/pretrain", "--config.model.d_model=64")
    _one_line_error(out, "different model shape")
    assert _tree_bytes(f"{work}/pretrain") == before


@pytest.mark.parametrize("script", ["train", "pipeline", "estimate", "evaluate", "sample",
                                    "import_hf", "export_hf"])
def test_help_exits_0(script):
    out = smoke.run([sys.executable, "-m", f"scripts.{script}", "--help"], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()


# ------------------------------------------------------------------------ full and read-only disks


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (a disk that can really fill up or be made read-only)."""
    path = str(tmp_path / "disk")
    os.makedirs(path)
    mount = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", path], capture_output=True)
    if not mount or mount.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs (a real full / read-only disk)")
    yield path
    subprocess.run(["umount", "-l", path], check=True)


def _pretrain_resuming_from_step_5(work, disk):
    dst = f"{disk}/pretrain"
    shutil.copytree(f"{work}/pretrain", dst, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(f"{dst}/ckpt/10")
    os.remove(f"{dst}/summary.json")
    return dst, [f"--config=configs/resolved.py:{work}/pretrain/stage_config.json",
                 f"--workdir={dst}"]


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(copy, small_disk):
    work, _, original = copy
    dst, args = _pretrain_resuming_from_step_5(work, small_disk)
    free = os.statvfs(small_disk)
    filler = f"{small_disk}/filler"
    with open(filler, "wb") as f:  # leave 64 KiB: the step-10 checkpoint needs ~550 KiB
        f.write(b"\0" * (free.f_bavail * free.f_frsize - (64 << 10)))
    out = _train(*args)
    _one_line_error(out, "No space left on device", dst)
    os.remove(filler)
    out = _train(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert smoke.without_times(smoke.summary(dst, ".")) == smoke.without_times(
        smoke.summary(original, "pretrain"))


def test_a_read_only_workdir_is_one_line_and_left_untouched(copy, small_disk):
    work, _, _ = copy
    dst, args = _pretrain_resuming_from_step_5(work, small_disk)
    before = _tree_bytes(dst)
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    try:
        out = _train(*args)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", small_disk], check=True)
    _one_line_error(out, "Read-only file system", dst)
    assert _tree_bytes(dst) == before
