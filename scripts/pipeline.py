"""The main job: tokenizer → pretrain → SFT → preferences → reward model → PPO → evaluate → report.

    python -m scripts.pipeline --config configs/pipeline/tiny.py            # make pipeline
    python -m scripts.pipeline --config configs/pipeline/tiny.py --from sft  # redo sft and after
    python -m scripts.pipeline --config configs/pipeline/tiny.py --config.sft.optim.lr=3e-4

Every stage runs in its own process with its resolved config saved next to its results
(`<stage>/stage_config.json`), so each can be rerun or inspected alone. Before anything runs,
each stage gets a fingerprint (train/fingerprint.py: its resolved config, the user files it
reads, the fingerprints of the stages it reads). A stage is skipped only when it finished
(its summary.json, written last, exists) under the same fingerprint; a stage whose fingerprint
changed is rerun, with every stage after it that reads it, and the pipeline says which keys
changed (`--no_rerun` refuses instead). An interrupted stage is simply run again and resumes
from its own checkpoint. Results a rerun replaces are moved to `<workdir>/previous/<stage>`
(one generation kept), never deleted before the new config and inputs have been checked.

With `--config.stage_cache=DIR` (sweeps set it), each stage runs in DIR/<stage>-<fingerprint>
and <workdir>/<stage> links to it: a stage some pipeline already finished with the same
fingerprint is linked instead of run (train/stage_cache.py).

SIGTERM/SIGINT to the pipeline go to the running stage, which saves a checkpoint; the pipeline
waits for it and exits 130. A lock file refuses a second pipeline on the same folder. Exit
statuses: 0 done, 1 a stage failed, 2 an expected error (one line), 130 interrupted.
Wall time and peak memory (max RSS of each stage's process) go to `compute.json`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags
from ml_collections import config_flags

from train import cli, compile_cache, stage_cache
from train import fingerprint as fp
from train.metrics import atomic_write, write_json

STAGES = ("tokenizer", "pretrain", "sft", "collect", "reward", "ppo", "evaluate", "report")
READS = {  # the stages whose results each stage reads
    "tokenizer": (), "pretrain": ("tokenizer",), "sft": ("tokenizer", "pretrain"),
    "collect": ("tokenizer", "sft"), "reward": ("tokenizer", "sft", "collect"),
    "ppo": ("tokenizer", "sft", "reward"), "evaluate": ("pretrain", "sft", "reward", "ppo"),
    "report": ("pretrain", "sft", "collect", "reward", "ppo", "evaluate"),
}
CACHED = STAGES[:6]  # evaluate and report are the pipeline's own
COLLECT_KEYS = ("collect", "init_from", "model", "mesh", "seed")  # what collection reads
KEY_PREFIX = {"tokenizer": "pretrain.data.", "collect": "reward.", "evaluate": "", "report": ""}

_CONFIG = config_flags.DEFINE_config_file("config", None, "pipeline config", lock_config=True)
_FROM = flags.DEFINE_enum("from", None, STAGES, "redo this stage and every stage after it")
_ONLY = flags.DEFINE_list("only", None, "run only these stages (their inputs must exist)")
_NO_RERUN = flags.DEFINE_bool("no_rerun", False,
                              "refuse (exit 2) instead of rerunning stages whose config changed")
flags.mark_flag_as_required("config")


class StageStopped(Exception):
    """A stage process ended without finishing; .code is the pipeline's exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def stage_dirs(root: str) -> dict:
    return {s: os.path.join(root, s) for s in STAGES if s != "report"} | {"report": root}


def resolve(c) -> dict:
    """Per-stage configs with every path pointing inside the pipeline folder."""
    d = stage_dirs(c.workdir)
    tok = os.path.join(d["tokenizer"], "jaxchat.model")
    cfgs = {name: getattr(c, name) for name in ("pretrain", "sft", "reward", "ppo")}
    own = c.get("stage_seeds") or {}
    for name, cfg in cfgs.items():
        cfg.data.tokenizer = tok
        cfg.seed = c.seed if own.get(name, -1) == -1 else own[name]
    cfgs["pretrain"].data.cache_dir = c.cache_dir
    cfgs["sft"].data.cache_dir = c.cache_dir
    cfgs["sft"].init_from = d["pretrain"]
    cfgs["reward"].init_from = d["sft"]
    cfgs["reward"].collect.out = d["collect"]
    cfgs["ppo"].sft_from = d["sft"]
    cfgs["ppo"].reward_from = d["reward"]
    return cfgs


def commands(c, cfgs, dirs: dict) -> dict:
    """Each stage's command line; dirs: where each stage runs (a stage cache entry or
    <workdir>/<stage>)."""
    d, py = dirs, [sys.executable, "-m"]
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
    return done_marker_in(name, stage_dirs(root)[name])


def done_marker_in(name: str, folder: str) -> str:
    """The file a stage writes last (its presence means the stage finished)."""
    return os.path.join(folder, {"tokenizer": "jaxchat.model", "report": "report.md"}.get(
        name, "summary.json"))


# ------------------------------------------------------------------------------ the plan


def stage_inputs(c, cfgs) -> dict:
    """The config each stage's fingerprint covers (what that stage reads)."""
    data = cfgs["pretrain"].data
    reward = cfgs["reward"].to_dict()
    return {
        "tokenizer": {k: data[k] for k in ("mixture", "vocab_size", "val_fraction", "split_seed",
                                            "max_chars_per_source")},
        **{name: cfg.to_dict() for name, cfg in cfgs.items()},
        "collect": {**{k: reward[k] for k in COLLECT_KEYS},
                    "tokenizer": reward["data"]["tokenizer"]},
        "evaluate": {"sft": c.sft.to_dict(), "evaluate": c.evaluate.to_dict(), "seed": c.seed},
        "report": {},
    }


def validate(cfgs):
    """What a stage would refuse at start-up, checked before anything is moved or written."""
    from data import corpus as corpus_lib
    from model.config import ModelConfig

    for cfg in cfgs.values():
        ModelConfig.from_config(cfg.model)
    for key, spec in (("pretrain.data.mixture", cfgs["pretrain"].data.mixture),
                      ("sft.data.sft_mixture", cfgs["sft"].data.sft_mixture)):
        try:
            corpus_lib.validate_mixture(corpus_lib.parse_mixture(spec))
        except ValueError as e:
            raise ValueError(f"config {key}={spec!r}: {e}") from None


def record_path(root: str, name: str) -> str:
    return os.path.join(root, "fingerprints", f"{name}.json")


def read_record(root: str, name: str) -> dict | None:
    try:
        with open(record_path(root, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def make_plan(c, cfgs, forced: set, only: set) -> list:
    """[(stage, action, record, reason)]: action skip | resume | run | rerun (and, with a stage
    cache, link). `forced` stages
    start over; `only` stages run even when done (a finished stage just rewrites its summary)."""
    root, records, plan, digests = c.workdir, {}, [], {}
    inputs = stage_inputs(c, cfgs)
    for name in STAGES:
        upstream = {u: records[u]["fingerprint"] for u in READS[name]}
        records[name] = rec = fp.make_record(inputs[name], root, upstream,
                                             KEY_PREFIX.get(name, f"{name}."), digests)
        cached = c.get("stage_cache") and name in CACHED
        action, reason = (cached_action if cached else folder_action)(c, name, rec, forced, only)
        plan.append((name, action, rec, reason))
    return plan


def folder_action(c, name, record, forced, only) -> tuple[str, str]:
    """The stage's results in <workdir>/<stage>: skip | resume | run | rerun, and why."""
    old, done = read_record(c.workdir, name), os.path.exists(done_marker(name, c.workdir))
    same = old is not None and old.get("fingerprint") == record["fingerprint"]
    started = done or (old is not None)
    if name in forced:
        return ("rerun" if started else "run"), "asked for"
    if same:
        return ("skip" if done and name not in only else "resume"), ""
    if started:
        return "rerun", fp.why_changed(old, record)
    return "run", ""


def cached_action(c, name, record, forced, only) -> tuple[str, str]:
    """skip (linked and finished) | link (finished in the cache) | resume | run | rerun."""
    entry = stage_cache.entry_path(c.stage_cache, name, record["fingerprint"])
    here = stage_dirs(c.workdir)[name]
    linked = os.path.islink(here) and os.path.realpath(here) == os.path.realpath(entry)
    if name in forced:
        return ("rerun" if os.path.exists(entry) else "run"), "asked for"
    if os.path.exists(done_marker_in(name, entry)):
        if name in only:
            return "resume", ""
        return ("skip" if linked else "link"), ""
    return ("resume" if os.path.isdir(entry) else "run"), ""


def cache_entries(c, plan) -> dict:
    """{stage: its stage cache entry} ({} without a cache)."""
    if not c.get("stage_cache"):
        return {}
    return {name: stage_cache.entry_path(c.stage_cache, name, rec["fingerprint"])
            for name, _, rec, _ in plan if name in CACHED}


def print_plan(plan):
    for name, action, _, reason in plan:
        if action == "rerun":
            print(f"=== {name}: reruns: {reason}", flush=True)


def refuse_reruns(plan, root):
    stale = [(n, why) for n, a, _, why in plan if a == "rerun"]
    if stale:
        name, why = stale[0]
        raise ValueError(
            f"--no_rerun: {root} holds results of other settings: {name} ({why}); "
            f"rerunning would redo {', '.join(n for n, _ in stale)}. Use another "
            "--config.workdir, or drop --no_rerun")


# ------------------------------------------------------------------------------ running


def move_aside(name: str, root: str):
    """The stage's previous results to <root>/previous/<stage> (replacing an older copy)."""
    previous = os.path.join(root, "previous", name)
    src = done_marker(name, root) if name == "report" else stage_dirs(root)[name]
    if not os.path.exists(src):
        return
    if os.path.isdir(previous):
        shutil.rmtree(previous)
    elif os.path.exists(previous):
        os.remove(previous)
    os.makedirs(os.path.dirname(previous), exist_ok=True)
    os.rename(src, previous)
    print(f"=== {name}: previous results moved to {previous}", flush=True)


def write_stage_inputs(c, cfgs, name, record):
    """stage_config.json (what the stage process reads) and the fingerprint record."""
    configs = dict(cfgs, collect=cfgs["reward"])
    if name in configs:
        os.makedirs(stage_dirs(c.workdir)[name], exist_ok=True)
        atomic_write(f"{stage_dirs(c.workdir)[name]}/stage_config.json",
                     configs[name].to_json(indent=2))
    write_record(c.workdir, name, record)


def write_record(root, name, record):
    os.makedirs(os.path.dirname(record_path(root, name)), exist_ok=True)
    write_json(record_path(root, name), record)


def run_stage(name, cmd) -> dict:
    """Runs one stage as a child process, forwarding SIGTERM/SIGINT to it; returns its wall
    time, peak memory and compile time (train/compile_cache.py), or raises StageStopped."""
    print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
    start, received = time.time(), []
    fd, compile_log = tempfile.mkstemp(prefix=f"jaxchat_{name}_", suffix=".json")
    os.close(fd)
    env = cli.child_env(**{compile_cache.LOG_ENV: compile_log})
    # Its own session: a terminal's Ctrl-C reaches the pipeline only, which forwards it once.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=cli.die_with_parent)

    def forward(signum, _frame):
        received.append(signum)
        print(f"\n=== {name}: signal {signum}, waiting for the stage to save and stop",
              flush=True)
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # retried by Python across signals
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    code = os.waitstatus_to_exitcode(status)
    record = {"wall_s": time.time() - start, "max_rss_mb": usage.ru_maxrss / 1024, "exit": code,
              **_read_compile_log(compile_log, start)}
    if code == 0 and not received:
        return record
    if received or code in (cli.EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        raise StageStopped(f"pipeline stage {name!r} interrupted: run the same command again "
                           "to resume", cli.EXIT_INTERRUPTED)
    if code == cli.EXIT_ERROR:
        raise StageStopped(f"pipeline stage {name!r} stopped on the error above", cli.EXIT_ERROR)
    raise StageStopped(f"pipeline stage {name!r} failed (exit {code})", 1)


def _read_compile_log(path, start) -> dict:
    """{compile_s, compiles, cache_hits, first_step_s} the stage wrote at exit ({} if it wrote
    nothing); first_step_s: from the launch to its first step's result (training stages)."""
    try:
        with open(path) as f:
            log = json.load(f)
    except (OSError, ValueError):
        return {}
    else:
        if "first_step_unix" in log:
            log["first_step_s"] = log.pop("first_step_unix") - start
        return log
    finally:
        if os.path.exists(path):
            os.remove(path)


def record_compute(root, name, record):
    path = f"{root}/compute.json"
    compute = {}
    if os.path.exists(path):
        with open(path) as f:
            compute = json.load(f)
    compute[name] = record
    write_json(path, compute)


def execute(c, cfgs, plan, entries):
    cmds = commands(c, cfgs, {**stage_dirs(c.workdir), **entries})
    start, ran = time.time(), False
    for name, action, record, _ in plan:
        if _ONLY.value and name not in _ONLY.value:
            continue
        if action == "skip":
            print(f"=== {name}: done ({done_marker(name, c.workdir)}), skipped")
            continue
        if not ran:  # evaluate and report read it: written only when something runs
            atomic_write(f"{c.workdir}/pipeline_config.json", c.to_json(indent=2))
            ran = True
        if name in entries:
            run_cached(c, cfgs, name, action, record, entries[name], cmds[name])
            continue
        if action == "rerun":
            move_aside(name, c.workdir)
        write_stage_inputs(c, cfgs, name, record)
        record_compute(c.workdir, name, run_stage(name, cmds[name]))
    print(f"\npipeline finished in {time.time() - start:.0f}s: {c.workdir}/report.md")


def run_cached(c, cfgs, name, action, record, entry, cmd):
    """Links <workdir>/<stage> to its cache entry; runs the stage there unless another
    pipeline finished it (checked again once the entry's lock is ours)."""
    root = c.workdir
    with stage_cache.entry_lock(entry):
        if action == "rerun":
            stage_cache.set_aside(entry)
        stage_cache.link(stage_dirs(root)[name], entry, lambda: move_aside(name, root))
        compute_path = os.path.join(entry, "compute.json")
        # finished by now (maybe by another pipeline while this one waited for the lock)
        redo = action == "rerun" or name in (_ONLY.value or ())
        if os.path.exists(done_marker_in(name, entry)) and not redo:
            print(f"=== {name}: finished in the stage cache ({entry}), linked", flush=True)
            write_record(root, name, record)
            with open(compute_path) as f:
                record_compute(root, name, {**json.load(f), "cached": True})
            return
        write_stage_inputs(c, cfgs, name, record)
        compute = run_stage(name, cmd)
        write_json(compute_path, compute)
        record_compute(root, name, compute)


def main(argv):
    del argv
    c = _CONFIG.value
    cfgs = resolve(c)
    validate(cfgs)
    forced = set(STAGES[STAGES.index(_FROM.value):]) if _FROM.value else set()
    # reads every input file: a missing one fails here, before anything is moved or written
    plan = make_plan(c, cfgs, forced, set(_ONLY.value or ()))
    entries = cache_entries(c, plan)  # the stages' configs then name entries, not this folder
    stage_cache.relocate(cfgs, {stage_dirs(c.workdir)[n]: e for n, e in entries.items()})
    if _NO_RERUN.value:
        refuse_reruns(plan, c.workdir)
    print_plan(plan)
    with cli.folder_lock(c.workdir, "pipeline"):
        try:
            execute(c, cfgs, plan, entries)
        except StageStopped as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.code)


if __name__ == "__main__":
    cli.run(main, multiprocess=False)  # its stages start jax.distributed themselves
