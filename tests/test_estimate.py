"""model/estimate.py and scripts/estimate.py: FLOPs, memory per device, GPU-hours, the CLI.

The activation formula is checked against what JAX's autodiff really saves (traced, no
compile) and, once, against XLA's buffer assignment for the compiled gradient.
"""

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from model import estimate, sharding, transformer
from model.config import REMAT_POLICIES, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _cfg(size="test", **overrides) -> ModelConfig:
    return ModelConfig.from_config(model_config(size, **overrides))


def _mesh(data=1, fsdp=1, tensor=1):
    return dict(data=data, fsdp=fsdp, tensor=tensor)


# ------------------------------------------------------------------------------------ FLOPs


def test_flops_per_token_hand_computed():
    """"test" size: V=320, d=32, 2 layers, 4 q / 2 kv heads of 8, d_ff=64, untied lm_head.

    6 FLOPs per matmul weight per token (2 forward, 4 backward) over every non-embedding
    parameter, plus attention: QKᵀ and PV are 2·2·n_heads·head_dim·s forward per token and
    layer, 3x with backward, halved by causality.
    """
    cfg, s = _cfg(), 16
    per_layer = (32 * 4 * 8 + 32 * 2 * 8 * 2 + 4 * 8 * 32  # q, k, v, o projections
                 + 3 * 32 * 64  # gate, up, down
                 + 2 * 32)  # the two RMSNorm scales
    n = 2 * per_layer + 32 + 32 * 320  # final norm, lm_head (the embedding gather is no matmul)
    assert n == 28832
    attention = 3 * 2 * (2 * 2 * 4 * 8 * s) / 2
    assert cfg.flops_per_token(s) == 6 * n + attention == 179136
    assert estimate.training_flops(cfg, 1e6, s) == 1e6 * 179136
    tied = _cfg(tie_embeddings=True)  # the shared table is the lm_head matmul: same FLOPs
    assert tied.flops_per_token(s) == cfg.flops_per_token(s)


def test_gpu_hours_formula_and_accelerators():
    cfg, tokens, s = _cfg("7b"), 2e12, 4096
    v100 = estimate.accelerator("V100")
    assert v100.peak_flops == 125e12
    hours = estimate.gpu_hours(estimate.training_flops(cfg, tokens, s), v100.peak_flops, 0.4)
    assert math.isclose(hours, tokens * cfg.flops_per_token(s) / (125e12 * 0.4) / 3600)
    # Half the MFU, twice the hours; a 989 TFLOP/s chip is 989/125 times faster.
    h100 = estimate.accelerator("h100").peak_flops
    assert math.isclose(estimate.gpu_hours(1e21, 125e12, 0.2), 2 * estimate.gpu_hours(
        1e21, 125e12, 0.4))
    assert math.isclose(estimate.gpu_hours(1e21, 125e12, 0.4) / estimate.gpu_hours(
        1e21, h100, 0.4), 989 / 125)
    assert estimate.accelerator("tpu-v5p") is estimate.accelerator("TPU v5p")
    with pytest.raises(ValueError, match="unknown accelerator 'B200'; known: V100"):
        estimate.accelerator("B200")
    with pytest.raises(ValueError, match="mfu=1.5"):
        estimate.gpu_hours(1e21, 125e12, 1.5)


# --------------------------------------------------------------------------- memory, mesh


def _norm_elements(cfg):
    return (2 * cfg.n_layers + 1) * cfg.d_model  # RMSNorm scales: replicated by the rules


def test_param_memory_divides_by_fsdp_and_tensor():
    """fsdp splits every matrix (embed axis); tensor splits all but the input embedding table
    (embed_vocab is replicated: XLA would replicate a gather from a vocab-sharded table)."""
    cfg = _cfg()
    n, norms, table = cfg.param_count(), _norm_elements(cfg), cfg.vocab_size * cfg.d_model
    got = lambda **mesh: estimate.sharded_param_elements(cfg, _mesh(**mesh))
    assert got() == n
    assert got(data=8) == n  # data replicates
    assert got(fsdp=2) == (n - norms) // 2 + norms
    assert got(tensor=2) == (n - norms - table) // 2 + norms + table
    assert got(data=2, fsdp=2, tensor=2) == (n - norms - table) // 4 + table // 2 + norms
    # A rules override moves the embed axis off fsdp: then fsdp splits nothing.
    rules = sharding.make_rules({"embed": None})
    assert estimate.sharded_param_elements(cfg, _mesh(fsdp=4), rules) == n


def test_memory_per_device_scales_with_the_mesh():
    cfg = _cfg("7b", compute_dtype="bfloat16", remat_policy="full")
    kw = dict(seq_len=4096, global_batch=64)
    one = estimate.memory_per_device(cfg, mesh_sizes=_mesh(data=1, fsdp=8), **kw)
    n_dev = estimate.sharded_param_elements(cfg, _mesh(fsdp=8))
    assert (one["params"], one["grads"], one["optimizer"]) == (4 * n_dev, 4 * n_dev, 8 * n_dev)
    assert one["total"] == sum(v for k, v in one.items() if k != "total")
    # Twice the data axis: params untouched, half the sequences (activations) per device.
    two = estimate.memory_per_device(cfg, mesh_sizes=_mesh(data=2, fsdp=8), **kw)
    assert two["params"] == one["params"]
    assert math.isclose(two["activations"], one["activations"] / 2)
    # Twice fsdp: half of everything (up to the replicated norm scales).
    f16 = estimate.memory_per_device(cfg, mesh_sizes=_mesh(fsdp=16), **kw)
    norm_bytes = 4 * _norm_elements(cfg)
    assert f16["params"] == (one["params"] - norm_bytes) / 2 + norm_bytes
    assert math.isclose(f16["activations"], one["activations"] / 2)
    # Tensor parallelism splits heads/mlp/vocab activations, not the residual stream.
    t2 = estimate.memory_per_device(cfg, mesh_sizes=_mesh(fsdp=4, tensor=2), **kw)
    table = cfg.vocab_size * cfg.d_model  # replicated over tensor (embed_vocab -> None)
    assert t2["params"] == one["params"] + 4 * (table / 4 - table / 8)
    f4 = estimate.memory_per_device(cfg, mesh_sizes=_mesh(fsdp=4), **kw)
    assert f4["activations"] / 2 < t2["activations"] < f4["activations"]
    # Gradient accumulation: half the microbatch, plus a gradient accumulator.
    acc = estimate.memory_per_device(cfg, mesh_sizes=_mesh(fsdp=8), grad_accum=2, **kw)
    assert math.isclose(acc["activations"], one["activations"] / 2)
    assert acc["grads"] == 2 * one["grads"]
    with pytest.raises(ValueError, match="batch of 64 sequences does not split"):
        estimate.memory_per_device(cfg, mesh_sizes=_mesh(data=3), **kw)


def test_remat_policies_order_activation_memory():
    cfg = _cfg("7b", compute_dtype="bfloat16")
    act = {p: estimate.activation_bytes(dataclasses.replace(cfg, remat_policy=p), 4096, 4096)
           for p in REMAT_POLICIES}
    assert act["full"] < act["dots_no_batch"] < act["dots"] < act["none"]
    flash = estimate.activation_bytes(cfg, 4096, 4096, flash=True)
    assert flash < act["none"] / 2  # at s=4096 the attention scores dominate
    # Linear in tokens (but for the bf16 weight copies that "none" keeps once per layer); the
    # attention term makes them superlinear in seq_len.
    copies = cfg.n_layers * estimate.layer_weight_copy_bytes(cfg)
    assert copies > 0
    assert math.isclose(estimate.activation_bytes(cfg, 4096, 8192) - copies,
                        2 * (act["none"] - copies))
    per_token = [estimate.activation_bytes(cfg, s, 1) for s in (1024, 2048, 4096)]
    assert per_token[0] < per_token[1] < per_token[2]


# ---------------------------------------------------- activation formula against JAX / XLA

_N_LAYERS, _LEN = 3, 24  # 24 occurs in no model dim below: it marks the per-token residuals


def _residuals(cfg):
    """Abstract residuals jax.vjp keeps for the loss of one [1, 24] row (traced only)."""
    model = transformer.Transformer(cfg)
    tokens = np.ones((1, _LEN), np.int32)
    positions = np.arange(_LEN, dtype=np.int32)[None]
    args = (tokens, positions, tokens)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    loss = lambda p: model.apply({"params": p}, *args).sum()
    return jax.eval_shape(lambda p: jax.tree.leaves(jax.vjp(loss, p)[1]), params)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_layer_activation_formula_equals_saved_residuals(policy, compute_dtype):
    cfg = _cfg(n_layers=_N_LAYERS, d_model=48, d_ff=80, vocab_size=336, remat_policy=policy,
               compute_dtype=compute_dtype)
    per_layer = [r for r in _residuals(cfg) if r.shape[:1] == (_N_LAYERS,)]
    nbytes = lambda rs: sum(math.prod(r.shape) * r.dtype.itemsize for r in rs)
    per_token = [r for r in per_layer if _LEN in r.shape[1:]]
    got = nbytes(per_token) / (_N_LAYERS * _LEN)
    assert got == estimate.layer_activation_bytes(cfg, _LEN)
    copies = [r for r in per_layer if _LEN not in r.shape[1:] and r.dtype == jnp.bfloat16]
    assert nbytes(copies) / _N_LAYERS == estimate.layer_weight_copy_bytes(cfg)


@pytest.mark.parametrize("policy", ["none", "full"])
def test_activation_estimate_near_xla_buffers(policy):
    """Whole-model estimate vs the compiled gradient's temp buffers on XLA:CPU (fp32)."""
    cfg = _cfg(n_layers=3, remat_policy=policy, max_seq_len=128)
    b, length = 2, 128
    model = transformer.Transformer(cfg)
    tokens = np.ones((b, length), np.int32)
    args = (tokens, np.tile(np.arange(length, dtype=np.int32), (b, 1)), tokens)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])

    def loss(p):
        logits = model.apply({"params": p}, *args)
        return (jax.nn.logsumexp(logits, -1) - logits[..., 0]).sum()

    compiled = jax.jit(jax.grad(loss), compiler_options={"xla_backend_optimization_level": 0}
                       ).lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    est = estimate.activation_bytes(cfg, length, b * length)
    assert 0.8 < temp / est < 1.25, (temp, est)


# -------------------------------------------------------------------------------------- CLI


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "scripts.estimate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_gpt3_on_v100():
    rc, out, err = _cli("--size", "gpt3_175b", "--tokens", "300e9", "--accelerator", "V100",
                        "--mfu", "0.25,0.5", "--batch_size", "1536", "--mesh", "8,16,8",
                        "--grad_accum", "12", "--remat_policy", "full", "--dtype", "float16")
    assert rc == 0, err
    cfg = _cfg("gpt3_175b")
    assert f"({cfg.param_count():,})" in out
    total = estimate.training_flops(cfg, 300e9, 2048)
    for mfu in (0.25, 0.5):
        hours = estimate.gpu_hours(total, 125e12, mfu)
        row = re.search(rf"V100\s+125\s+{mfu:.2f}\s+([\d,]+)\s+([\d,.]+)", out)
        assert row, out
        assert int(row[1].replace(",", "")) == round(hours)
        assert math.isclose(float(row[2].replace(",", "")), hours / 1024 / 24, rel_tol=1e-3)


def test_cli_reads_a_config_file_and_reports_errors_in_one_line():
    rc, out, err = _cli("--config", "configs/pretrain/tiny.py", "--config.data.batch_size=8",
                        "--mesh", "1,2,1", "--accelerator", "A100")
    assert rc == 0, err
    assert f"({_cfg('tiny').param_count():,})" in out
    assert "batch        8 x 256 tokens" in out and "data=1 fsdp=2 tensor=1 (2 devices)" in out
    rc, out, err = _cli("--size", "7b", "--mesh", "3,1,1", "--batch_size", "4")
    assert rc != 0
    assert err.strip().splitlines() == [
        "scripts/estimate.py: error: batch of 4 sequences does not split into grad_accum=1 x "
        "data=3 x fsdp=1 equal microbatch shards"]
