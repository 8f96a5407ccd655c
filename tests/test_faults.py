"""Fault injection, in process: NaN states, corrupt checkpoints, full disks, refused resumes.

The stage- and pipeline-level faults (kill -9, SIGTERM, changed overrides) are in
test_pipeline_faults.py; these reuse the small fit() set-up of test_train.py.
"""

import errno
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from train import checkpoint, cli, metrics
from train.checkpoint import CorruptCheckpoint
from train.loop import Hooks, NonFiniteLoss, fit

from .test_train import ONE, B, Batches, L, _trainer


def _fit(workdir, steps=6, step_fn=None, ckpt_every=2, run_config=None):
    state, state_sh, step = _trainer(ONE, steps=steps)
    cfg = common.train_config(steps=steps, ckpt_every=ckpt_every, log_every=1, eval_every=100,
                              async_checkpoint=False)
    return fit(workdir=workdir, cfg=cfg, state=state, state_sh=state_sh,
               step_fn=step_fn or step, data_iter=Batches(), hooks=Hooks(tokens_per_step=B * L),
               run_config=run_config)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 4 and 6 kept) to copy and damage."""
    folder = str(tmp_path_factory.mktemp("full") / "run")
    result = _fit(folder)
    return folder, jax.device_get(result.state.params)


def _poisoned_at(n):
    """A step function whose update makes the params NaN at step n while every loss it
    reports is finite (a loss is computed before its step's update, so it cannot tell)."""
    _, _, step = _trainer(ONE, steps=6)

    def poisoned(s, batch):
        s, m = step(s, batch)
        bad = s.step >= n
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), s.params)
        return s.replace(params=params), {**m, "loss": jnp.where(bad, 1.0, m["loss"])}

    return poisoned


def test_nan_params_after_a_finite_loss_are_never_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"NaN/Inf after step 3 .*last good checkpoint "
                                            r"\(step 2\)"):
        _fit(str(tmp_path), step_fn=_poisoned_at(3), ckpt_every=1)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]  # step 2 was not rotated out
    _, abstract = _params_abstract(str(tmp_path))
    params, _ = checkpoint.load_params(str(tmp_path / "ckpt"), abstract)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_nan_before_the_first_checkpoint_says_none_was_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match="no checkpoint was saved yet"):
        _fit(str(tmp_path), step_fn=_poisoned_at(1), ckpt_every=4)


def _params_abstract(folder):
    state, state_sh, _ = _trainer(ONE, steps=6)
    return state, checkpoint.abstract_like(state.params, state_sh.params)


def _biggest_array_file(step_dir):
    files = [p for p in glob.glob(f"{step_dir}/state/**", recursive=True) if os.path.isfile(p)
             and "/d/" in p]
    return max(files, key=os.path.getsize)


def corrupt(step_dir, how):
    if how == "truncate":
        path = _biggest_array_file(step_dir)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "bitflip":
        path = _biggest_array_file(step_dir)
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x04
        open(path, "wb").write(bytes(data))
    elif how == "metadata":
        os.remove(f"{step_dir}/state/_METADATA")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", "bitflip", "metadata"])
def test_corrupt_newest_checkpoint_falls_back_and_finishes_equal(full_run, tmp_path, how):
    folder, want = full_run
    run = str(tmp_path / "run")
    shutil.copytree(folder, run)
    corrupt(f"{run}/ckpt/6", how)
    result = _fit(run)
    assert result.step == 6
    assert checkpoint.tree_equal(jax.device_get(result.state.params), want)
    aside = os.listdir(f"{run}/ckpt_corrupt")
    assert len(aside) == 1 and aside[0].startswith("6-")  # moved aside, not deleted
    assert sorted(os.listdir(f"{run}/ckpt")) == ["4", "6"]  # step 6 saved again


def test_no_restorable_checkpoint_is_one_clear_error_and_moves_nothing(full_run, tmp_path):
    folder, _ = full_run
    run = str(tmp_path / "run")
    shutil.copytree(folder, run)
    corrupt(f"{run}/ckpt/6", "bitflip")
    corrupt(f"{run}/ckpt/4", "truncate")
    with pytest.raises(CorruptCheckpoint, match=r"no checkpoint .* restores .*step 6.*step 4"):
        _fit(run)
    assert sorted(os.listdir(f"{run}/ckpt")) == ["4", "6"]
    assert not os.path.exists(f"{run}/ckpt_corrupt")


def test_a_bitflipped_input_checkpoint_is_an_error_not_a_silent_load(full_run, tmp_path):
    _, params = full_run
    state, abstract = _params_abstract(str(tmp_path))
    ckpt = checkpoint.Checkpoints(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(6, {"params": state.params})  # params only: the flipped bit lands in them
    ckpt.close()
    corrupt(f"{tmp_path}/ckpt/6", "bitflip")
    with pytest.raises(CorruptCheckpoint, match="step 6 .*checksum"):
        checkpoint.load_params(f"{tmp_path}/ckpt", abstract)


def test_missing_checkpoint_folder_is_not_created(tmp_path):
    _, abstract = _params_abstract(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        checkpoint.load_params(str(tmp_path / "nowhere" / "ckpt"), abstract)
    assert not os.path.exists(tmp_path / "nowhere")


def test_checksum_sees_one_flipped_bit_in_any_dtype():
    key = jax.random.key(0)
    tree = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
            "b": jnp.ones((5,), jnp.bfloat16), "i": jnp.arange(3, dtype=jnp.int32), "k": key}
    finite, sums = checkpoint.integrity(tree)
    assert finite
    for name, flip in (("w", lambda x: x.at[2, 1].set(jnp.nextafter(x[2, 1], 99.0))),
                       ("b", lambda x: x.at[4].set(jnp.bfloat16(1.0078125))),
                       ("i", lambda x: x.at[0].set(1 << 20))):
        changed = dict(tree, **{name: flip(tree[name])})
        assert checkpoint.integrity(changed)[1]["state"] != sums["state"], name
    swapped = dict(tree, i=tree["i"][::-1])  # the same values in another order
    assert checkpoint.integrity(swapped)[1]["state"] != sums["state"]
    assert not checkpoint.integrity(dict(tree, w=tree["w"].at[0, 0].set(jnp.inf)))[0]


def test_a_refused_resume_leaves_the_run_folder_as_it_was(full_run, tmp_path):
    folder, _ = full_run
    run = str(tmp_path / "run")
    shutil.copytree(folder, run)
    metrics.write_run_info(run, {"model": {"d_ff": 64}})
    before = {p: open(p, "rb").read() for p in glob.glob(f"{run}/**", recursive=True)
              if os.path.isfile(p)}
    wider = common.model_config("test", d_ff=96)
    from model.config import ModelConfig

    state, state_sh, step = _trainer(ONE, steps=6, cfg=ModelConfig.from_config(wider))
    with pytest.raises(ValueError, match="different model shape"):
        fit(workdir=run, cfg=common.train_config(steps=8), state=state, state_sh=state_sh,
            step_fn=step, data_iter=Batches(), hooks=Hooks(), run_config={"model": {"d_ff": 96}})
    after = {p: open(p, "rb").read() for p in glob.glob(f"{run}/**", recursive=True)
             if os.path.isfile(p)}
    assert after == before
    assert json.load(open(f"{run}/config.json"))["model"]["d_ff"] == 64


def test_a_full_disk_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "summary.json")
    metrics.write_json(path, {"val_loss": 1.5})
    real_replace = os.replace

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as err:
        metrics.write_json(path, {"val_loss": 9.9})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.load(open(path)) == {"val_loss": 1.5}
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind
    assert cli.one_line_error(err.value) == f"No space left on device: {path}"


def test_read_only_and_permission_errors_are_one_line(tmp_path):
    for code in (errno.EROFS, errno.EACCES):
        e = OSError(code, os.strerror(code), str(tmp_path / "metrics.jsonl"))
        assert cli.one_line_error(e) == f"{os.strerror(code)}: {tmp_path}/metrics.jsonl"


def test_only_deliberate_errors_lose_their_traceback():
    from data import corpus

    def ours():  # an explicit raise in jaxchat's code, with its message
        corpus.validate_mixture([])

    def bug():
        return {}["missing"]

    for fn, want in ((ours, "mixture is empty: name at least one source"), (bug, None)):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            assert cli.one_line_error(e) == want
    try:
        np.zeros(3).reshape(2, 2)  # an error raised inside numpy: a bug, keeps its traceback
    except ValueError as e:
        assert cli.one_line_error(e) is None


def test_a_second_process_on_one_folder_is_refused(tmp_path):
    busy = pytest.raises(cli.FolderBusy, match=f"in use by training run pid {os.getpid()}")
    with cli.folder_lock(str(tmp_path), "training run"), busy, \
            cli.folder_lock(str(tmp_path), "training run"):
        pass
    with cli.folder_lock(str(tmp_path), "training run"):  # released with its holder
        pass
