"""A real two-trial sweep of the smoke pipeline (configs/sweeps/smoke.py: two PPO KL
coefficients), two trials at once: the trials share every stage before PPO through the stage
cache — each of those ran once, in one trial, while the other waited for it and linked it."""

import json
import os
import sys

import pytest

from tests import smoke

pytestmark = pytest.mark.xdist_group("sweep_pipeline")
SHARED = ("tokenizer", "pretrain", "sft", "collect", "reward")


def test_a_pipeline_sweep_shares_the_stages_its_trials_have_in_common(tmp_path):
    data, work = tmp_path / "data", tmp_path / "sweep"
    data.mkdir()
    smoke.make_data(str(data))
    out = smoke.run([sys.executable, "-m", "scripts.sweep",
                     f"--config=configs/sweeps/smoke.py:{data}", f"--workdir={work}",
                     "--parallel=2"], timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = sorted(os.listdir(work / "trials"))
    assert len(trials) == 2 and trials[0].startswith("coef=0.05-")
    computes = [json.loads((work / "trials" / t / "run" / "compute.json").read_text())
                for t in trials]
    for stage in SHARED:  # ran in one trial, linked from the cache in the other
        assert sorted(c[stage].get("cached", False) for c in computes) == [False, True], stage
        paths = {os.path.realpath(work / "trials" / t / "run" / stage) for t in trials}
        assert len(paths) == 1, (stage, paths)
    assert all(not c["ppo"].get("cached") for c in computes)  # PPO differs: one run each
    entries = sorted(os.listdir(work / "stages"))
    assert [e.split("-")[0] for e in entries if not e.endswith(".lock")] == sorted(
        [*SHARED, "ppo", "ppo"])
    kls = [json.loads((work / "trials" / t / "run" / "ppo" / "summary.json").read_text())
           ["ppo"]["kl"] for t in trials]
    assert kls[0] != kls[1]
    table = (work / "results.md").read_text()
    assert "2 of 2 trials finished" in table and "evaluate.policies.ppo.rm.mean" in table
    # rerunning the sweep does nothing: both trials finished
    again = smoke.run([sys.executable, "-m", "scripts.sweep",
                       f"--config=configs/sweeps/smoke.py:{data}", f"--workdir={work}"])
    assert again.returncode == 0 and "2 finished, 0 to run" in again.stdout
