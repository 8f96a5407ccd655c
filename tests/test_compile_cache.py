"""The persistent compilation cache: a program compiled by one process is read back by the
next (a cache hit, nothing new written); JAXCHAT_COMPILE_CACHE=off turns it off."""

import os
import subprocess
import sys

from tests import smoke

PROGRAM = """
import logging
from train import compile_cache
compile_cache.enable()
import jax, jax.numpy as jnp
logging.basicConfig(level=logging.WARNING)
logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
print(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))))
print("cache dir:", jax.config.jax_compilation_cache_dir)
"""


def run(env):
    return subprocess.run([sys.executable, "-c", PROGRAM], cwd=smoke.ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_second_process_reads_the_program_back(tmp_path):
    env = {k: v for k, v in smoke.ENV.items() if not k.startswith("JAX_")}
    env.update(JAXCHAT_COMPILE_CACHE=str(tmp_path / "jax"), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = run(env)
    assert first.returncode == 0, first.stderr
    files = sorted(os.listdir(tmp_path / "jax"))
    assert any(f.endswith("-cache") for f in files), files
    second = run(env)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert f"cache dir: {tmp_path / 'jax'}" in first.stdout
    assert "cache hit" in second.stderr.lower(), second.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "jax")) == files  # nothing compiled again


def test_off_means_no_cache(tmp_path):
    env = {k: v for k, v in smoke.ENV.items() if not k.startswith("JAX_")}
    env.update(JAXCHAT_COMPILE_CACHE="off", JAX_PLATFORMS="cpu")
    out = run(env)
    assert out.returncode == 0 and "cache dir: None" in out.stdout, out.stdout + out.stderr
