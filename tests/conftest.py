"""Test set-up: 8 virtual CPU devices, forced before jax is imported anywhere."""

import os

# Backend optimisation level 0 halves CPU compile time, which dominates these tiny tests.
# A collective among the 8 virtual devices can wait long on 2 loaded cores (two xdist workers,
# a pipeline subprocess): XLA:CPU's default termination timeout for a stuck collective then
# aborts the whole worker ("Fatal Python error: Aborted", seen once in test_ppo), so it is
# raised here; the tests' own timeouts still catch a real hang.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    + " --xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
    + " --xla_cpu_collective_call_terminate_timeout_seconds=1200"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# compiled programs persist across test runs and the stage processes tests start
from train import compile_cache  # noqa: E402 - before jax, which reads the variables it sets

compile_cache.enable()
# transformers (parity tests only) must never reach for a model hub: every model is local
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


def _tokenizer_texts():
    """Chat-like and task-like text, so a tiny vocabulary still covers what tests render."""
    from data import tasks

    texts = [t.prompt + "\n" + t.answer
             for t in tasks.make_tasks(tasks.FAMILIES, 400, seed=0, split="train")]
    texts += ["Hello, how are you today? I am fine, thank you.", "KING HENRY: Once more."] * 20
    return texts


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A tiny SentencePiece tokenizer (vocab 384, chat tokens reserved), trained once."""
    from data.tokenizer import Tokenizer, train_tokenizer

    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    return Tokenizer(train_tokenizer(_tokenizer_texts(), 384, str(prefix)))


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    """(workdir, data dir, completed process) of one finished smoke pipeline: every stage on
    data made here. Tests that change it copy it first. Its users share an xdist group, so
    it is built once."""
    from tests import smoke

    data = tmp_path_factory.mktemp("smoke_data")
    smoke.make_data(str(data))
    work = str(tmp_path_factory.mktemp("smoke") / "run")
    out = smoke.run(smoke.pipeline_cmd(work, str(data)), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return work, str(data), out
