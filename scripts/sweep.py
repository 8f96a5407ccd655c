"""Run a sweep: the trials a config file's get_sweep() lists, resumable, results tabulated.

    python -m scripts.sweep --config configs/sweeps/ppo_kl.py --workdir runs/sweep_kl --dry_run
    python -m scripts.sweep --config configs/sweeps/ppo_kl.py --workdir runs/sweep_kl
    python -m scripts.sweep --config F --workdir W --parallel 2          # 2 trials at once
    python -m scripts.sweep --config F --workdir W --backend submitit    # a SLURM job array
    python -m scripts.sweep --config F --workdir W --retry_failed

A finished trial is skipped, an interrupted one resumes from its checkpoints, a failed one is
reported (W/trials/<name>/log.txt kept) and retried only with --retry_failed. Pipeline sweeps
share finished stages through W/stages (fingerprints: trials that differ only in PPO settings
train one tokenizer, pretraining, SFT and reward model). Results: W/results.csv, W/results.md,
W/plots/. Exit statuses: 0 every trial done, 1 a trial failed, 2 an expected error, 130
interrupted. train/sweeps/ holds the parts.
"""

from absl import flags

from train import cli
from train.metrics import write_json
from train.sweeps import results, runner, trials

_CONFIG = flags.DEFINE_string("config", None, "sweep file (get_config + get_sweep), file.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", None, "the sweep's folder")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the trial table and stop")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "trials at once (local: the cores are split)")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "submitit"], "where trials run")
_CLUSTER = flags.DEFINE_string("cluster", None, "submitit cluster: slurm (default when srun "
                               "exists), local or debug")
_TIMEOUT = flags.DEFINE_integer("timeout_min", 24 * 60, "submitit: a trial's time limit")
_PARTITION = flags.DEFINE_string("partition", None, "submitit: the SLURM partition")
_RETRY = flags.DEFINE_bool("retry_failed", False, "run failed trials again")
flags.mark_flags_as_required(["config", "workdir"])


def table(sweep) -> str:
    keys = list(dict.fromkeys(k for t in sweep.trials for k in t.overrides))
    lines = [f"{len(sweep.trials)} trials ({sweep.kind}): " + ", ".join(keys)]
    lines += [f"  {t.index:3d}  {t.name}" for t in sweep.trials]
    return "\n".join(lines)


def main(argv):
    del argv
    sweep = trials.expand(_CONFIG.value)
    print(table(sweep), flush=True)
    if _DRY_RUN.value:
        return
    workdir = _WORKDIR.value
    with cli.folder_lock(workdir, "sweep"):
        write_json(f"{workdir}/sweep.json",
                   {"config": _CONFIG.value, "kind": sweep.kind,
                    "trials": [{"name": t.name, "overrides": t.overrides} for t in sweep.trials]})
        todo = runner.to_run(sweep, workdir, _RETRY.value)
        failed = [t.name for t in sweep.trials
                  if runner.status(runner.trial_dir(workdir, t)) == "failed"]
        print(f"{len(sweep.trials) - len(todo) - len(failed)} finished, {len(todo)} to run"
              + (f", {len(failed)} failed before (--retry_failed runs them)" if failed else ""))
        try:
            if _BACKEND.value == "submitit":
                slurm = {"partition": _PARTITION.value} if _PARTITION.value else {}
                runner.run_submitit(sweep, workdir, todo, _PARALLEL.value, _CLUSTER.value,
                                    _TIMEOUT.value, slurm)
            else:
                runner.run_local(sweep, workdir, todo, _PARALLEL.value)
        except runner.Interrupted as e:
            results.write(sweep, workdir)
            print(f"error: {e}")
            raise SystemExit(cli.EXIT_INTERRUPTED) from None
        rows = results.write(sweep, workdir)
    bad = [f"{r['trial']} ({r['status']})" for r in rows if r["status"] != "done"]
    print(f"results: {workdir}/results.md ({len(rows) - len(bad)} of {len(rows)} trials done)")
    if bad:
        print(f"failed trials (logs in {workdir}/trials/<name>/log.txt and, for submitit, "
              f"{workdir}/submitit/): {', '.join(bad)}")
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main, multiprocess=False)  # the trials start jax.distributed themselves
