"""The main job: tokenizer → pretrain → SFT → preferences → reward model → PPO → evaluate → report.

    python -m scripts.pipeline --config configs/pipeline/tiny.py            # make pipeline
    python -m scripts.pipeline --config configs/pipeline/tiny.py --from sft  # redo sft and after
    python -m scripts.pipeline --config configs/pipeline/tiny.py --config.sft.optim.lr=3e-4

Every stage runs in its own process with its resolved config saved next to its results
(`<stage>/stage_config.json`), so each can be rerun or inspected alone. A stage whose folder
already has its completion marker (summary.json, written last) is skipped; an interrupted stage
is simply run again and resumes from its own checkpoint. Wall time and peak memory (max RSS of
the stage's process) go to `compute.json` for the report.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

STAGES = ("tokenizer", "pretrain", "sft", "collect", "reward", "ppo", "evaluate", "report")

_CONFIG = config_flags.DEFINE_config_file("config", None, "pipeline config", lock_config=True)
_FROM = flags.DEFINE_enum("from", None, STAGES, "redo this stage and every stage after it")
_ONLY = flags.DEFINE_list("only", None, "run only these stages (their inputs must exist)")
flags.mark_flag_as_required("config")


def stage_dirs(root: str) -> dict:
    return {s: os.path.join(root, s) for s in STAGES if s != "report"} | {"report": root}


def resolve(c) -> dict:
    """Per-stage configs with every path pointing inside the pipeline folder."""
    d = stage_dirs(c.workdir)
    tok = os.path.join(d["tokenizer"], "jaxchat.model")
    cfgs = {name: getattr(c, name) for name in ("pretrain", "sft", "reward", "ppo")}
    for cfg in cfgs.values():
        cfg.data.tokenizer = tok
        cfg.seed = c.seed
    cfgs["pretrain"].data.cache_dir = c.cache_dir
    cfgs["sft"].data.cache_dir = c.cache_dir
    cfgs["sft"].init_from = d["pretrain"]
    cfgs["reward"].init_from = d["sft"]
    cfgs["reward"].collect.out = d["collect"]
    cfgs["ppo"].sft_from = d["sft"]
    cfgs["ppo"].reward_from = d["reward"]
    return cfgs


def commands(c, cfgs) -> dict:
    d, py = stage_dirs(c.workdir), [sys.executable, "-m"]
    data = cfgs["pretrain"].data
    resolved = lambda name: f"configs/resolved.py:{d[name]}/stage_config.json"
    return {
        "tokenizer": py + ["scripts.train_tokenizer", f"--sources={data.mixture}",
                           f"--vocab_size={data.vocab_size}", f"--val_fraction={data.val_fraction}",
                           f"--seed={data.split_seed}", f"--out={d['tokenizer']}/jaxchat"]
        + ([f"--cache_dir={c.cache_dir}"] if c.cache_dir else [])
        + ([f"--max_chars_per_source={data.max_chars_per_source}"]
           if data.max_chars_per_source else []),
        "pretrain": py + ["scripts.train", f"--config={resolved('pretrain')}",
                          f"--workdir={d['pretrain']}"],
        "sft": py + ["scripts.train", f"--config={resolved('sft')}", f"--workdir={d['sft']}"],
        "collect": py + ["scripts.collect_preferences", f"--config={resolved('collect')}",
                         f"--workdir={d['collect']}"],
        "reward": py + ["scripts.train", f"--config={resolved('reward')}",
                        f"--workdir={d['reward']}"],
        "ppo": py + ["scripts.train", f"--config={resolved('ppo')}", f"--workdir={d['ppo']}"],
        "evaluate": py + ["scripts.evaluate", f"--pipeline={c.workdir}"],
        "report": py + ["scripts.report", f"--pipeline={c.workdir}"],
    }


def done_marker(name: str, root: str) -> str:
    d = stage_dirs(root)
    return {"tokenizer": f"{d['tokenizer']}/jaxchat.model", "report": f"{root}/report.md"}.get(
        name, f"{d[name]}/summary.json")


def write_stage_configs(c, cfgs):
    d = stage_dirs(c.workdir)
    configs = dict(cfgs, collect=cfgs["reward"])
    for name, cfg in configs.items():
        os.makedirs(d[name], exist_ok=True)
        with open(f"{d[name]}/stage_config.json", "w") as f:
            f.write(cfg.to_json(indent=2))
    with open(f"{c.workdir}/pipeline_config.json", "w") as f:
        f.write(c.to_json(indent=2))


def run_stage(name, cmd, root) -> dict:
    """Runs one stage as a child process; returns its wall time and peak memory."""
    print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
    start = time.time()
    proc = subprocess.Popen(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    record = {"wall_s": time.time() - start, "max_rss_mb": usage.ru_maxrss / 1024, "exit": code}
    if code != 0:
        why = "interrupted: run the same command again to resume" if code in (
            130, -signal.SIGINT, -signal.SIGTERM) else f"failed (exit {code})"
        sys.exit(f"pipeline stage {name!r} {why}. Finished stages are kept in {root}.")
    return record


def record_compute(root, name, record):
    path = f"{root}/compute.json"
    compute = {}
    if os.path.exists(path):
        with open(path) as f:
            compute = json.load(f)
    compute[name] = record
    with open(path, "w") as f:
        json.dump(compute, f, indent=2)


def main(argv):
    del argv
    c = _CONFIG.value
    os.makedirs(c.workdir, exist_ok=True)
    cfgs = resolve(c)
    write_stage_configs(c, cfgs)
    cmds = commands(c, cfgs)
    todo = list(STAGES[STAGES.index(_FROM.value):]) if _FROM.value else list(STAGES)
    if _FROM.value:
        for name in todo:
            marker = done_marker(name, c.workdir)
            if name != "report" and os.path.isdir(stage_dirs(c.workdir)[name]):
                shutil.rmtree(stage_dirs(c.workdir)[name])
            elif os.path.exists(marker):
                os.remove(marker)
        write_stage_configs(c, cfgs)
    start = time.time()
    for name in STAGES:
        if _ONLY.value and name not in _ONLY.value:
            continue
        if os.path.exists(done_marker(name, c.workdir)) and name not in (_ONLY.value or []):
            print(f"=== {name}: done ({done_marker(name, c.workdir)}), skipped")
            continue
        record_compute(c.workdir, name, run_stage(name, cmds[name], c.workdir))
    print(f"\npipeline finished in {time.time() - start:.0f}s: {c.workdir}/report.md")


if __name__ == "__main__":
    app.run(main)
