"""Back-of-envelope training cost: memory per device and time on a named accelerator.

Pure arithmetic on a ModelConfig (parameter count and FLOPs per token live there); the only
tracing is `jax.eval_shape` of the parameters, to shard each one by the rules table.

Memory per device (bytes), for a mesh (data, fsdp, tensor) and the global batch:

    params      4 · P_dev                      fp32 parameters
    grads       4 · P_dev  (· 2 with gradient accumulation: the running sum + one microbatch)
    optimizer   8 · P_dev                      AdamW first and second moments, fp32
    activations T_dev · (n_layers · A_layer + A_once) (+ weight copies, see below)

P_dev is the number of parameter elements one device holds: each dim divided by the product of
the mesh axes its logical name maps to (default rules: embed → fsdp, heads/mlp/vocab → tensor;
norms are replicated). T_dev = global_batch / (grad_accum · data · fsdp) · seq_len tokens of
one microbatch on one device (the batch is sharded over data × fsdp).

Activations follow the method of Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models" (sec. 4.1: 34·s·b·h + 5·a·s²·b bytes per GPT layer with dropout):
count every tensor the backward pass needs. Re-derived for this block (pre-RMSNorm computed in
fp32, GQA, RoPE, SwiGLU, XLA attention, no dropout) and checked against the residuals JAX's
autodiff actually saves (tests/test_estimate.py). Per token and layer, with p = bytes of the
compute dtype, t = tensor, d = d_model, q = n_heads·head_dim, kv = n_kv_heads·head_dim,
F = d_ff, a = n_heads, s = seq_len (q, kv, F, a are divided by t; d is replicated over t):

    "none"           16d + 2p·d + p·(2q + 2kv + 6F) + (4 + p)·a·s + 4·(2a + 4)
                     16d: fp32 RMSNorm internals of both norms; 2p·d: their outputs;
                     2q + 2kv: q and k after RoPE, v, the attention output (o_proj input);
                     6F: gate, up, sigmoid(gate), silu(gate), the silu' term, silu·up;
                     (4 + p)·a·s: fp32 scores after masking and the probabilities in the
                     compute dtype (one fp32 array of 8·a·s in fp32); 4·(2a + 4): softmax
                     max/sum and norm statistics.
    "full"           p·d: only the block input (the scan carry); everything is recomputed.
    "dots"           p·(2d + 2q + 2kv + 2F) + 4·a·s: the matmul outputs the backward needs
                     (q/k/v, o_proj, gate, up projections, the attention output), the block
                     input and the fp32 QKᵀ logits.
    "dots_no_batch"  p·(2d + q + 2kv + 2F): the weight matmuls only; attention's batched
                     dots (QKᵀ, probabilities·V) are recomputed.

Under "none" with a 16-bit compute dtype, autodiff also keeps each layer's 16-bit weight copies
(p bytes per layer matmul parameter, counted sharded like the parameters; if XLA keeps them
all-gathered it is fsdp× more).

Once per microbatch (not per layer): one layer's "none" activations as the backward working set
(a remat policy recomputes a layer, any policy holds that layer's gradients), the fp32 logits
(4·V/t, + p·V/t for the compute-dtype logits when p ≠ 4) and the boolean attention mask
(a·s/t bytes). Phases of the backward pass share buffers, so these once-terms approximate the
peak from above. On XLA:CPU in fp32 the total is within ~10% of the compiled gradient's temp
buffers (tests/test_estimate.py); in bf16 XLA:CPU needs up to ~35% more than estimated, as
the CPU backend computes bf16 ops in fp32 and keeps extra copies.

`flash=True` models a fused attention kernel (the model itself uses XLA attention): the
(4 + p)·a·s term becomes the fp32 log-sum-exp (4·a), there is no mask, and under "dots" the
kernel's output is recomputed (as "dots_no_batch").

Not counted: RoPE's sin/cos, fragmentation, XLA workspace and communication buffers, sequence
parallelism (the replicated d-terms are the "10·s·b·h" part Korthikanti et al. remove with it).
Treat the total as an estimate with ~20% headroom, not a bound.

Time: total FLOPs = tokens · flops_per_token; GPU-hours = total / (peak · MFU) / 3600; wall time
= GPU-hours / devices.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np

from model.config import ModelConfig
from model.sharding import MESH_AXES, make_rules
from model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops: float  # dense, per chip, FLOP/s (bf16/fp16 tensor-core unless noted)
    hbm_gib: float  # memory per chip of the common variant


ACCELERATORS = {
    a.name: a
    for a in (
        # NVIDIA Tesla V100 datasheet: 125 TFLOP/s fp16 tensor-core (SXM2); no bf16. 16/32 GB.
        Accelerator("V100", 125e12, 32),
        # NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense (624 with 2:4 sparsity). 40/80 GB.
        Accelerator("A100", 312e12, 80),
        # NVIDIA H100 datasheet, SXM5: 989 TFLOP/s bf16 dense (1979 "with sparsity"). 80 GB.
        Accelerator("H100", 989e12, 80),
        # NVIDIA H200 datasheet: same tensor cores as H100 SXM, 141 GB HBM3e.
        Accelerator("H200", 989e12, 141),
        # Google Cloud TPU docs, "TPU v4": 275 TFLOP/s bf16 per chip, 32 GiB HBM.
        Accelerator("TPU v4", 275e12, 32),
        # Google Cloud TPU docs, "TPU v5p": 459 TFLOP/s bf16 per chip, 95 GiB HBM.
        Accelerator("TPU v5p", 459e12, 95),
        # Google Cloud TPU docs, "TPU v5e": 197 TFLOP/s bf16 per chip, 16 GiB HBM.
        Accelerator("TPU v5e", 197e12, 16),
    )
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def accelerator(name: str) -> Accelerator:
    """Looks up "V100", "tpu v5p", "TPU-v5p" ... (case, spaces and dashes do not matter)."""
    found = {_key(k): a for k, a in ACCELERATORS.items()}.get(_key(name))
    if found is None:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return found


def sharded_param_elements(cfg: ModelConfig, mesh_sizes: dict, rules=None,
                           head: str = "lm") -> int:
    """Parameter elements on one device: every dim divided by the mesh axes it maps to.

    Dims that do not divide are rounded up (the sharding check in model/sharding.py rejects
    them when a real run starts; here the estimate still shows the cost).
    """
    rules = make_rules() if rules is None else rules
    ones = np.ones((1, 1), np.int32)
    boxed = jax.eval_shape(
        lambda r: Transformer(cfg, head).init(r, ones, ones, ones)["params"], jax.random.key(0))
    total = 0
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    for box in jax.tree.leaves(boxed, is_leaf=is_box):
        spec = nn.logical_to_mesh_axes(box.names, rules)
        total += math.prod(
            -(-size // math.prod(mesh_sizes[a] for a in _axes(axes)))
            for size, axes in zip(box.value.shape, spec, strict=True))
    return total


def _axes(axes) -> tuple:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def layer_activation_bytes(cfg: ModelConfig, seq_len: int, policy: str | None = None,
                           tensor: int = 1, flash: bool = False) -> float:
    """Bytes one layer keeps for the backward pass, per token (formulas in the module doc)."""
    policy = cfg.remat_policy if policy is None else policy
    p = np.dtype(cfg.dtype).itemsize
    d, f = cfg.d_model, cfg.d_ff / tensor
    q, kv = cfg.n_heads * cfg.head_dim / tensor, cfg.n_kv_heads * cfg.head_dim / tensor
    a = cfg.n_heads / tensor
    if policy == "none":
        scores = 4 * a if flash else (4 + p) * a * seq_len + 4 * 2 * a
        return 16 * d + 2 * p * d + p * (2 * q + 2 * kv + 6 * f) + scores + 4 * 4
    if policy == "full":
        return p * d
    if policy == "dots" and not flash:
        return p * (2 * d + 2 * q + 2 * kv + 2 * f) + 4 * a * seq_len
    if policy in ("dots", "dots_no_batch"):  # (a fused attention kernel is no dot either)
        return p * (2 * d + q + 2 * kv + 2 * f)
    raise ValueError(f"unknown remat policy {policy!r}")


def layer_weight_copy_bytes(cfg: ModelConfig, shards: int = 1) -> float:
    """Bytes per layer of the compute-dtype weight copies autodiff keeps under remat "none".

    Only when the compute dtype is narrower than the fp32 parameters; counted sharded like the
    parameters (fsdp · tensor = `shards`).
    """
    p = np.dtype(cfg.dtype).itemsize
    if cfg.remat_policy != "none" or p == 4:
        return 0.0
    h = cfg.head_dim
    matmul = cfg.d_model * h * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * cfg.d_model * cfg.d_ff
    return p * matmul / shards


def activation_bytes(cfg: ModelConfig, seq_len: int, tokens: float, tensor: int = 1,
                     flash: bool = False, shards: int = 1) -> float:
    """Activation bytes for `tokens` tokens of one microbatch on one device, whole model.

    n_layers · (per-layer saved bytes per token · tokens + weight copies) + tokens · (one
    layer's "none" bytes as the backward working set + fp32 logits + attention mask).
    """
    p = np.dtype(cfg.dtype).itemsize
    saved = cfg.n_layers * layer_activation_bytes(cfg, seq_len, None, tensor, flash)
    work = layer_activation_bytes(cfg, seq_len, "none", tensor, flash)
    vocab, heads = cfg.vocab_size / tensor, cfg.n_heads / tensor
    once = work + (4 + (p if p != 4 else 0)) * vocab + (0 if flash else heads * seq_len)
    return tokens * (saved + once) + cfg.n_layers * layer_weight_copy_bytes(cfg, shards)


def memory_per_device(cfg: ModelConfig, *, seq_len: int, global_batch: int, mesh_sizes: dict,
                      rules=None, grad_accum: int = 1, flash: bool = False) -> dict:
    """Bytes per device: params, grads, optimizer, activations and total (module docstring)."""
    missing = [a for a in MESH_AXES if a not in mesh_sizes or int(mesh_sizes[a]) < 1]
    if missing:
        raise ValueError(f"mesh sizes {mesh_sizes}: need positive sizes for {missing}")
    shards = grad_accum * mesh_sizes["data"] * mesh_sizes["fsdp"]
    if global_batch % shards:
        raise ValueError(
            f"batch of {global_batch} sequences does not split into grad_accum={grad_accum} x "
            f"data={mesh_sizes['data']} x fsdp={mesh_sizes['fsdp']} equal microbatch shards")
    n = sharded_param_elements(cfg, mesh_sizes, rules)
    tokens = global_batch // shards * seq_len
    mem = dict(params=4.0 * n, grads=4.0 * n * (2 if grad_accum > 1 else 1), optimizer=8.0 * n,
               activations=activation_bytes(cfg, seq_len, tokens, mesh_sizes["tensor"], flash,
                                            mesh_sizes["fsdp"] * mesh_sizes["tensor"]))
    mem["total"] = sum(mem.values())
    return mem


def training_flops(cfg: ModelConfig, tokens: float, seq_len: int) -> float:
    """Total training FLOPs: tokens · (6N + attention) (ModelConfig.flops_per_token)."""
    return tokens * cfg.flops_per_token(seq_len)


def gpu_hours(total_flops: float, peak_flops: float, mfu: float) -> float:
    """Device-hours: total / (peak · MFU) / 3600, whatever the number of devices."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1]")
    return total_flops / (peak_flops * mfu) / 3600.0
