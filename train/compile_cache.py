"""JAX's persistent compilation cache for every entry point, every stage process and the
tests: a program compiled once on a machine is read back from disk the next time, in any
process, instead of compiled again.

    JAXCHAT_COMPILE_CACHE=/fast/disk/jax   the folder (default: <repo>/cache/jax)
    JAXCHAT_COMPILE_CACHE=off              no persistent cache

Safe under concurrent processes (pipeline stages, sweep trials, xdist workers): a size limit
is set, which makes JAX take a file lock around every read and write of the cache; in a
multi-process run only process 0 writes (JAX's rule). The cache key covers the program, the
compile options, the devices and the jax/jaxlib versions, so a stale entry is never used.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "JAXCHAT_COMPILE_CACHE"
MAX_BYTES = 8 << 30  # least recently used entries are evicted past this
MIN_COMPILE_S = 0.1  # programs that compile faster are not worth a file


def folder() -> str | None:
    path = os.environ.get(ENV, os.path.join(ROOT, "cache", "jax"))
    return None if path.strip().lower() in ("", "0", "off", "none") else os.path.abspath(path)


def enable() -> str | None:
    """Turns the cache on for this process and the processes it starts; returns the folder.
    Settings already given (JAX_COMPILATION_CACHE_DIR, ...) are kept."""
    path = folder()
    if path is None:
        return None
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_S,
                "jax_compilation_cache_max_size": MAX_BYTES}
    for name, value in settings.items():
        os.environ.setdefault(name.upper(), str(value))  # read by jax at import (children)
    if "jax" in sys.modules:  # already imported here: its flags read the environment then
        import jax

        for name, default in settings.items():
            jax.config.update(name, type(default)(os.environ[name.upper()]))
    return path


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")  # the last: or read back
_TOTALS = {"compile_s": 0.0, "compiles": 0, "cache_hits": 0}
LOG_ENV = "JAXCHAT_COMPILE_LOG"  # the pipeline asks each stage for its compile time here


def mark_first_step() -> None:
    """Notes when this process finished its first training step or PPO iteration (its result
    read back): the pipeline reports the seconds from the stage's launch to it, the start-up
    cost that the compilation and corpus caches shorten."""
    _TOTALS.setdefault("first_step_unix", time.time())


def track() -> None:
    """Counts this process's tracing + lowering + compile (or cache read) time and cache hits,
    with mark_first_step's time, written as JSON to $JAXCHAT_COMPILE_LOG at exit (nothing
    when it is unset)."""
    path = os.environ.get(LOG_ENV)
    if not path:  # only the pipeline's stage processes are asked
        return
    import atexit
    import json

    from jax import monitoring

    def on_duration(event, duration, **_):
        if event in _COMPILE_EVENTS:
            _TOTALS["compile_s"] += duration
            _TOTALS["compiles"] += event == _COMPILE_EVENTS[-1]

    def on_event(event, **_):
        _TOTALS["cache_hits"] += event == "/jax/compilation_cache/cache_hits"

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)

    def write():
        try:
            with open(path, "w") as f:
                json.dump(_TOTALS, f)
        except OSError:
            pass  # a missing folder at exit is no reason to fail a finished run

    atexit.register(write)
