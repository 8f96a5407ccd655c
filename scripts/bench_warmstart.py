"""Cold against warm start of every pipeline stage: the tiny pipeline, cut to a few steps per
stage, run once with empty compilation and corpus caches and then again, in a new run folder,
with the caches the first run filled. Prints, per stage, the seconds from the stage's launch to
its first step's result (compute.json `first_step_s`), its compile time and wall time, then
the start-up costs no cache removes, measured in a fresh process: importing jax and a stage's
modules, and touching fresh memory (on some virtual machines the first touch of a page costs
about 20× a reuse, and every stage process touches its working set once).

    python -m scripts.bench_warmstart [--repeats 2] [--keep /tmp/warm]

Each repeat uses fresh cache folders (a cold start really is cold); the source archives come
from the usual data cache (downloading is not start-up). Run it on a quiet machine.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tokenizer", "pretrain", "sft", "collect", "reward", "ppo")
SHORT = [  # a few steps per stage: start-up is what is measured, not training
    "--config.pretrain.train.steps=4", "--config.sft.train.steps=4",
    "--config.reward.train.steps=4", "--config.reward.collect.n_prompts=32",
    "--config.reward.collect.heldout_prompts=16", "--config.ppo.ppo.iterations=2",
]


def run_pipeline(workdir, caches):
    env = dict(os.environ, JAXCHAT_COMPILE_CACHE=f"{caches}/jax",
               JAXCHAT_CORPUS_CACHE=f"{caches}/corpus")
    cmd = [sys.executable, "-m", "scripts.pipeline", "--config=configs/pipeline/tiny.py",
           f"--config.workdir={workdir}", f"--only={','.join(STAGES)}", *SHORT]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed ({done.returncode}):\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-3000:]}")
    with open(f"{workdir}/compute.json") as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", default="", help="a folder to keep the runs in")
    args = parser.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="jaxchat_warmstart_")
    results = {"cold": [], "warm": []}
    for r in range(args.repeats):
        caches = f"{base}/caches_{r}"
        shutil.rmtree(caches, ignore_errors=True)
        for kind in ("cold", "warm"):
            workdir = f"{base}/{kind}_{r}"
            shutil.rmtree(workdir, ignore_errors=True)
            results[kind].append(run_pipeline(workdir, caches))
            print(f"repeat {r + 1}/{args.repeats}: {kind} done", flush=True)
    print_table(results)
    print_startup_floor()
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def _median(runs, stage, key):
    values = [run[stage][key] for run in runs if key in run.get(stage, {})]
    return statistics.median(values) if values else None


def print_table(results):
    print("\n| stage | first step cold | warm | ratio | compile cold | warm | wall cold | warm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v: "–" if v is None else f"{v:.1f} s"
    for stage in STAGES:
        cold = {k: _median(results["cold"], stage, k) for k in ("first_step_s", "compile_s",
                                                                  "wall_s")}
        warm = {k: _median(results["warm"], stage, k) for k in cold}
        ratio = (f"{cold['first_step_s'] / warm['first_step_s']:.2f}×"
                 if cold["first_step_s"] and warm["first_step_s"] else "–")
        print(f"| {stage} | {fmt(cold['first_step_s'])} | {fmt(warm['first_step_s'])} | {ratio} "
              f"| {fmt(cold['compile_s'])} | {fmt(warm['compile_s'])} | {fmt(cold['wall_s'])} "
              f"| {fmt(warm['wall_s'])} |")
    print(f"(medians of {len(results['cold'])} repeats)")


_FLOOR = """
import time
t = time.perf_counter()
import train.loop, train.pretrain, train.ppo  # jax, flax, optax, orbax, grain with them
t_import = time.perf_counter() - t
import numpy as np
touch = []
for _ in range(2):  # the second allocation reuses the pages the first one freed
    t = time.perf_counter()
    a = np.ones(1 << 28, np.float32)
    touch.append(time.perf_counter() - t)
    del a
print(f"{t_import:.2f} {touch[0]:.3f} {touch[1]:.3f}")
"""


def print_startup_floor():
    """What a warm start still pays: imports, and the first touch of a stage's memory; in a
    process with a stage's environment (its malloc settings change how memory is touched)."""
    from train import cli

    done = subprocess.run([sys.executable, "-c", _FLOOR], cwd=ROOT, env=cli.child_env(),
                          capture_output=True, text=True, check=True)
    t_import, first, again = map(float, done.stdout.split()[-3:])
    print(f"fresh process: imports {t_import:.2f} s; 1 GiB of new memory touched in "
          f"{first:.2f} s the first time, {again:.2f} s reused")


if __name__ == "__main__":
    main()
