"""Token log-probs without the [N, V] fp32 logits: the vocabulary sharded over "tensor"
(Megatron's vocab-parallel cross-entropy) and the tokens taken in chunks.

    lse, target, entropy = vocab_parallel_stats(h_NxD, w_DxV, targets_N, mesh)
    logp = target - lse                   # log softmax(h @ w / T)[target]
    lse, target, entropy = dense_stats(h_NxD, w_DxV, targets_N)   # the twin it must equal

Per chunk of C tokens, each "tensor" shard computes its slice of the logits, h_C @ w[:, shard]
(fp32, / temperature), and three reductions go across the shards:
  m   = pmax of the local maxima (held constant in the backward pass: the log-sum-exp's
        gradient does not depend on the shift),
  lse = m + log psum Σ_v exp(x_v − m),
  the target's logit = psum of the one shard that holds it (0 elsewhere),
  entropy = lse − psum Σ_v p_v x_v.
The chunk body is rematerialised (`jax.checkpoint`), so the backward pass recomputes each
chunk's logits instead of keeping them: peak memory holds one chunk's [C, V / tensor] slice.
A vocabulary that does not divide the shard count is padded with columns that are masked out
(−inf logits, zero probability). Rows are sharded over ("data", "fsdp") as every batch is.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

ROWS = ("data", "fsdp")


def dense_stats(h_NxD, w_DxV, targets_N, temperature: float = 1.0):
    """(log-sum-exp, target logit, entropy) per token from the full logits (the reference)."""
    x = (h_NxD @ w_DxV).astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(x, axis=-1)
    target = jnp.take_along_axis(x, targets_N[:, None], axis=-1)[:, 0]
    p = jnp.exp(x - lse[:, None])
    return lse, target, lse - jnp.sum(p * x, axis=-1)


def vocab_parallel_stats(h_NxD, w_DxV, targets_N, mesh, temperature: float = 1.0,
                         chunk: int = 1024):
    """dense_stats with the vocabulary over mesh axis "tensor" and tokens in chunks of `chunk`
    rows per batch shard (see the module docstring). N must divide over ("data", "fsdp")."""
    n, v = targets_N.shape[0], w_DxV.shape[1]
    tp = mesh.shape["tensor"]
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if n % rows:
        raise ValueError(f"vocab_parallel_stats: {n} tokens do not split over data x fsdp = "
                         f"{rows} devices")
    per_shard = -(-v // tp)
    if per_shard * tp != v:  # padded columns are masked inside
        w_DxV = jnp.pad(w_DxV, ((0, 0), (0, per_shard * tp - v)))
    local_n = n // rows
    c = min(chunk, local_n)
    body = functools.partial(_shard_stats, vocab=v, per_shard=per_shard, chunk=c,
                             temperature=float(temperature))
    return jax.shard_map(
        body, mesh=mesh,
        in_specs=(P(ROWS, None), P(None, "tensor"), P(ROWS)),
        out_specs=(P(ROWS), P(ROWS), P(ROWS)),
        check_vma=False,
    )(h_NxD, w_DxV, targets_N)


def _shard_stats(h, w, targets, *, vocab, per_shard, chunk, temperature):
    n = h.shape[0]
    pad = -n % chunk
    if pad:  # whole chunks; the padded rows are dropped at the end
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
    offset = jax.lax.axis_index("tensor") * per_shard
    valid = offset + jnp.arange(per_shard) < vocab

    @jax.checkpoint
    def one_chunk(args):
        hc, tc = args
        x = (hc @ w).astype(jnp.float32) / temperature
        x = jnp.where(valid, x, -jnp.inf)
        m = jax.lax.pmax(jnp.max(jax.lax.stop_gradient(x), axis=-1), "tensor")
        lse = m + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(x - m[:, None]), axis=-1), "tensor"))
        local = tc - offset
        mine = (local >= 0) & (local < per_shard)
        picked = jnp.take_along_axis(x, jnp.clip(local, 0, per_shard - 1)[:, None], -1)[:, 0]
        target = jax.lax.psum(jnp.where(mine, picked, 0.0), "tensor")
        p = jnp.where(valid, jnp.exp(x - lse[:, None]), 0.0)
        px = jax.lax.psum(jnp.sum(p * jnp.where(valid, x, 0.0), axis=-1), "tensor")
        return lse, target, lse - px

    shaped = (h.reshape(-1, chunk, h.shape[1]), targets.reshape(-1, chunk))
    lse, target, entropy = jax.lax.map(one_chunk, shaped)
    return tuple(a.reshape(-1)[:n] for a in (lse, target, entropy))
