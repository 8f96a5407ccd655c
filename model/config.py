"""ModelConfig: the one frozen description of a Transformer, built from a ConfigDict in one place.

Also the analytic parameter count and training FLOPs per token, which the estimator, the
training loop (MFU) and the tests share.
"""

import dataclasses

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    rope_theta: float = 10000.0
    # RoPE frequency scaling, as Hugging Face's rope_type: "default", "linear" (positions / factor)
    # or "llama3" (Llama 3.1/3.2: low frequencies / factor, a smooth band between).
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_len: int = 8192  # llama3 only: the context the base model was trained at
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False  # Llama's attention_bias also biases the output projection
    # The longest sequence the checkpoint supports (Hugging Face max_position_embeddings): a
    # limit checked against max_seq_len, never used to size caches. 0: max_seq_len itself.
    max_position_embeddings: int = 0
    # Attention window of the checkpoint (Mistral v0.1): no window mask is implemented, so
    # max_seq_len may not exceed it (within the window the model is exact). 0: none.
    sliding_window: int = 0
    compute_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = True
    # "einsum": grouped head-major einsums (fastest on CPU); "dot_product":
    # jax.nn.dot_product_attention (lets jax pick a fused kernel where one applies).
    attention: str = "einsum"
    # Training without a KV cache: queries in chunks of this many, each chunk attending only to
    # the keys up to its own end (skips the masked upper triangle; exact). 0: off. A CPU choice
    # (configs/common.py sets it for the CPU sizes); decoding never chunks.
    attention_chunk: int = 0
    # Training without a KV cache: layers unrolled inside the nn.scan (same stacked parameters):
    # 1 keeps a loop; n_layers unrolls it fully (no loop, no zero-filled stacked residuals).
    # Decoding always keeps the loop.
    scan_unroll: int = 1
    # Cross-entropy of pretraining and SFT from model/vocab_parallel.py (vocabulary over the
    # "tensor" axis, tokens in chunks of this many per batch shard, no [tokens, vocab] logits)
    # instead of the full logits. 0: the full logits.
    vocab_parallel_chunk: int = 0

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be a multiple of "
                f"model.n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r} not in {REMAT_POLICIES}")
        if self.attention not in ("einsum", "dot_product"):
            raise ValueError(f"model.attention={self.attention!r}: 'einsum' or 'dot_product'")
        if self.attention_chunk < 0:
            raise ValueError(f"model.attention_chunk={self.attention_chunk} must be >= 0")
        if self.vocab_parallel_chunk < 0:
            raise ValueError(
                f"model.vocab_parallel_chunk={self.vocab_parallel_chunk} must be >= 0")
        if self.scan_unroll < 1:
            raise ValueError(f"model.scan_unroll={self.scan_unroll} must be >= 1")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"model.rope_type={self.rope_type!r} not in {ROPE_TYPES}")
        if self.max_position_embeddings and self.max_seq_len > self.max_position_embeddings:
            raise ValueError(
                f"model.max_seq_len={self.max_seq_len} exceeds the checkpoint's "
                f"model.max_position_embeddings={self.max_position_embeddings}"
            )
        if self.sliding_window and self.max_seq_len > self.sliding_window:
            raise ValueError(
                f"model.max_seq_len={self.max_seq_len} exceeds model.sliding_window="
                f"{self.sliding_window}: sliding-window attention is not implemented, so keep "
                "sequences within the window (where the model is exact)"
            )
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"model.compute_dtype={self.compute_dtype!r} not in {tuple(DTYPES)}")

    @classmethod
    def from_config(cls, cfg) -> "ModelConfig":
        """Builds from a ConfigDict (or dict) holding exactly the dataclass fields."""
        values = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown model config keys: {', '.join('model.' + k for k in unknown)}"
            )
        return cls(**values)

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]

    def param_count(self, head: str = "lm") -> int:
        """Exact number of parameters of `Transformer(self, head)`."""
        d, h = self.d_model, self.head_dim
        attn = d * h * (2 * self.n_heads + 2 * self.n_kv_heads)
        if self.qkv_bias:
            attn += h * (self.n_heads + 2 * self.n_kv_heads)
        if self.o_bias:
            attn += d
        per_layer = attn + 3 * d * self.d_ff + 2 * d
        total = self.vocab_size * d + self.n_layers * per_layer + d
        if head == "lm":
            total += 0 if self.tie_embeddings else d * self.vocab_size
        else:
            total += d + 1
        return total

    def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
        """Training FLOPs per token: 6·N (matmul parameters) + attention scores and values.

        N excludes the embedding lookup (no matmul) but includes the LM head. Attention adds
        12·n_layers·n_heads·head_dim·seq_len per token (forward 4·, backward 8·; PaLM appendix B),
        halved when causal because only the lower triangle is computed by a fused kernel.
        """
        n_matmul = self.param_count("lm") - self.vocab_size * self.d_model
        if self.tie_embeddings:
            n_matmul += self.vocab_size * self.d_model
        attn = 12 * self.n_layers * self.n_heads * self.head_dim * seq_len
        return 6.0 * n_matmul + (attn / 2 if causal else attn)
