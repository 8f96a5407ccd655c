"""Run folder bookkeeping: metrics.jsonl, TensorBoard events, resolved config, versions, commit."""

import contextlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time

from train import distributed

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "sentencepiece",
    "ml-collections",
    "numpy",
)


class MetricsWriter:
    """Appends one JSON line per record and mirrors scalars to TensorBoard; on process 0 only
    (every process computes the same replicated scalars)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = self._tb = None
        if not distributed.is_primary():
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        if tensorboard:
            self._tb = _summary_writer()(os.path.join(workdir, "tb"), flush_secs=30)

    def write(self, step: int, metrics: dict, prefix: str = "train"):
        if self._file is None:
            return
        record = {"step": int(step), "split": prefix, "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, float | int) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{prefix}/{k}", v, int(step))

    def close(self):
        if self._file is None:
            return
        try:
            self._file.close()
        finally:
            if self._tb is not None:
                try:
                    self._tb.close()
                except OSError:
                    _abandon(self._tb)
                    raise


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it
    is installed (the parity tests install it), only to accept torch tensors, which jaxchat never
    logs; that import cost every stage process about 1 s before its first step."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


def _abandon(tb):
    """After a failed close (full disk) mark tensorboardX's event writers closed: its own
    atexit hook would otherwise retry the flush and print a second traceback at exit."""
    for file_writer in (getattr(tb, "all_writers", None) or {}).values():
        events = getattr(file_writer, "event_writer", None)
        if events is None or events._closed:
            continue
        events._closed = True
        # its thread would die noisily when the queue goes at exit; best effort on a full disk
        with contextlib.suppress(Exception):
            events._worker.stop()


def _plain(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return v
    return v if math.isfinite(v) else str(v)


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def atomic_write(path: str, text: str) -> None:
    """Writes a whole file or nothing: a temporary file renamed over the old one (a kill or a
    full disk mid-write leaves the previous version, never a truncated one). Process 0 writes;
    every process then waits at a named barrier, so none reads the file before it exists."""
    if distributed.is_primary():
        _write_then_rename(path, text)
    distributed.barrier(f"write {os.path.basename(path)}")


def _write_then_rename(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def write_run_info(workdir: str, config) -> None:
    """Resolved config, package versions and git commit, so a run can be reproduced."""
    if distributed.is_primary():
        os.makedirs(workdir, exist_ok=True)
    atomic_write(
        os.path.join(workdir, "config.json"),
        config.to_json_best_effort(indent=2)
        if hasattr(config, "to_json_best_effort")
        else json.dumps(config, indent=2, default=str),
    )
    versions = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"versions": versions, "git_commit": _git_commit(), "argv": sys.argv}
    write_json(os.path.join(workdir, "run_info.json"), info)


def _git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
