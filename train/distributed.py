"""One program on every host: jax.distributed start-up, named barriers with timeouts, and the
rule that files other than checkpoints are written by process 0.

    distributed.initialize()            # cli.run calls it before any JAX computation
    if distributed.is_primary(): write(...)
    distributed.barrier("summary.json")  # every process waits (timeout named) for the file

Start-up (nothing happens in a single-process run):
  explicit   JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i, JAX_COORDINATOR_ADDRESS=host:port — local
             tests (tests/multiprocess.py) and any launcher that sets them; cluster detection
             is switched off, so a SLURM allocation around a local test cannot interfere;
  detected   SLURM (an srun step of several tasks: SLURM_STEP_NUM_TASKS > 1), Open MPI
             (OMPI_COMM_WORLD_SIZE > 1) and multi-host TPU slices (TPU_WORKER_HOSTNAMES
             with several hosts), or JAXCHAT_DISTRIBUTED=auto
             (a TPU VM pod slice, where no variable says so): jax.distributed.initialize()
             reads the cluster's own variables (scripts/launch_slurm.sh).
JAXCHAT_DISTRIBUTED_TIMEOUT (seconds, default 300) bounds start-up and every barrier, so a rank
that died leaves the others with an error naming what they waited for, never a hang.

Barriers go through the coordination service (`wait_at_barrier`, with a timeout), not
`multihost_utils.sync_global_devices`, which has none (marin PR#8538: 175 tasks hung 4.5 h).
Every process calls the same barriers in the same order (one program), so the n-th barrier of a
name is the same barrier everywhere.
"""

import hashlib
import json
import os

_COUNTS: dict[str, int] = {}


class DistributedError(RuntimeError):
    """A peer process is missing, late or disagrees (the message names what and where)."""


def timeout_s() -> int:
    return int(os.environ.get("JAXCHAT_DISTRIBUTED_TIMEOUT", "300"))


def _cluster_size() -> int:
    """Processes a cluster launcher started (1 when there is no cluster)."""
    # the srun step's task count, not the allocation's: a plain `python` in an salloc shell
    # of 4 tasks is one process
    for key in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return max(len(hosts), 1)


def _client():
    """The coordination-service client, None in a single-process run (jax stays unloaded
    and its backend uninitialised for callers that only write files, e.g. the pipeline)."""
    import sys

    if "jax" not in sys.modules:
        return None
    from jax._src import distributed

    return distributed.global_state.client


def initialize() -> None:
    """jax.distributed.initialize() when the environment says the run spans processes."""
    import jax

    if _client() is not None:
        return
    n = os.environ.get("JAX_NUM_PROCESSES")
    try:
        if n is not None and int(n) > 1:
            address = os.environ.get("JAX_COORDINATOR_ADDRESS")
            if not address or "JAX_PROCESS_ID" not in os.environ:
                raise DistributedError(
                    f"JAX_NUM_PROCESSES={n} needs JAX_COORDINATOR_ADDRESS (host:port of process "
                    "0) and JAX_PROCESS_ID (0 .. N-1) too")
            if int(os.environ["JAX_PROCESS_ID"]) != 0:  # the runtime aborts (no exception)
                _wait_for_coordinator(address, n)  # when it cannot reach it: look first
            jax.distributed.initialize(
                address, int(n), int(os.environ["JAX_PROCESS_ID"]),
                cluster_detection_method="deactivate", initialization_timeout=timeout_s(),
                heartbeat_timeout_seconds=max(timeout_s() // 3, 10))
        elif n is None and (_cluster_size() > 1 or os.environ.get("JAXCHAT_DISTRIBUTED") == "auto"):
            jax.distributed.initialize(initialization_timeout=timeout_s())
    except DistributedError:
        raise
    except Exception as e:  # the runtime's own errors are long C++ status dumps
        where = os.environ.get("JAX_COORDINATOR_ADDRESS", "the cluster's coordinator")
        raise DistributedError(
            f"jax.distributed could not start (coordinator {where}, process "
            f"{os.environ.get('JAX_PROCESS_ID', '?')} of {n or _cluster_size()}, timeout "
            f"{timeout_s()} s): {str(e).splitlines()[0][:300]}") from None
    if _client() is not None:
        print(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
              f"{jax.local_device_count()} of {jax.device_count()} devices", flush=True)


def process_count() -> int:
    import jax

    return 1 if _client() is None else jax.process_count()


def process_index() -> int:
    import jax

    return 0 if _client() is None else jax.process_index()


def _wait_for_coordinator(address: str, n) -> None:
    """Until process 0's coordination service accepts TCP connections, or the timeout."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s()
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"jax.distributed could not start (coordinator {address}, process "
                    f"{os.environ.get('JAX_PROCESS_ID')} of {n}, timeout {timeout_s()} s): "
                    "nothing listens there; is process 0 running, and is the address its "
                    "host's?") from None
            time.sleep(0.5)


def is_primary() -> bool:
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op in one process)."""
    if process_count() == 1:
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    key = f"jaxchat:{name}:{_COUNTS[name]}"
    try:
        _client().wait_at_barrier(key, timeout_s() * 1000)
    except Exception as e:
        raise DistributedError(
            f"barrier {name!r}: not every process arrived within {timeout_s()} s "
            f"(process {process_index()} of {process_count()}; a peer died or is "
            f"stuck): {str(e).splitlines()[0][:200]}") from None


def check_same_config(config) -> None:
    """Refuse to run when the processes were started with different configs (a hash of the
    resolved config, compared with process 0's)."""
    if process_count() == 1:
        return
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str)
                            .encode()).hexdigest()[:16]
    _COUNTS["config"] = _COUNTS.get("config", 0) + 1
    key = f"jaxchat:config:{_COUNTS['config']}"
    client = _client()
    if is_primary():
        client.key_value_set(key, digest)
    theirs = client.blocking_key_value_get(key, timeout_s() * 1000)
    if theirs != digest:
        raise DistributedError(
            f"process {process_index()} was started with another config than process 0 "
            f"(config hash {digest} vs {theirs}): start every process with the same command")
    barrier("config")


def to_host(tree):
    """Device arrays → numpy, whole (gathered from every process on multi-host runs, where
    jax.device_get refuses arrays with shards on other hosts)."""
    import jax
    import numpy as np

    if process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))
