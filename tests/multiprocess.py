"""A multi-process harness on one machine: N processes on localhost, each with its own
virtual CPU devices, talking through jax.distributed (gloo collectives), as the hosts of a
cluster would. Used by tests/test_multiprocess.py.

    ranks = launch(["scripts.train", "--config=...", "--workdir=..."], n=2, devices=4)
    assert all(r.code == 0 for r in ranks), ranks[0].log

Each rank gets JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS (a free port; the
explicit start-up of train/distributed.py), JAX_NUM_CPU_DEVICES, its own log file, and a
deadline: past it every rank gets SIGTERM, then SIGKILL 5 s later, so a hang fails the test
instead of stopping the suite.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from tests import smoke
from train import metrics


@dataclasses.dataclass
class Rank:
    code: int | None  # None: killed at the deadline
    log: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def rank_env(n: int, rank: int, devices: int, port: int, timeout_s: int) -> dict:
    env = dict(smoke.ENV, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               JAXCHAT_DISTRIBUTED_TIMEOUT=str(timeout_s))
    for key in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        env.pop(key, None)  # only the explicit start-up here
    if n > 1:
        env.update(JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(rank),
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
    return env


def launch(module_args: list[str], n: int = 2, devices: int = 4, timeout: float = 300,
           log_dir: str | None = None, barrier_timeout_s: int = 60,
           kill_rank: tuple[int, str | Callable[[], bool]] | None = None,
           rank_args: dict | None = None) -> list[Rank]:
    """Runs `python -m <module_args>` as n ranks; returns each rank's exit code and log.
    kill_rank=(rank, text): SIGKILL that rank once its log shows `text` (or once a callable
    returns True, e.g. a checkpoint exists); rank_args={rank:
    [args]}: extra arguments for one rank (fault tests)."""
    log_dir = log_dir or smoke.ROOT
    port, procs, logs = free_port(), [], []
    for rank in range(n):
        path = os.path.join(log_dir, f"rank{rank}.log")
        logs.append(path)
        with open(path, "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", *module_args, *(rank_args or {}).get(rank, [])],
                cwd=smoke.ROOT, stdout=log,
                stderr=subprocess.STDOUT, env=rank_env(n, rank, devices, port, barrier_timeout_s),
                start_new_session=True))
    start, killed = time.monotonic(), False
    while any(p.poll() is None for p in procs) and time.monotonic() - start < timeout:
        if kill_rank and not killed and _kill_now(kill_rank, logs):
            procs[kill_rank[0]].kill()
            killed = True
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    _stop(procs)
    return [Rank(code, open(path).read()) for code, path in zip(codes, logs, strict=True)]


def _kill_now(kill_rank, logs) -> bool:
    rank, when = kill_rank
    return when() if callable(when) else when in open(logs[rank]).read()


def _stop(procs) -> None:
    """SIGTERM to every rank still running, SIGKILL 5 s later (as jax's own harness does)."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in alive:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


# ---------------------------------------------------------------- what the tests share


def train_cmd(cfg_path, workdir):
    return ["scripts.train", f"--config=configs/resolved.py:{cfg_path}", f"--workdir={workdir}"]


def write_config(c, path):
    path.write_text(json.dumps(c.to_dict()))
    return str(path)


def run(cmd, tmp_path, n, name):
    """`cmd` on n ranks (8 devices in all), asserting that every rank exits 0."""
    logs = tmp_path / f"logs_{name}"
    logs.mkdir()
    ranks = launch(cmd, n=n, devices=8 // n, log_dir=str(logs), timeout=400)
    for r in ranks:
        assert r.code == 0, f"{name}: a rank exited {r.code}:\n{r.log[-3000:]}"
    return ranks


def losses(workdir):
    return [(r["step"], r["loss"]) for r in metrics.read_metrics(workdir, "train")]
