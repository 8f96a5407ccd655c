"""Attention math of model/transformer.py: RoPE, the segment/causal mask, grouped-query attention
(head-major einsums; one-query decode form; causal query chunks for training) and the in-place
KV-cache write. Pure functions of arrays: no parameters live here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(cfg) -> np.ndarray:
    """Inverse frequencies [H/2] (fp32) computed as Hugging Face computes them, so imported
    checkpoints match: 1 / θ^(2i/H) in fp32 (θ^(-2i/H) in XLA lands 10–13 ulp away when H is
    not a power of two, which shows in logits past ~10k positions), then the rope_type's
    scaling (transformers' modeling_rope_utils: linear, llama3)."""
    h = cfg.head_dim
    exponents = np.arange(0, h, 2).astype(np.float32) / h
    # torch's fp32 pow is correctly rounded here and numpy's fp32 pow is not: round from fp64
    powers = (np.float64(cfg.rope_theta) ** exponents.astype(np.float64)).astype(np.float32)
    inv = np.float32(1.0) / powers
    if cfg.rope_type == "linear":
        return (inv / cfg.rope_factor).astype(np.float32)
    if cfg.rope_type == "llama3":
        return _llama3_scaling(inv, cfg)
    return inv


def _llama3_scaling(inv, cfg):
    """Llama 3.1: wavelengths above original/low_freq_factor are stretched by `factor`, those
    below original/high_freq_factor kept, the band between interpolated smoothly. Python
    scalars against fp32 arrays, as transformers does it (numpy ≥ 2 keeps them weak)."""
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_max_len
    rdiv = lambda scalar, x: (1 / x) * scalar  # torch's scalar / tensor: reciprocal, multiply
    wavelen = rdiv(2 * math.pi, inv)
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (rdiv(old, wavelen) - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_sin_cos(positions_BxL, inv_freq):
    """(sin, cos) [B, L, 1, H/2] fp32 of the rotary angles, computed once per forward and
    shared by every layer's queries and keys.

    The table goes through a dot with the identity, which is exact and keeps it one buffer:
    XLA fuses elementwise producers into their consumers (and sinks them into loops), so a
    plain sin/cos was recomputed for every head of every layer's q and k and again in their
    gradients, about a tenth of the tiny PPO update (docs/performance.md). A dot is never
    fused into an elementwise consumer; an optimization_barrier is dropped by XLA:CPU before
    fusion.
    """
    angles_BxLxH2 = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    b, length, half = angles_BxLxH2.shape
    table = jnp.concatenate([jnp.sin(angles_BxLxH2), jnp.cos(angles_BxLxH2)], -1)
    table = jnp.dot(table.reshape(-1, 2 * half), jnp.eye(2 * half, dtype=jnp.float32))
    table = table.reshape(b, length, 1, 2 * half)
    return table[..., :half], table[..., half:]


def apply_rope(x_BxLxNxH, sin_cos):
    """Rotary embedding, rotate-half convention (as Hugging Face Llama), in fp32; sin_cos from
    rope_sin_cos(positions, rope_frequencies(cfg))."""
    sin, cos = sin_cos
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


def attention_mask(q_slots_BxL, q_segs_BxL, k_slots_BxS, k_segs_BxS):
    """[B,1,L,S] boolean: causal over buffer slots, same segment, never padding (segment 0)."""
    causal = k_slots_BxS[:, None, :] <= q_slots_BxL[:, :, None]
    same = (q_segs_BxL[:, :, None] == k_segs_BxS[:, None, :]) & (k_segs_BxS[:, None, :] != 0)
    return (causal & same)[:, None]


def grouped_attention(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xLxS):
    """softmax(q·kᵀ/√H + mask)·v with the N query heads grouped over the K kv heads (GQA).

    Keys and values head-major (the KV-cache layout); head-major einsums, scores and softmax in
    fp32. On CPU this is ~2× faster than jax.nn.dot_product_attention's XLA path, which vmaps
    over the group axis (docs/performance.md). A row with no visible key (padding) gets uniform
    weights, not NaN.
    """
    b, length, n, h = q_BxLxNxH.shape
    kh = k_BxKxSxH.shape[1]
    if length == 1:
        return _decode_attention(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xLxS)
    q_BxLxKxGxH = q_BxLxNxH.reshape(b, length, kh, n // kh, h)
    out_BxLxKxGxH = _einsum_attention(
        "blkgh,bksh->bkgls",
        "bkgls,bksh->blkgh",
        q_BxLxKxGxH,
        k_BxKxSxH,
        v_BxKxSxH,
        mask_Bx1xLxS[:, :, None],
    )
    return out_BxLxKxGxH.reshape(b, length, n, h)


def _einsum_attention(qk_eq, pv_eq, q, k, v, mask):
    """softmax(q·kᵀ/√H masked) · v through two einsums, scores and softmax in fp32; the layouts
    are the caller's (they decide which batched dots XLA:CPU emits)."""
    scores = jnp.einsum(qk_eq, q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum(pv_eq, probs, v)


def _decode_attention(q_Bx1xNxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1x1xS):
    """grouped_attention for one query per row (a decode step): the same math, with the query
    length squeezed out of both einsums.

    With L = 1 the general einsums ("blkgh,bksh->bkgls", then "...->blkgh") make XLA:CPU pick a
    transposed batched dot for probs·v (~1/4 of the tiny generate's op time); batch-leading
    "bkgh,bksh->bkgs" / "bkgs,bksh->bkgh" run as plain batched matrix products
    (docs/performance.md).
    """
    b, _, n, h = q_Bx1xNxH.shape
    kh = k_BxKxSxH.shape[1]
    q_BxKxGxH = q_Bx1xNxH.reshape(b, kh, n // kh, h)
    out_BxKxGxH = _einsum_attention(
        "bkgh,bksh->bkgs", "bkgs,bksh->bkgh", q_BxKxGxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1x1xS
    )
    return out_BxKxGxH.reshape(b, 1, n, h)


def attend(kind, q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xLxS):
    """The attention op of ModelConfig.attention on head-major keys/values."""
    if kind == "einsum":
        return grouped_attention(q_BxLxNxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xLxS)
    k, v = jnp.swapaxes(k_BxKxSxH, 1, 2), jnp.swapaxes(v_BxKxSxH, 1, 2)
    return jax.nn.dot_product_attention(q_BxLxNxH, k, v, mask=mask_Bx1xLxS)


def causal_chunked_attention(kind, q_BxLxNxH, k_BxKxLxH, v_BxKxLxH, segs_BxL, chunk):
    """attend(kind, q, k, v, attention_mask(slots, segs, slots, segs)) for slots = 0..L-1
    (training, no cache), in query chunks of `chunk`: the queries [a, b) see only keys [0, b),
    since every later key is causally masked for all of them. Skips the masked upper triangle
    (at L = 256, chunk 64: 5/8 of the score work is left; docs/performance.md).

    A query that sees no key (padding, segment 0) gets uniform weights over all L keys, as in the
    unchunked op (its chunk alone would give the mean over the chunk's keys), so the outputs are
    the same everywhere. With kind "einsum" the queries are made head-major [B, K, G, L, H] once
    and the chunks' outputs joined head-major, so no chunk transposes its own slices.
    """
    b, length, n, h = q_BxLxNxH.shape
    kh = k_BxKxLxH.shape[1]
    slots_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
    if kind == "einsum":
        q_BxKxGxLxH = q_BxLxNxH.reshape(b, length, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    outs = []
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        mask = attention_mask(
            slots_BxL[:, start:end], segs_BxL[:, start:end], slots_BxL[:, :end], segs_BxL[:, :end]
        )
        k, v = k_BxKxLxH[:, :, :end], v_BxKxLxH[:, :, :end]
        if kind == "einsum":
            outs.append(_head_major_attention(q_BxKxGxLxH[:, :, :, start:end], k, v, mask))
        else:
            outs.append(attend(kind, q_BxLxNxH[:, start:end], k, v, mask))
    mean_v_BxKxH = jnp.mean(v_BxKxLxH, axis=2)  # what uniform weights over all L keys give
    if kind == "einsum":
        out = jnp.concatenate(outs, axis=3)
        out = jnp.where(
            (segs_BxL != 0)[:, None, None, :, None],
            out,
            mean_v_BxKxH[:, :, None, None].astype(out.dtype),
        )
        return out.transpose(0, 3, 1, 2, 4).reshape(b, length, n, h)
    out = jnp.concatenate(outs, axis=1)
    mean_v_BxNxH = jnp.repeat(mean_v_BxKxH, n // kh, axis=1).astype(out.dtype)
    return jnp.where((segs_BxL != 0)[:, :, None, None], out, mean_v_BxNxH[:, None])


def _head_major_attention(q_BxKxGxLxH, k_BxKxSxH, v_BxKxSxH, mask_Bx1xLxS):
    """grouped_attention with head-major queries and output [B, K, G, L, H]."""
    return _einsum_attention(
        "bkglh,bksh->bkgls",
        "bkgls,bksh->bkglh",
        q_BxKxGxLxH,
        k_BxKxSxH,
        v_BxKxSxH,
        mask_Bx1xLxS[:, :, None],
    )


def cache_write_read(buf_BxKxSxH, new_BxKxLxH, index):
    """Writes one layer's new keys (or values) into its own cache buffer, in place, and returns
    the buffer, which attention then reads whole.

    Each layer has its own [B, K, S, H] buffer (model/transformer.py init_cache): from one
    stacked [layers, ...] buffer, every decode step copied each layer's whole cache out to
    read it (a quarter of the 20m decode step, docs/performance.md).
    """
    zero = jnp.zeros((), jnp.int32)
    start = (zero, zero, jnp.asarray(index, jnp.int32), zero)
    return jax.lax.dynamic_update_slice(buf_BxKxSxH, new_BxKxLxH.astype(buf_BxKxSxH.dtype), start)
