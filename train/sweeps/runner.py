"""Running a sweep's trials: each one a process in its own folder, resumable, failures kept.

    W/sweep.json                     the trial table (names, overrides)
    W/trials/<name>/config.json      the trial's resolved config
    W/trials/<name>/run/             its run folder (a pipeline folder for pipeline sweeps)
    W/trials/<name>/log.txt          its output
    W/trials/<name>/result.json      written last when it finished: its wall time
    W/trials/<name>/failed.json      when it failed: exit status and the log's tail
    W/stages/                        pipeline sweeps: finished stages shared by fingerprint

A trial with result.json is skipped; one that was interrupted is run again with the same
command and resumes from its checkpoints; a failed one is reported and run again only with
--retry_failed. Locally, `parallel` trials run at once, each pinned to its own share of the
CPU cores (and of the GPU memory); `submitit` sends them to SLURM as one job array.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from train import cli
from train import fingerprint as fp
from train.metrics import write_json
from train.sweeps.trials import Sweep, Trial

INTERRUPTED = (cli.EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGINT)


def trial_dir(workdir: str, trial: Trial) -> str:
    return os.path.join(workdir, "trials", trial.name)


def status(folder: str) -> str:
    """done | failed | started | new."""
    for name, state in (("result.json", "done"), ("failed.json", "failed"),
                        ("config.json", "started")):
        if os.path.exists(os.path.join(folder, name)):
            return state
    return "new"


def resolved_config(sweep: Sweep, trial: Trial, workdir: str):
    """The config the trial runs: a pipeline's folder and stage cache set inside the sweep."""
    config = trial.config
    if sweep.kind == "pipeline":
        config = type(config)(config.to_dict())
        config.workdir = os.path.join(trial_dir(workdir, trial), "run")
        config.stage_cache = os.path.join(workdir, "stages")
        config.lock()
    return config


def prepare(sweep: Sweep, trial: Trial, workdir: str) -> list[str]:
    """Writes the trial's config (refusing a folder that holds another one); its command."""
    folder = trial_dir(workdir, trial)
    config = resolved_config(sweep, trial, workdir)
    path = os.path.join(folder, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = fp.canonical(json.load(f), folder)
        new = fp.canonical(config.to_dict(), folder)
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f"trial {trial.name}: {folder} holds a run of another config "
                             f"({', '.join(changed[:4])} differ): move it away or use another "
                             "--workdir")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "trial.json"),
               {"name": trial.name, "index": trial.index, "overrides": trial.overrides,
                "digest": trial.digest, "kind": sweep.kind})
    write_json(path, config.to_dict())
    return command(sweep, folder)


def command(sweep: Sweep, folder: str) -> list[str]:
    resolved = f"--config=configs/resolved.py:{os.path.abspath(folder)}/config.json"
    py = [sys.executable, "-m"]
    if sweep.kind == "pipeline":
        return py + ["scripts.pipeline", resolved]
    if sweep.kind == "stage":
        return py + ["scripts.train", resolved, f"--workdir={os.path.abspath(folder)}/run"]
    return py + ["train.sweeps.custom", sweep.spec, os.path.abspath(folder)]


def core_slots(parallel: int) -> list[list[int]]:
    """The CPU cores this process may use, split into `parallel` disjoint sets."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores or parallel <= 1:
        return [cores] * max(parallel, 1)
    if parallel > len(cores):
        raise ValueError(f"--parallel {parallel}: only {len(cores)} CPU cores to share")
    return [list(map(int, part)) for part in np.array_split(cores, parallel)]


def trial_env(parallel: int, cores: list[int]) -> dict:
    env = cli.child_env()
    if parallel > 1:  # several JAX processes on one host: share the cores and the GPU memory
        threads = str(max(len(cores), 1))
        env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads,
                   XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / parallel:.3f}")
    return env


def launch(folder: str, cmd: list[str], env: dict | None = None, cores=None):
    def start():  # in the child: its cores, and SIGTERM if the sweep dies (even by SIGKILL)
        if cores:
            os.sched_setaffinity(0, cores)
        cli.die_with_parent()

    with open(os.path.join(folder, "log.txt"), "a") as log:  # the child keeps its own handle
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(cmd, cwd=cli.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env or cli.child_env(), start_new_session=True,
                                preexec_fn=start)


def finish(folder: str, code: int, wall_s: float) -> str:
    """Records how a trial's process ended; returns its status."""
    if code == 0:  # its metrics are read from the run's summaries (train/sweeps/results.py)
        write_json(os.path.join(folder, "result.json"), {"wall_s": wall_s})
        return "done"
    if code in INTERRUPTED:
        return "interrupted"
    with open(os.path.join(folder, "log.txt"), errors="replace") as f:
        tail = f.read()[-4000:]
    write_json(os.path.join(folder, "failed.json"),
               {"exit": code, "wall_s": wall_s, "log_tail": tail})
    return "failed"


def run_one(folder: str, cmd: list[str]) -> str:
    """One trial start to end (the submitit job's body)."""
    start = time.time()
    proc = launch(folder, cmd)
    return finish(folder, proc.wait(), time.time() - start)


def to_run(sweep: Sweep, workdir: str, retry_failed: bool) -> list[Trial]:
    out = []
    for trial in sweep.trials:
        state = status(trial_dir(workdir, trial))
        if state == "failed" and retry_failed:
            os.remove(os.path.join(trial_dir(workdir, trial), "failed.json"))
        if state != "done" and (state != "failed" or retry_failed):
            out.append(trial)
    return out


def run_local(sweep: Sweep, workdir: str, trials: list[Trial], parallel: int = 1) -> dict:
    """Runs `trials`, `parallel` at a time; {name: status}. SIGTERM/SIGINT: every running
    trial gets SIGTERM (they save checkpoints), then cli.EXIT_INTERRUPTED is raised."""
    slots, pending, running, ended, stop = core_slots(parallel), list(trials), {}, {}, []
    told = set()  # trials already sent SIGTERM
    cmds = {t.name: prepare(sweep, t, workdir) for t in trials}  # every folder checked first
    old = {s: signal.signal(s, lambda signum, _f: stop.append(signum))
           for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (pending and not stop) or running:
            for slot in range(parallel):
                if slot not in running and pending and not stop:
                    trial = pending.pop(0)
                    print(f"=== trial {trial.name}: started", flush=True)
                    proc = launch(trial_dir(workdir, trial), cmds[trial.name],
                                  trial_env(parallel, slots[slot]), slots[slot])
                    running[slot] = (trial, proc, time.time())
            if stop:
                for _, proc, _ in running.values():
                    if proc.poll() is None and proc.pid not in told:
                        os.killpg(proc.pid, signal.SIGTERM)
                        told.add(proc.pid)
            for slot, (trial, proc, start) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    ended[trial.name] = finish(trial_dir(workdir, trial), proc.returncode,
                                               time.time() - start)
                    print(f"=== trial {trial.name}: {ended[trial.name]}", flush=True)
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop:
        raise Interrupted(f"sweep interrupted (signal {stop[0]}): run the same command again "
                          "to resume")
    return ended


class Interrupted(Exception):
    pass


def run_submitit(sweep: Sweep, workdir: str, trials: list[Trial], parallel: int,
                 cluster: str | None = None, timeout_min: int = 24 * 60,
                 slurm: dict | None = None) -> dict:
    """The trials as one job array through submitit: on SLURM (the default where `srun`
    exists; at most `parallel` at once), or cluster="local" / "debug" on this machine.
    slurm: more sbatch parameters (partition, gpus_per_node, ...)."""
    import shutil

    import submitit

    cluster = cluster or ("slurm" if shutil.which("srun") else "local")
    folder = os.path.join(workdir, "submitit")
    # the executors themselves: AutoExecutor's plugin lookup needs setuptools' pkg_resources
    if cluster == "slurm":
        executor = submitit.SlurmExecutor(folder)
        executor.update_parameters(job_name="jaxchat-sweep", time=timeout_min,
                                   array_parallelism=parallel, **(slurm or {}))
    elif cluster in ("local", "debug"):
        executor = (submitit.LocalExecutor if cluster == "local" else submitit.DebugExecutor)(
            folder)
        executor.update_parameters(timeout_min=timeout_min)
    else:
        raise ValueError(f"--cluster {cluster!r}: slurm, local or debug")
    folders = [trial_dir(workdir, t) for t in trials]
    cmds = [prepare(sweep, t, workdir) for t in trials]
    jobs = executor.map_array(run_one, folders, cmds)
    ended = {}
    for trial, job in zip(trials, jobs, strict=True):
        try:
            ended[trial.name] = job.result()
        except Exception as e:  # noqa: BLE001 - the job itself broke (not the trial): report it
            ended[trial.name] = f"job failed: {str(e).splitlines()[0][:200]}"
        print(f"=== trial {trial.name}: {ended[trial.name]} (job {job.job_id})", flush=True)
    return ended
