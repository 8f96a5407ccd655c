"""PyTorch baselines of the benchmarks (benchmark-only: requirements-bench.txt).

- `TorchLlama`: the same decoder as model/transformer.py in plain PyTorch — token embedding,
  pre-norm blocks of RMSNorm → attention (RoPE rotate-half, GQA, causal SDPA) → RMSNorm →
  SwiGLU MLP, final RMSNorm, untied (or tied, as the config says) LM head; no biases; fp32.
- `torch_train_runner`: one AdamW step on it (summed token cross-entropy / tokens, global-norm
  clipping, decoupled weight decay on matrices only: the update train/optim.py makes).
- `hf_generate_runner`: Hugging Face `LlamaForCausalLM.generate` with the same architecture,
  random init, greedy, KV cache, min_new_tokens = max_new_tokens (never stops early).

The baselines use PyTorch's fast path for plain causal attention (`is_causal=True`), where
the JAX model builds a general segment mask (packing, padding): the baseline does less work.
"""

import math
import os
import time

# OpenMP's default active spin-wait collapses when the cores are shared (on the 2-core machine
# with other jobs, 2-thread eager steps ran ~5x slower than with PASSIVE); must be set before
# torch loads libgomp. An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig  # noqa: E402


def threads() -> dict:
    return dict(
        torch_matmul_flops=torch_matmul_flops(),
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        torch=torch.__version__,
    )


def torch_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Median FLOP/s of an n×n fp32 matmul in PyTorch (compare: train.setup's jax number)."""
    a = torch.randn(n, n)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times))


def rope_tables(seq: int, head_dim: int, theta: float):
    """cos, sin [seq, head_dim]: angle p·θ^(-2i/h), repeated over both halves (rotate-half)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(seq, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x_BxNxLxH, cos, sin):
    x1, x2 = x_BxNxLxH.chunk(2, dim=-1)
    return x_BxNxLxH * cos + torch.cat([-x2, x1], dim=-1) * sin


class TorchBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.head_dim
        self.cfg = cfg
        self.input_layernorm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * h, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * h, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * h, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * h, d, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.gate_proj = nn.Linear(d, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(d, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, x_BxLxD, cos, sin):
        cfg, (b, length, _) = self.cfg, x_BxLxD.shape
        h = self.input_layernorm(x_BxLxD)
        q = self.q_proj(h).view(b, length, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = cfg.n_heads != cfg.n_kv_heads
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        x_BxLxD = x_BxLxD + self.o_proj(out.transpose(1, 2).reshape(b, length, -1))
        h = self.post_attention_layernorm(x_BxLxD)
        return x_BxLxD + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TorchLlama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(TorchBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, tokens_BxL):
        cos, sin = rope_tables(tokens_BxL.shape[1], self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed_tokens(tokens_BxL)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def make_adamw(model: nn.Module, optim: dict):
    """torch.optim.AdamW with decay on matrices only (as train/optim.py's mask)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        dict(params=[p for p in params if p.ndim >= 2], weight_decay=optim["weight_decay"]),
        dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0),
    ]
    return torch.optim.AdamW(
        groups, lr=optim["lr"], betas=(optim["b1"], optim["b2"]), eps=optim["eps"]
    )


def torch_train_runner(
    cfg: ModelConfig, batch_np: dict, optim: dict, seed: int = 0, compile_model: bool = False
):
    """(runner, seconds of the first call) for one eager (or torch.compile'd) AdamW step."""
    torch.manual_seed(seed)
    model = TorchLlama(cfg)
    forward = torch.compile(model) if compile_model else model
    opt = make_adamw(model, optim)
    tokens = torch.from_numpy(np.asarray(batch_np["tokens"], np.int64))
    targets = torch.from_numpy(np.asarray(batch_np["targets"], np.int64))
    mask = torch.from_numpy(np.asarray(batch_np["loss_mask"], np.float32))
    weight = mask.sum().clamp(min=1.0)

    def run():
        opt.zero_grad(set_to_none=True)
        logits = forward(tokens)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (nll * mask.flatten()).sum() / weight
        loss.backward()
        if optim["clip_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim["clip_norm"])
        opt.step()
        return loss.detach()

    start = time.perf_counter()
    loss = run()
    first_s = time.perf_counter() - start
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"bench: non-finite loss {float(loss)} in the torch step")
    return run, first_s


def hf_llama(cfg: ModelConfig, seed: int = 0):
    """A random-init transformers LlamaForCausalLM of the same shapes (no hub access)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.qkv_bias,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_cfg).eval()


def hf_generate_runner(cfg: ModelConfig, prompts, new_tokens: int, seed: int = 0, model=None):
    """Runner of `generate` on the left-padded numpy prompts (tokens, positions, segment_ids);
    `model`: an hf_llama to run instead of a random one (the tests load jaxchat's weights)."""
    model = hf_llama(cfg, seed) if model is None else model
    tokens, _, segment_ids = prompts
    input_ids = torch.from_numpy(np.asarray(tokens, np.int64))
    attention_mask = torch.from_numpy((np.asarray(segment_ids) != 0).astype(np.int64))
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=0,
    )

    @torch.inference_mode()
    def run():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    out = run()  # warm-up
    if out.shape[1] != input_ids.shape[1] + new_tokens:
        raise RuntimeError(
            f"bench: HF generate returned {out.shape[1] - input_ids.shape[1]} "
            f"new tokens, expected {new_tokens}"
        )
    return run
