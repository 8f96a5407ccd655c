"""Decoder-only Transformer (Llama family) in Flax Linen, used purely functionally.

    logits_BxLxV = Transformer(cfg).apply({"params": p}, tokens_BxL, positions_BxL, segment_ids_BxL)

Every token carries an explicit position (RoPE) and segment id: tokens attend only to earlier
tokens of the same segment, and segment 0 is padding that nothing attends to. Decoding passes a
KV cache (see `init_cache`): the call then also returns the updated cache.

Parameter names follow Hugging Face Llama (embed_tokens, layers/self_attn/q_proj, mlp/gate_proj,
input_layernorm, post_attention_layernorm, norm, lm_head); kernels are stored [in, out] with
heads split out, so an import is a reshape and a transpose.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import (
    apply_rope,
    attend,
    attention_mask,
    cache_write_read,
    causal_chunked_attention,
    rope_frequencies,
    rope_sin_cos,
)
from model.config import ModelConfig

# {"k": a tuple of one [B,K,S,H] buffer per layer, "v": same, "segment_ids": [B,S],
#  "index": int32 scalar}
Cache = dict

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _param(init, *names):
    return nn.with_logical_partitioning(init, names)


def over_rows(fn, x):
    """fn applied to x as one [tokens, features] matrix, the leading dims restored after.

    The same numbers as fn(x); why: with x [B, L, D], a projection's weight gradient contracts
    two dimensions (B and L), and XLA:CPU then lays the output gradient out transposed, in a
    copy as large as the activation, before the dot (about 30% of an MLP block's backward at
    20m, docs/performance.md). With one token dimension the backward is two plain matmuls."""
    lead = x.shape[:-1]
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, *y.shape[1:])


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", _param(nn.initializers.ones, "norm"), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale).astype(self.dtype)


class HeadsProj(nn.Module):
    """Token rows x[T,D] @ kernel[D,N,H] (+ bias[N,H]) -> [T,N,H], or back with `out=True`:
    x[B,L,N,H] @ kernel[N,H,D] -> [B,L,D].

    A DenseGeneral whose parameters carry logical names on their real (unflattened) shape.
    """

    cfg: ModelConfig
    heads: int
    heads_name: str
    bias: bool = False
    out: bool = False

    @nn.compact
    def __call__(self, x):
        cfg, init = (
            self.cfg,
            nn.initializers.lecun_normal(
                in_axis=(0, 1) if self.out else 0, out_axis=-1 if self.out else (1, 2)
            ),
        )
        if self.out:
            shape, names, eq = (
                (self.heads, cfg.head_dim, cfg.d_model),
                (self.heads_name, "head_dim", "embed"),
                "tnh,nhd->td",
            )
        else:
            shape, names, eq = (
                (cfg.d_model, self.heads, cfg.head_dim),
                ("embed", self.heads_name, "head_dim"),
                "td,dnh->tnh",
            )
        kernel = self.param("kernel", _param(init, *names), shape).astype(cfg.dtype)
        x = x.astype(cfg.dtype)
        if self.out:  # [B, L, N, H] -> rows of N*H features, back to [B, L, D]
            y = over_rows(lambda r: jnp.einsum(eq, r.reshape(-1, *shape[:2]), kernel),
                          x.reshape(*x.shape[:-2], -1))
        else:  # x: token rows [T, D] (Attention flattens once for q, k and v)
            y = jnp.einsum(eq, x, kernel)
        if self.bias:  # [N, H] on the way in, [D] on the way out
            axes = slice(2, None) if self.out else slice(1, None)
            bias = self.param("bias", _param(nn.initializers.zeros, *names[axes]), shape[axes])
            y = y + bias.astype(cfg.dtype)
        return y


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD, rope, segs_BxL, slots_BxL, kv_cache):
        cfg = self.cfg
        n, k_heads, bias = cfg.n_heads, cfg.n_kv_heads, cfg.qkv_bias
        b, length, d = x_BxLxD.shape
        rows = x_BxLxD.reshape(b * length, d)  # one reshape for all three (see over_rows)
        q = HeadsProj(cfg, n, "q_heads", bias, name="q_proj")(rows).reshape(b, length, n, -1)
        k = HeadsProj(cfg, k_heads, "kv_heads", bias, name="k_proj")(rows)
        v = HeadsProj(cfg, k_heads, "kv_heads", bias, name="v_proj")(rows)
        k, v = k.reshape(b, length, k_heads, -1), v.reshape(b, length, k_heads, -1)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", "head_dim"))
        # Keys/values head-major [B, K, S, H]: the cache layout, so decoding reads the cache
        # without transposing it every step (docs/performance.md).
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        k_slots, k_segs = slots_BxL, segs_BxL
        if kv_cache is not None:  # write this call's keys/values at the cache index, attend to all
            k_buf, v_buf, k_segs, index = kv_cache
            k = k_buf = cache_write_read(k_buf, k, index)
            v = v_buf = cache_write_read(v_buf, v, index)
            kv_cache = (k_buf, v_buf)
            k_slots = jnp.broadcast_to(jnp.arange(k.shape[2]), k_segs.shape)
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        chunk = cfg.attention_chunk
        if kv_cache is None and 0 < chunk < q.shape[1]:  # key slots are the row positions
            out_BxLxNxH = causal_chunked_attention(cfg.attention, q, k, v, segs_BxL, chunk)
        else:
            mask = attention_mask(slots_BxL, segs_BxL, k_slots, k_segs)
            out_BxLxNxH = attend(cfg.attention, q, k, v, mask)
        out = HeadsProj(cfg, n, "q_heads", cfg.o_bias, out=True, name="o_proj")(out_BxLxNxH)
        return out, kv_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        dense = functools.partial(nn.Dense, use_bias=False, dtype=cfg.dtype)
        init_in = _param(nn.initializers.lecun_normal(), "embed", "mlp")
        rows = x_BxLxD.reshape(-1, x_BxLxD.shape[-1])  # one reshape for both (see over_rows)
        gate = dense(cfg.d_ff, kernel_init=init_in, name="gate_proj")(rows)
        up = dense(cfg.d_ff, kernel_init=init_in, name="up_proj")(rows)
        h_BxLxF = (nn.silu(gate) * up).reshape(*x_BxLxD.shape[:-1], cfg.d_ff)
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "act_mlp"))
        init_out = _param(nn.initializers.lecun_normal(), "mlp", "embed")
        return over_rows(dense(cfg.d_model, kernel_init=init_out, name="down_proj"), h_BxLxF)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD, rope, segs_BxL, slots_BxL, kv_cache):
        cfg = self.cfg
        h = RMSNorm(cfg.norm_eps, cfg.dtype, name="input_layernorm")(x_BxLxD)
        h, kv_cache = Attention(cfg, name="self_attn")(
            h, rope, segs_BxL, slots_BxL, kv_cache
        )
        x_BxLxD = x_BxLxD + h
        h = RMSNorm(cfg.norm_eps, cfg.dtype, name="post_attention_layernorm")(x_BxLxD)
        x_BxLxD = x_BxLxD + MLP(cfg, name="mlp")(h)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        return x_BxLxD, kv_cache


class ScanBlock(nn.Module):
    """Block in the (carry, per-layer input) -> (carry, per-layer output) form nn.scan wants:
    carry x, no per-layer input or output (training; decoding loops over the layers)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, shared, _):
        rope, segs, slots = shared[:3]
        block = _maybe_remat(Block, self.cfg, scanned=True)(self.cfg, name="block")
        return block(carry, rope, segs, slots, None)[0], None


def _maybe_remat(module_cls, cfg, scanned):
    if cfg.remat_policy == "none":
        return module_cls
    # prevent_cse is only needed outside scan (scan already stops CSE across iterations).
    return nn.remat(module_cls, policy=_REMAT[cfg.remat_policy], prevent_cse=not scanned)


class Transformer(nn.Module):
    """head="lm": logits_BxLxV (fp32). head="scalar": scores_BxL (fp32, reward/value)."""

    cfg: ModelConfig
    head: str = "lm"

    @nn.compact
    def __call__(self, tokens_BxL, positions_BxL, segment_ids_BxL, cache: Cache | None = None,
                 hidden: bool = False, head_columns: tuple[int, int] | None = None):
        """hidden=True (training, head "lm"): the final-norm states x_BxLxD instead of logits,
        for losses that apply the head themselves (model/vocab_parallel.py).
        head_columns=(start, n) (no cache): the head's outputs for columns start..start+n-1
        only, [B, n, ...]: PPO reads only the response's columns, and at P=48, T=32 the LM
        head over all 80 would be 2.5x the work that is used."""
        cfg = self.cfg
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.dtype,
            name="embed_tokens",
            embedding_init=_param(nn.initializers.normal(0.02), "embed_vocab", "embed"),
        )
        x_BxLxD = nn.with_logical_constraint(embed(tokens_BxL), ("batch", "length", "act_embed"))
        slots_BxL, kv, shared = self._slots_and_cache(positions_BxL, segment_ids_BxL, cache)
        x_BxLxD, new_kv = self._layers(x_BxLxD, shared, kv)
        x_BxLxD = RMSNorm(cfg.norm_eps, cfg.dtype, name="norm")(x_BxLxD)
        if hidden and cache is None:
            return x_BxLxD
        if head_columns is not None and cache is None:
            x_BxLxD = jax.lax.slice_in_dim(x_BxLxD, head_columns[0], sum(head_columns), axis=1)
        out = self._head(x_BxLxD, embed)
        if cache is None:
            return out
        new_cache = dict(
            k=new_kv[0],
            v=new_kv[1],
            segment_ids=shared[3],
            index=cache["index"] + tokens_BxL.shape[1],
        )
        return out, new_cache

    def _slots_and_cache(self, positions_BxL, segs_BxL, cache):
        """Buffer slots are indices in the row (training) or in the KV cache (decoding); the
        layers share (rope sin/cos, segments, slots, cache segments, cache index)."""
        b, length = segs_BxL.shape
        rope = rope_sin_cos(positions_BxL, rope_frequencies(self.cfg))
        if cache is None:
            slots_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
            return slots_BxL, None, (rope, segs_BxL, slots_BxL, None, None)
        index = cache["index"]
        slots_BxL = jnp.broadcast_to(index + jnp.arange(length), (b, length))
        cache_segs = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segs_BxL, index, 1)
        shared = (rope, segs_BxL, slots_BxL, cache_segs, index)
        return slots_BxL, (cache["k"], cache["v"]), shared

    def _layers(self, x_BxLxD, shared, kv):
        cfg = self.cfg
        if kv is not None:
            return self._decode_layers(x_BxLxD, shared, kv)
        rope, segs, slots = shared[:3]
        if cfg.scan_layers:
            stack = nn.scan(
                ScanBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, 0),
                length=cfg.n_layers,
                unroll=min(cfg.scan_unroll, cfg.n_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return stack(cfg, name="layers")(x_BxLxD, shared, None)[0], None
        block_cls = _maybe_remat(Block, cfg, scanned=False)
        for i in range(cfg.n_layers):
            x_BxLxD, _ = block_cls(cfg, name=f"layers_{i}")(x_BxLxD, rope, segs, slots, None)
        return x_BxLxD, None

    def _decode_layers(self, x_BxLxD, shared, kv):
        """With a KV cache: a Python loop over the layers, each writing and reading its own
        cache buffers in place. Scanned (stacked) parameters are split per layer here unless
        the caller did it once already (unstack_layers), as the sampler does before its decode
        loop: XLA does not hoist the slices out of a while loop, and slicing every step copies
        every parameter every step."""
        cfg = self.cfg
        rope, segs, slots, cache_segs, index = shared
        if cfg.scan_layers:
            per_layer = unstack_layers(self.variables["params"])["layers"]["per_layer"]
        new_k, new_v = [], []
        for i in range(cfg.n_layers):
            layer_kv = (kv[0][i], kv[1][i], cache_segs, index)
            if cfg.scan_layers:
                layer_params = per_layer[i]
                if i:  # layer i's weights (and their fsdp gathers) wait for layer i-1's output:
                    # independent per-layer collectives running at once can starve XLA:CPU's
                    # thread pool of many virtual devices (an abort on 8 devices, 2 cores)
                    x_BxLxD, layer_params = jax.lax.optimization_barrier((x_BxLxD, layer_params))
                block = functools.partial(Block(cfg).apply, {"params": layer_params})
            else:
                block = Block(cfg, name=f"layers_{i}")
            x_BxLxD, (k_buf, v_buf) = block(x_BxLxD, rope, segs, slots, layer_kv)
            new_k.append(k_buf)
            new_v.append(v_buf)
        return x_BxLxD, (tuple(new_k), tuple(new_v))

    def _head(self, x_BxLxD, embed):
        cfg = self.cfg
        if self.head == "scalar":
            score = nn.Dense(
                1,
                dtype=jnp.float32,
                name="score",
                kernel_init=_param(
                    nn.initializers.normal(1.0 / (cfg.d_model + 1) ** 0.5), "embed", None
                ),
                bias_init=_param(nn.initializers.zeros, None),
            )
            return over_rows(score, x_BxLxD.astype(jnp.float32))[..., 0]
        if cfg.tie_embeddings:
            logits = over_rows(embed.attend, x_BxLxD)
        else:
            logits = over_rows(nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.dtype,
                name="lm_head",
                kernel_init=_param(nn.initializers.normal(cfg.d_model**-0.5), "embed", "vocab"),
            ), x_BxLxD)
        return nn.with_logical_constraint(
            logits.astype(jnp.float32), ("batch", "length", "act_vocab")
        )


def unstack_layers(params):
    """Scanned params with the stacked layers split into a tuple, {"layers": {"per_layer":
    (layer 0's tree, ...)}}, for decoding (Transformer with a cache reads either form)."""
    layers = params.get("layers")
    if layers is None or "per_layer" in layers:
        return params
    stacked = layers["block"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    per_layer = tuple(jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(n))
    return {**params, "layers": {"per_layer": per_layer}}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> Cache:
    """Empty head-major KV cache for `length` slots: k and v are tuples of one [B, K, S, H]
    buffer per layer (see cache_write_read); segment 0 marks slots nothing may attend to."""
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    dtype = dtype or cfg.dtype
    layers = range(cfg.n_layers)
    return dict(
        k=tuple(jnp.zeros(shape, dtype) for _ in layers),
        v=tuple(jnp.zeros(shape, dtype) for _ in layers),
        segment_ids=jnp.zeros((batch, length), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )
