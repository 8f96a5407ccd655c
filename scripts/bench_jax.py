"""JAX side of the benchmarks: the real train step and the real sampler, timed; peaks; roofline.

Everything here runs the project's own code paths (train.step.make_train_step with
train.losses.make_lm_loss and train.optim's AdamW; model.sampler.make_generate) on random
parameters and random tokens, so only speed is measured. Nothing here imports grain or
ml_collections, so it runs on a device image that lacks them.

Timing convention: a "runner" is a zero-argument function that does one unit of work (one train
step, one whole `generate`) and blocks until the result is ready. `bench.alternate` calls the
runners of several frameworks in turn and takes medians.
"""

import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from model import sampler, sharding
from model.config import ModelConfig
from train import losses
from train import setup as setup_lib
from train.step import make_train_step

# The optimizer both frameworks run (AdamW, β=(0.9, 0.95), decoupled weight decay 0.1 on
# matrices, global-norm clipping at 1). Fixed here, not taken from configs.common, because the
# PyTorch baseline must use exactly the same update and because configs.common needs
# ml_collections, which the GPU image lacks.
BENCH_OPTIM = dict(
    lr=3e-4,
    warmup_steps=10,
    min_lr_ratio=0.1,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.1,
    clip_norm=1.0,
    grad_accum=1,
    adam_style="pytorch",
)

# Datasheet HBM bandwidth (bytes/s) by jax device_kind prefix; on CPU it is measured.
PEAK_BANDWIDTH = {
    "NVIDIA H100": 3.35e12,  # H100 SXM5 80GB
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100": 2.04e12,  # A100 SXM4 80GB
    "TPU v4": 1.2e12,
    "TPU v5p": 2.765e12,
    "TPU v5 lite": 819e9,
    "TPU v5e": 819e9,
}


def model_sizes() -> dict:
    """configs.common.MODEL_SIZES, with a clear message where ml_collections is missing."""
    try:
        from configs.common import MODEL_SIZES
    except ModuleNotFoundError as e:  # the GPU image has no ml_collections
        raise SystemExit(
            f"bench: cannot import configs.common ({e}). Install ml-collections (see "
            "scripts/bench_gpu.sh: carried wheels in .whl/) or import it lazily there."
        ) from e
    return MODEL_SIZES


def model_config(size: str, **overrides) -> ModelConfig:
    """ModelConfig of a named size (configs/common.py) without going through a ConfigDict."""
    sizes = model_sizes()
    if size not in sizes:
        raise SystemExit(f"bench: unknown --size {size!r}; known: {sorted(sizes)}")
    return ModelConfig(**{**sizes[size], **overrides})


def device_summary() -> dict:
    d = jax.devices()[0]
    return dict(
        platform=d.platform,
        device_kind=d.device_kind,
        devices=jax.device_count(),
        jax=jax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", "(default)"),
        host_cpus=os.cpu_count(),
        load_avg_1min=os.getloadavg()[0],  # other jobs on the host: read absolute numbers with it
    )


def peak_flops() -> tuple[float, str]:
    """(FLOP/s of the whole run, where the number comes from)."""
    if jax.devices()[0].platform == "cpu":
        return setup_lib.measured_cpu_matmul_flops(), "measured: jax 1024² fp32 matmul"
    return setup_lib.total_peak_flops(), f"datasheet dense bf16 × {jax.device_count()}"


def measure_host_bandwidth(n_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s of a large NumPy copy (reads n_bytes, writes n_bytes); best of `repeats`."""
    src = np.ones(n_bytes // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def measure_device_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of an on-device copy (x + 0 reads and writes n_bytes each); best of `repeats`."""
    x = jnp.zeros((n_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 0.0)
    copy(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * x.nbytes / best


def peak_bandwidth() -> tuple[float, str]:
    """(Memory bandwidth of one device in bytes/s, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for prefix, bw in PEAK_BANDWIDTH.items():
        if kind.startswith(prefix):
            return bw, "datasheet"
    if jax.devices()[0].platform == "cpu":
        return measure_host_bandwidth(), "measured: 256 MiB NumPy copy"
    return measure_device_bandwidth(), "measured: 1 GiB device copy"


# ---------------------------------------------------------------------------- train step


def lm_batch(batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict:
    """Random next-token rows, one document per row (segment 1 everywhere), all tokens scored."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(8, vocab_size, size=(batch, seq + 1), dtype=np.int32)
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
    ones = np.ones((batch, seq), np.int32)
    return dict(
        tokens=ids[:, :-1],
        targets=ids[:, 1:],
        positions=positions,
        segment_ids=ones,
        loss_mask=ones,
    )


def make_mesh():
    """All devices on the fsdp axis (one device on a plain CPU)."""
    return sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})


def init_params(cfg: ModelConfig, mesh, seed: int = 0):
    """(params, shardings) of Transformer(cfg), initialised directly sharded."""
    setup = setup_lib.Setup(cfg, mesh, sharding.make_rules())
    return setup, *setup.init_params(seed)


def jax_train_runner(cfg: ModelConfig, batch_np: dict, seed: int = 0):
    """(runner, seconds of the first call) for the project's jitted train step.

    The first call traces, compiles and runs once; its time minus the steady step time is the
    compile time. The state is donated each step, so the runner carries it along.
    """
    mesh = make_mesh()
    setup, params, params_sh = init_params(cfg, mesh, seed)
    optim = types.SimpleNamespace(**BENCH_OPTIM)
    state, state_sh, tx = setup_lib.make_train_state(setup, params, params_sh, optim, 10_000, seed)
    del params
    step = make_train_step(
        losses.make_lm_loss(setup.model()), tx, optim.grad_accum, state_sh, mesh, setup.rules
    )
    batch = jax.device_put(batch_np, sharding.batch_sharding(mesh))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return metrics

    start = time.perf_counter()
    metrics = run()
    first_s = time.perf_counter() - start
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"bench: non-finite loss {float(metrics['loss'])} in the jax step")
    return run, first_s


# ------------------------------------------------------------------------------- sampler


def random_prompts(batch: int, prompt_len: int, vocab_size: int, seed: int = 0):
    """Left-padded (tokens, positions, segment_ids) of random lengths in [prompt_len/2, P]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch)
    lengths[0] = prompt_len  # the block is exactly prompt_len wide
    prompts = [rng.integers(8, vocab_size, size=n).tolist() for n in lengths]  # no special ids
    return sampler.left_pad(prompts, pad_id=0, length=prompt_len)


def sampling_params(cfg: ModelConfig, seed: int = 0, dtype: str | None = None):
    """Random parameters on one device for decoding, stored in `dtype` (default: compute dtype).

    Serving keeps weights in the compute dtype: in bf16 a decode step reads 2 bytes per
    parameter, not the 4 of fp32 master weights.
    """
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    _, params, _ = init_params(cfg, mesh, seed)
    dt = jnp.dtype(dtype or cfg.compute_dtype)
    return jax.tree.map(lambda x: x.astype(dt), params)


def jax_generate_runner(cfg: ModelConfig, params, prompts, new_tokens: int):
    """(runner, compile seconds) of the compiled greedy `generate` on one device, no stop.

    Greedy and no stop ids, as the Hugging Face baseline (min_new_tokens = max_new_tokens), so
    every row decodes exactly `new_tokens` steps.
    """
    generate = sampler.make_generate(cfg, new_tokens, greedy=True, stop_ids=())
    args = (params, *prompts, jax.random.key(0))
    start = time.perf_counter()
    compiled = generate.jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(*args))

    out = run()  # warm-up: first-run allocations
    if int(out.lengths_B.min()) != new_tokens:
        raise RuntimeError("bench: the stop is disabled, every row must decode new_tokens")
    return run, compile_s


def bytes_per_decode_step(cfg: ModelConfig, params, batch: int, slots: int) -> tuple[int, int]:
    """(parameter bytes, KV-cache bytes) one decode step must read.

    The KV cache is counted whole (slots = P + T - 1): attention reads every slot, masked.
    """
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    kv_bytes = (
        2
        * cfg.n_layers
        * batch
        * slots
        * cfg.n_kv_heads
        * cfg.head_dim
        * jnp.dtype(cfg.compute_dtype).itemsize
    )
    return param_bytes, kv_bytes
