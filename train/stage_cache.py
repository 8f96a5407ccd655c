"""A store of finished pipeline stages, keyed by fingerprint (train/fingerprint.py), that
pipelines share: `--config.stage_cache=DIR` (sweeps set it to <sweep>/stages).

    DIR/<stage>-<fingerprint[:16]>/      the stage's run folder (it runs there)
    DIR/<stage>-<fingerprint[:16]>.lock  held while a pipeline runs that stage
    <pipeline>/<stage> → DIR/<stage>-…   a symlink in each pipeline folder that uses it

A stage whose entry is finished is linked, not run: trials of a sweep that differ only in PPO
settings share one tokenizer, pretraining, SFT, collection and reward model, and a pipeline
rerun with settings seen before gets their results back. The stage configs name the entries,
never another pipeline's folder, so deleting a trial leaves every entry usable. Two pipelines
that need the same unfinished entry take turns: the second waits for the first's lock, then
finds the stage finished.
"""

import contextlib
import fcntl
import os
import shutil


def entry_path(cache: str, name: str, fingerprint: str) -> str:
    return os.path.join(os.path.abspath(cache), f"{name}-{fingerprint[:16]}")


@contextlib.contextmanager
def entry_lock(entry: str):
    """Waits (without limit: the holder is a pipeline running the stage) for the entry."""
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    with open(entry + ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"=== waiting for another pipeline running {os.path.basename(entry)}",
                  flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def set_aside(entry: str) -> None:
    """A forced rerun: the finished entry moves to DIR/previous/ (one generation kept)."""
    if not os.path.exists(entry):
        return
    previous = os.path.join(os.path.dirname(entry), "previous", os.path.basename(entry))
    if os.path.exists(previous):
        shutil.rmtree(previous)
    os.makedirs(os.path.dirname(previous), exist_ok=True)
    os.rename(entry, previous)


def link(stage_dir: str, entry: str, move_aside) -> None:
    """Points <pipeline>/<stage> at the entry (a relative symlink, so the whole sweep folder
    can move). Results of an uncached run there go through move_aside() first."""
    target = os.path.relpath(entry, os.path.dirname(os.path.abspath(stage_dir)))
    if os.path.islink(stage_dir):
        if os.readlink(stage_dir) == target:
            return
        os.remove(stage_dir)
    elif os.path.exists(stage_dir):
        move_aside()
    os.makedirs(entry, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(stage_dir)), exist_ok=True)
    os.symlink(target, stage_dir)


def relocate(cfgs: dict, moves: dict) -> None:
    """Rewrites every config string naming a moved folder ({old: new}) or a path inside it."""
    for cfg in cfgs.values():
        _relocate(cfg, moves)


def _relocate(cfg, moves):
    for key, value in cfg.items():
        if hasattr(value, "items"):
            _relocate(value, moves)
        elif isinstance(value, str):
            for old, new in moves.items():
                if value == old or value.startswith(old + os.sep):
                    cfg[key] = new + value[len(old):]
                    break
