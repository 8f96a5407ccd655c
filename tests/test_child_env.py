"""The environment of stage and trial processes (train.cli.child_env): glibc's malloc on
transparent huge pages, which XLA:CPU's per-execution temporaries need (docs/performance.md,
part 5), without overriding what the user set."""

import json
import os
import re
import subprocess
import sys

import pytest

from scripts import pipeline
from train import cli
from train.sweeps import runner

TUNABLE = cli.HUGE_PAGES_TUNABLE


def test_adds_the_huge_page_tunable_and_quiet_logs():
    env = cli.child_env({"PATH": "/bin"}, JAXCHAT_X="1")
    assert env == {"PATH": "/bin", "JAXCHAT_X": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "GLIBC_TUNABLES": TUNABLE}


def test_keeps_the_users_tunables():
    other = cli.child_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert other["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
    theirs = cli.child_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert theirs["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
    assert "GLIBC_TUNABLES" not in cli.child_env({"JAXCHAT_HUGE_PAGES": "0"})


def test_pipeline_stages_and_sweep_trials_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    out = tmp_path / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    pipeline.run_stage("probe", [sys.executable, "-c", dump])
    assert json.loads(out.read_text())["GLIBC_TUNABLES"] == TUNABLE
    assert runner.trial_env(1, [0])["GLIBC_TUNABLES"] == TUNABLE


_TOUCH_FRESH_BLOCKS = """
import resource
one = bytearray(b"1")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # 64 MiB through malloc (numpy would madvise its own), each block written
    block = one * (64 << 20)  # above the mmap threshold: a fresh mapping each time
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env) -> int:
    done = subprocess.run([sys.executable, "-c", _TOUCH_FRESH_BLOCKS], env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def _transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return re.search(r"\[(\w+)\]", f.read()).group(1)
    except (OSError, AttributeError):
        return "unknown"


@pytest.mark.skipif(not sys.platform.startswith("linux") or _transparent_huge_pages() not in
                    ("madvise", "always"), reason="needs Linux transparent huge pages")
def test_a_child_faults_fresh_blocks_in_huge_pages():
    """8 fresh 64 MiB blocks: 131,072 faults of 4 KiB pages without the tunable; with it glibc
    asks for huge pages (with THP 'always' the kernel does so anyway)."""
    plain = dict(os.environ, JAXCHAT_HUGE_PAGES="0")
    plain.pop("GLIBC_TUNABLES", None)
    without, with_ = _faults(plain), _faults(cli.child_env(plain | {"JAXCHAT_HUGE_PAGES": "1"}))
    if _transparent_huge_pages() == "madvise":
        assert without > 8 * (64 << 20) // 4096 * 0.9
    assert with_ < without / 8 or _transparent_huge_pages() == "always"
    assert with_ < 8 * (64 << 20) // 4096 / 8


def test_the_makefile_exports_the_same_tunable():
    """make cannot import train.cli, so the Makefile spells the tunable out; keep them equal."""
    with open(os.path.join(cli.ROOT, "Makefile")) as f:
        exported = re.search(r"^export GLIBC_TUNABLES \?= (\S+)$", f.read(), re.M)
    assert exported and exported.group(1) == TUNABLE


_REEXEC_PROBE = """
import sys
from train import cli
loaded_before = "jax" in sys.modules
cli.reexec_with_child_env()
import os
print(os.environ.get("GLIBC_TUNABLES"), loaded_before)
"""


def test_a_benchmark_reexecs_itself_with_it_before_jax_loads():
    env = dict(os.environ, PYTHONPATH=cli.ROOT)
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run([sys.executable, "-c", _REEXEC_PROBE], env=env, cwd=cli.ROOT,
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == [TUNABLE, "False"]
