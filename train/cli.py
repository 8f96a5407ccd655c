"""What every entry point shares: one error path, quiet third-party logs, a folder lock.

    from train import cli
    if __name__ == "__main__":
        cli.run(main)            # instead of absl's app.run(main)

Expected errors — an exception raised by an explicit `raise` in jaxchat's own code (they all
say what is wrong and where: config key, file and line, tensor name), a file-system error
(missing file, no space, read-only, permission), a misspelt config override — print ONE line
to stderr and exit 2. Anything else keeps its traceback (a bug should look like one).
`--debug` or JAXCHAT_DEBUG=1 shows every traceback. `--help` exits 0.

Exit statuses: 0 done, 1 failed (unexpected), 2 expected error, 130 interrupted (a checkpoint
was saved; the same command resumes).
"""

import contextlib
import errno
import fcntl
import linecache
import logging
import os
import re
import sys
import threading
import traceback
import warnings

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_FOLDERS = tuple(os.path.join(ROOT, d) + os.sep for d in ("model", "data", "train",
                                                              "scripts", "configs"))
FILE_ERRNOS = {errno.ENOENT, errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.EDQUOT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST}
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


class FolderBusy(RuntimeError):
    pass


def die_with_parent():
    """In a child process (a preexec_fn): SIGTERM when the parent dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing), so no stage or trial is left orphaned."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def child_env(base=None, **extra) -> dict:
    """The environment of a stage or trial process: `base` (default os.environ) plus `extra`,
    quiet TensorFlow-style C++ logs, and glibc's malloc on transparent huge pages.

    XLA:CPU allocates each execution's temporaries as one block (186 MB for the tiny train
    step, about 800 MB at 20m) and frees it afterwards; above glibc's mmap threshold that
    block is a fresh mapping every step, faulted in 4 KiB at a time (45,500 page faults per
    tiny step). `glibc.malloc.hugetlb=1` makes malloc madvise its mappings for transparent
    huge pages, so the same block costs about 600 faults, and the tiny train step runs ~20%
    faster (docs/performance.md, part 5). glibc reads its tunables only at process start,
    hence the child's environment. A GLIBC_TUNABLES that already sets hugetlb is kept, and
    JAXCHAT_HUGE_PAGES=0 leaves the environment alone. Other C libraries ignore it.
    """
    env = dict(os.environ if base is None else base, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    tunables = env.get("GLIBC_TUNABLES", "")
    if env.get("JAXCHAT_HUGE_PAGES", "1") != "0" and "glibc.malloc.hugetlb=" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE)))
    return env


def reexec_with_child_env():
    """Re-executes this interpreter with child_env() unless it has it already, for entry points
    that are not launched by the pipeline (the benchmarks: what they measure must run as a
    stage does). Call it before jax is imported: glibc reads its tunables only at start."""
    env = child_env()
    if env.get("GLIBC_TUNABLES") != os.environ.get("GLIBC_TUNABLES"):
        os.execve(sys.executable, sys.orig_argv, env)


def debug_requested(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("JAXCHAT_DEBUG", "") not in ("", "0")


def run(main, argv=None, multiprocess: bool = True):
    """absl's app.run(main) behind the one error path (see the module docstring). A run that
    spans processes starts jax.distributed first (train/distributed.py); multiprocess=False
    for entry points that only orchestrate others (the pipeline)."""
    from absl import app

    argv, debug = _prologue(sys.argv if argv is None else argv)
    try:
        with _error_path(argv, debug):
            if multiprocess:
                _start_distributed(argv)
            app.run(lambda args: _quiet_then(main, args, debug), argv=argv,
                    flags_parser=_parse_flags_or_exit)
    except SystemExit as e:
        if e.code == 1 and any(a in HELP_FLAGS for a in argv):
            sys.exit(0)  # absl exits 1 after printing --help
        raise


def run_argparse(main, argv=None, multiprocess: bool = False):
    """The same error path for the argparse entry points (chat, sample); multiprocess: start
    jax.distributed as `run` does (chat talks to one terminal, so it never does)."""
    argv, debug = _prologue(sys.argv[1:] if argv is None else argv)
    with _error_path(argv, debug):
        if multiprocess:
            _start_distributed(argv)
        return main(argv)


def _start_distributed(argv) -> None:
    """jax.distributed when the run spans processes (not for --help)."""
    if not any(a in HELP_FLAGS for a in argv):
        from train import distributed

        distributed.initialize()


def _prologue(argv) -> tuple[list, bool]:
    """(argv without --debug, whether tracebacks were asked for); third-party logs quietened;
    the persistent compilation cache on (train/compile_cache.py)."""
    from train import compile_cache

    argv = list(argv)
    debug = debug_requested(argv)
    quiet_third_party_logs(debug)
    compile_cache.enable()
    compile_cache.track()
    return [a for a in argv if a != "--debug"], debug


@contextlib.contextmanager
def _error_path(argv, debug: bool):
    """An expected error becomes one line on stderr and exit 2; anything else propagates."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - sorted into expected (one line) and bugs below
        line = None if debug else one_line_error(e, argv)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _parse_flags_or_exit(argv):
    """absl's flag parsing, with a bad flag value (e.g. --config.optim.lr=abc) as one line."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {_squash(str(e))} (see --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _quiet_then(main, args, debug):
    quiet_third_party_logs(debug)  # absl resets its verbosity while parsing flags
    return main(args)


def quiet_third_party_logs(debug: bool = False):
    """orbax, absl and jax log every save and restore at INFO: warnings and errors only,
    unless the command line asks for a --verbosity. Without --debug, orbax's own warnings and
    the tracebacks its background threads log are dropped too: a failed save is raised again
    in the main thread, where it becomes the one error line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(a.startswith(("--verbosity", "-v=")) for a in sys.argv):
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "orbax", "jax", "grain", "tensorstore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    if not debug and not any(isinstance(f, _OrbaxNoise) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxNoise())
        # what tensorstore's callbacks leave behind after a failed async save
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
        sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
        threading.excepthook = _quiet_disk_errors_in_threads(threading.excepthook)


class _OrbaxNoise(logging.Filter):
    def filter(self, record):
        return f"{os.sep}orbax{os.sep}" not in record.pathname or record.levelno >= logging.CRITICAL


def _quiet_disk_errors_in_threads(hook):
    """A full or read-only disk also fails writer threads (TensorBoard's flusher): the main
    thread reports it in one line, so their tracebacks are dropped."""
    def quiet(args):
        e = args.exc_value
        if not (isinstance(e, OSError) and e.errno in FILE_ERRNOS):
            hook(args)

    return quiet


def _quiet_closed_loops(hook):
    """tensorstore callbacks that outlive a failed async save print 'Event loop is closed'
    as unraisable exceptions: noise after the real error."""
    def quiet(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and "Event loop is closed" in str(unraisable.exc_value)):
            hook(unraisable)

    return quiet


def one_line_error(e: BaseException, argv=()) -> str | None:
    """The one line for an expected error, or None for anything that should keep its trace."""
    override = _config_override_error(e, argv) or _config_file_error(e)
    if override:
        return override
    if isinstance(e, SyntaxError):  # in an experiment file: where is all the user needs
        return f"{e.filename}:{e.lineno}: {e.msg}"
    if isinstance(e, OSError) and e.errno in FILE_ERRNOS:
        where = f" {e.filename}" if e.filename else ""
        return f"{e.strerror or e}:{where}"
    if _raised_here(e):
        return _squash(str(e) or type(e).__name__)
    fs = _file_system_message(e)
    if fs:
        return fs
    return None


def _raised_here(e: BaseException) -> bool:
    """True when the innermost frame is a `raise` statement in jaxchat's own code."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not path.startswith(OUR_FOLDERS) or isinstance(e, AssertionError):
        return False
    return linecache.getline(path, tb.tb_lineno).strip().startswith("raise")


def _file_system_message(e: BaseException) -> str | None:
    """Disk full / read-only / permission errors surfaced by libraries (orbax, tensorstore)
    as other exception types: their errno text is in the message."""
    text = " ".join(traceback.format_exception_only(type(e), e))
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        msg = os.strerror(code)
        if msg in text:
            paths = re.findall(r"[\"'](/[^\"']+)[\"']", text)
            where = paths[0] if paths else ""
            where = re.split(r"/[^/]*orbax-checkpoint-tmp", where)[0]  # the checkpoint folder
            return f"{msg}" + (f" while writing {where}" if where else "") + " (file system error)"
    return None


def _config_override_error(e: BaseException, argv) -> str | None:
    """ml_collections' misspelt-override error, as: which flag, which key, the suggestion."""
    chain, seen = [], e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    texts = [str(x) for x in chain if isinstance(x, AttributeError | KeyError)]
    for text in texts:
        bad = re.search(r"^'*\\*'?([A-Za-z_]\w*)\\*'", text.strip("'\""))
        suggestion = re.search(r'Did you mean "(\w+)"', text.replace("\\", ""))
        if not bad:
            continue
        key = bad.group(1)
        for a in argv:
            m = re.match(r"--(\w+)\.([\w.]+)(=.*)?$", a)
            if m and key in m.group(2).split("."):
                hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
                return (f"{a.split('=')[0]}: the config has no key {m.group(2)!r}{hint}; "
                        "overrides must name existing keys")
    return None


def _config_file_error(e: BaseException) -> str | None:
    """ml_collections' 'Failed loading config file' (missing file, error inside it)."""
    for x in (e, e.__cause__, e.__context__):
        text = str(x) if x is not None else ""
        if "Failed loading config file" in text:
            last = [line.strip() for line in text.splitlines() if line.strip()][-1]
            return f"--config: cannot load the experiment file: {last}"
    return None


def _squash(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def folder_lock(folder: str, what: str = "run"):
    """Refuses a second process on the same run folder (the lock dies with its process). In a
    run over several processes, process 0 holds it for all: they run one program."""
    from train import distributed

    if not distributed.is_primary():
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    f = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise FolderBusy(
            f"{folder} is in use by {holder}: wait for it to finish or stop it "
            f"(two {what}s writing one folder would mix their results)") from None
    f.seek(0)
    f.truncate()
    f.write(f"{what} pid {os.getpid()}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
