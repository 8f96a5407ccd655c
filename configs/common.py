"""Shared config pieces: named model sizes, mesh, optimizer, training loop.

Every experiment file builds its ConfigDict from these and locks it, so a typo in an override
(`--config.optim.lrr=1`) is an error instead of a silently ignored key.
"""

import ml_collections

# Named model sizes. d_ff of the SwiGLU MLP is ~8/3·d (three matrices instead of two).
#
# The CPU sizes (tiny, 20m) also pick the train-step layout that is fastest on a CPU: causal
# query-chunked attention (attention_chunk=64) and the layer scan fully unrolled (scan_unroll =
# n_layers: no loop, same stacked parameters). Both only change training (no KV cache), give the
# same outputs and gradients as the defaults (tests/test_model.py), and made the train step
# faster on 2 CPU cores (docs/performance.md, "CPU train step: chunked attention, unrolled
# scan"). The larger sizes keep the plain path (attention="dot_product" stays available).
MODEL_SIZES = {
    # CPU laptop default: ~1.3M parameters, trains in minutes on 2 cores.
    "tiny": dict(
        vocab_size=2048,
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=352,
        max_seq_len=256,
        attention_chunk=64,
        scan_unroll=4,
    ),
    # Unit tests: compiles in about a second.
    "test": dict(
        vocab_size=320,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_ff=64,
        max_seq_len=64,
    ),
    # ~20M parameters (benchmarks against PyTorch on CPU).
    "20m": dict(
        vocab_size=8192,
        d_model=384,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        head_dim=64,
        d_ff=1024,
        max_seq_len=512,
        attention_chunk=64,
        scan_unroll=6,
    ),
    "125m": dict(
        vocab_size=32000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        head_dim=64,
        d_ff=2048,
        max_seq_len=2048,
    ),
    # Llama-3.2-1B shapes with a 32k vocabulary.
    "1b": dict(
        vocab_size=32000,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        d_ff=8192,
        max_seq_len=2048,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    # Llama-2-7B shapes.
    "7b": dict(
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        d_ff=11008,
        max_seq_len=4096,
    ),
    # GPT-3 175B shapes (Brown et al. 2020, table 2.1). GPT-3's MLP has two d×4d matrices; the
    # SwiGLU here has three, so d_ff = 2/3·4d keeps the parameter count (174.6B).
    "gpt3_175b": dict(
        vocab_size=50257,
        d_model=12288,
        n_layers=96,
        n_heads=96,
        n_kv_heads=96,
        head_dim=128,
        d_ff=32768,
        max_seq_len=2048,
        tie_embeddings=True,  # GPT-3 ties input and output embeddings
    ),
}


def model_config(size: str, **overrides) -> ml_collections.ConfigDict:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(MODEL_SIZES)}")
    cfg = dict(
        rope_theta=10000.0,
        rope_type="default",
        rope_factor=1.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_len=8192,
        norm_eps=1e-5,
        tie_embeddings=False,
        qkv_bias=False,
        o_bias=False,
        max_position_embeddings=0,
        sliding_window=0,
        compute_dtype="float32",
        remat_policy="none",
        scan_layers=True,
        attention="einsum",
        attention_chunk=0,
        scan_unroll=1,
        vocab_parallel_chunk=0,
    )
    cfg.update(MODEL_SIZES[size])
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def mesh_config(data=1, fsdp=-1, tensor=1) -> ml_collections.ConfigDict:
    """Mesh sizes (one may be -1: all remaining devices) and logical-rule overrides."""
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules={}))


def optim_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        lr=3e-3,
        warmup_steps=50,
        min_lr_ratio=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        clip_norm=1.0,
        grad_accum=1,
        adam_style="pytorch",
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def train_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        steps=1000,
        log_every=10,
        eval_every=200,
        eval_batches=8,
        ckpt_every=200,
        keep_ckpts=2,
        sample_every=0,
        sample_tokens=48,
        async_checkpoint=True,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def lock(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    cfg.lock()
    return cfg


def imported(run_dir: str) -> tuple[ml_collections.ConfigDict, str, dict]:
    """(model config, tokenizer path, hf facts) of a folder scripts.import_hf wrote, for the
    configs/*/hf.py files: the stages then build exactly the imported model."""
    import json
    import os

    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: import a model first "
            f"(python -m scripts.import_hf --hf_dir <model folder> --workdir {run_dir})")
    with open(path) as f:
        cfg = json.load(f)
    return ml_collections.ConfigDict(cfg["model"]), cfg["data"]["tokenizer"], cfg.get("hf", {})
