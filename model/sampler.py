"""Compiled autoregressive sampling with a KV cache: one prefill, then a `lax.while_loop` decode.

    tokens_BxP, positions_BxP, segment_ids_BxP = left_pad(prompts, pad_id=0)
    generate = make_generate(cfg, max_new_tokens=64, temperature=0.7, stop_ids=(end_id,))
    out = generate(params, tokens_BxP, positions_BxP, segment_ids_BxP, jax.random.key(0))
    out.tokens_BxT, out.logprobs_BxT, out.lengths_B, out.ended_B

Prompts are left-padded into one [B, P] block (segment 0 on the padding, 1 on real tokens,
positions counting real tokens only), so every row's last prompt token sits in column P-1 and
all rows decode in lock-step: step s writes cache slot P+s-1 for every row, at position
prompt_len_B + s - 1.

Log-probs: `logprobs_BxT` holds log softmax(logits / T)[token] under the UNFILTERED tempered
distribution, whatever top-k / top-p / greedy chose. That is the quantity PPO recomputes from the
actor and the reference during training (same temperature, no filter), so the ratio π/π_old is
exactly 1 on the first minibatch (ppo.md item 1). With greedy=True the tokens are the argmax and
the log-probs are still those of the tempered distribution.
"""

import contextlib
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model import sharding
from model.config import ModelConfig
from model.transformer import Transformer, init_cache, unstack_layers


class Generation(NamedTuple):
    tokens_BxT: jax.Array  # generated ids; pad_id after the stop token (which is kept)
    logprobs_BxT: jax.Array  # log softmax(logits / T)[token], unfiltered; 0 on padding
    lengths_B: jax.Array  # generated tokens per row, stop token included
    ended_B: jax.Array  # True where a stop token ended the row (False: hit max_new_tokens)


class Sampling(NamedTuple):
    """How to pick a token. top_k=0 and top_p=1 disable those filters."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False


def left_pad(prompts, pad_id, length=None):
    """Left-pads token lists into numpy (tokens_BxP, positions_BxP, segment_ids_BxP).

    Real tokens get segment 1 and positions 0..n-1; padding gets pad_id, segment 0, position 0.
    pad_id is the tokenizer's pad, never end-of-turn (ppo.md item 3).
    """
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) == 0:
        raise ValueError(
            f"left_pad: need a non-empty list of non-empty prompts, got lengths {lengths}"
        )
    length = max(lengths) if length is None else length
    if max(lengths) > length:
        raise ValueError(
            f"left_pad: a prompt has {max(lengths)} tokens, longer than length={length}"
        )
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, length - len(p) :] = p
        positions[i, length - len(p) :] = np.arange(len(p))
        segments[i, length - len(p) :] = 1
    return tokens, positions, segments


def filter_logits(logits_BxV, top_k=0, top_p=1.0):
    """Sets logits outside the top-k, then outside the nucleus, to -inf (Holtzman et al. 2020).

    The nucleus is the smallest set of most likely tokens whose probability (renormalised after
    top-k, as Hugging Face's warpers chain) reaches top_p: keep token i of the sorted list iff
    Σ_{j<i} p_j < top_p, so the most likely token is always kept. Ties at a threshold are kept.
    """
    neg_inf = jnp.array(-jnp.inf, logits_BxV.dtype)
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
        min_kept_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < min_kept_Bx1, neg_inf, logits_BxV)
    return logits_BxV


def sample_tokens(logits_BxV, rng, sampling: Sampling):
    """(token_B, logprob_B): logprob under the unfiltered softmax(logits / temperature)."""
    scaled_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
    max_Bx1 = jnp.max(scaled_BxV, axis=-1, keepdims=True)
    if sampling.greedy:
        # The first index of the maximum, as jnp.argmax, from two plain reductions: argmax's
        # (value, index) reduction is ~10x slower on XLA:CPU (docs/performance.md). A row
        # with a NaN matches nothing and gets the last id.
        v = scaled_BxV.shape[-1]
        ids_BxV = jax.lax.broadcasted_iota(jnp.int32, scaled_BxV.shape, 1)
        token_B = jnp.min(jnp.where(scaled_BxV == max_Bx1, ids_BxV, v - 1), axis=-1)
    else:
        filtered = filter_logits(scaled_BxV, sampling.top_k, sampling.top_p)
        token_B = jax.random.categorical(rng, filtered, axis=-1)
    # log_softmax(scaled)[token], as jax.nn.log_softmax computes it, reusing the max above.
    shifted_BxV = scaled_BxV - max_Bx1
    log_norm_B = jnp.log(jnp.sum(jnp.exp(shifted_BxV), axis=-1))
    logprob_B = jnp.take_along_axis(shifted_BxV, token_B[:, None], axis=-1)[:, 0] - log_norm_B
    return token_B.astype(jnp.int32), logprob_B


def _constrain_cache(cache):
    """Cache K/V are per-layer [B, K, S, H]: batch over ("data", "fsdp"), kv heads over
    "tensor"."""
    names = ("batch", "act_heads", "length", "head_dim")
    constrain = lambda bufs: tuple(nn.with_logical_constraint(b, names) for b in bufs)
    return dict(cache, k=constrain(cache["k"]), v=constrain(cache["v"]))


def prefill(cfg, params, tokens_BxP, positions_BxP, segment_ids_BxP, cache_len):
    """One model call over the left-padded prompts into a fresh cache of cache_len slots.

    Returns (logits_BxV of each row's last prompt token, cache). The cache is created here, inside
    the caller's jit, so XLA allocates it once and updates it in place for the whole decode.
    """
    cache = _constrain_cache(init_cache(cfg, tokens_BxP.shape[0], cache_len))
    logits_BxPxV, cache = Transformer(cfg).apply(
        {"params": params}, tokens_BxP, positions_BxP, segment_ids_BxP, cache=cache
    )
    return logits_BxPxV[:, -1], _constrain_cache(cache)


def decode_step(cfg, params, token_B, position_B, segment_B, cache):
    """Feeds one token per row at the cache index; returns (next logits_BxV, cache)."""
    logits_Bx1xV, cache = Transformer(cfg).apply(
        {"params": params}, token_B[:, None], position_B[:, None], segment_B[:, None], cache=cache
    )
    return logits_Bx1xV[:, 0], _constrain_cache(cache)


def _record(state, step, logits_BxV, rng, sampling, stop_ids, pad_id):
    """Samples step `step` for the rows still running and updates the outputs and flags."""
    tokens, logprobs, lengths, ended, done = state
    token_B, logprob_B = sample_tokens(logits_BxV, jax.random.fold_in(rng, step), sampling)
    token_B = jnp.where(done, pad_id, token_B)
    logprob_B = jnp.where(done, 0.0, logprob_B)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, token_B, step, axis=1)
    logprobs = jax.lax.dynamic_update_index_in_dim(logprobs, logprob_B, step, axis=1)
    lengths = lengths + (~done).astype(jnp.int32)
    stopped_B = jnp.isin(token_B, jnp.asarray(stop_ids, jnp.int32)) & ~done
    return tokens, logprobs, lengths, ended | stopped_B, done | stopped_B


def _generate(
    cfg,
    max_new_tokens,
    sampling,
    stop_ids,
    pad_id,
    params,
    tokens_BxP,
    positions_BxP,
    segment_ids_BxP,
    rng,
):
    """Prefill, sample step 0, then a while_loop of decode_step + sample until all rows stop."""
    b, p = tokens_BxP.shape
    prompt_len_B = jnp.sum(segment_ids_BxP != 0, axis=-1).astype(jnp.int32)
    params = unstack_layers(params)  # once, outside the decode loop
    logits_BxV, cache = prefill(
        cfg, params, tokens_BxP, positions_BxP, segment_ids_BxP, p + max_new_tokens - 1
    )  # the last sampled token is never fed
    zeros_B = jnp.zeros((b,), jnp.int32)
    outputs = (
        jnp.full((b, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((b, max_new_tokens), jnp.float32),
        zeros_B,
        zeros_B != 0,
        zeros_B != 0,
    )
    outputs = _record(outputs, 0, logits_BxV, rng, sampling, stop_ids, pad_id)

    def cond(carry):
        step, _, outputs = carry
        return (step < max_new_tokens) & ~jnp.all(outputs[-1])

    def body(carry):
        step, cache, outputs = carry
        tokens, done_B = outputs[0], outputs[-1]
        prev_B = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1, keepdims=False)
        # Finished rows feed segment 0: their slot becomes padding nothing attends to.
        segment_B = jnp.where(done_B, 0, 1).astype(jnp.int32)
        logits_BxV, cache = decode_step(
            cfg, params, prev_B, prompt_len_B + step - 1, segment_B, cache
        )
        return step + 1, cache, _record(outputs, step, logits_BxV, rng, sampling, stop_ids, pad_id)

    _, _, outputs = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, outputs))
    return Generation(*outputs[:4])


def _validate(cfg, max_new_tokens, sampling, stop_ids, pad_id):
    if max_new_tokens < 1:
        raise ValueError(f"sampler: max_new_tokens={max_new_tokens} must be >= 1")
    if not sampling.temperature > 0:
        raise ValueError(
            f"sampler: temperature={sampling.temperature} must be > 0 (greedy=True for "
            "argmax; log-probs are still reported under the tempered distribution)"
        )
    if not 0 <= sampling.top_k <= cfg.vocab_size:
        raise ValueError(f"sampler: top_k={sampling.top_k} not in [0, vocab_size={cfg.vocab_size}]")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"sampler: top_p={sampling.top_p} not in (0, 1]")
    if any(not 0 <= s < cfg.vocab_size for s in stop_ids) or pad_id in stop_ids:
        raise ValueError(
            f"sampler: stop_ids={stop_ids} must be token ids other than pad_id={pad_id}"
        )


def make_generate(
    cfg: ModelConfig,
    max_new_tokens: int,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    greedy=False,
    stop_ids=(),
    pad_id=0,
    mesh=None,
    rules=None,
):
    """generate(params, tokens_BxP, positions_BxP, segment_ids_BxP, rng) -> Generation.

    Inputs come from `left_pad` (the last column must be a real token of every row). Each row stops
    after a token in stop_ids or after max_new_tokens; the loop exits when every row has stopped.
    With a mesh, params are expected with the shardings `model.sharding.init_params` gives, the
    batch is sharded over ("data", "fsdp") and everything is traced under `activate(mesh, rules)`.
    Built functions are cached: the same arguments return the same compiled function.
    """
    sampling = Sampling(float(temperature), int(top_k), float(top_p), bool(greedy))
    stop_ids = tuple(int(s) for s in stop_ids)
    _validate(cfg, max_new_tokens, sampling, stop_ids, pad_id)
    rules = None if rules is None else tuple(rules)
    return _make_generate(cfg, int(max_new_tokens), sampling, stop_ids, int(pad_id), mesh, rules)


@functools.lru_cache(maxsize=32)
def _make_generate(cfg, max_new_tokens, sampling, stop_ids, pad_id, mesh, rules):
    fn = functools.partial(_generate, cfg, max_new_tokens, sampling, stop_ids, pad_id)
    # No donation: the only large buffer, the KV cache, is created inside the jitted function, so
    # XLA updates it in place through the loop and frees it at the end; donating a cache passed
    # in would only make every caller keep a cache-sized buffer alive between calls. (The
    # streaming step below does pass the cache through Python, and donates it.)
    if mesh is None:
        jitted, context = jax.jit(fn), contextlib.nullcontext
    else:
        rules = sharding.make_rules() if rules is None else rules
        init_fn = lambda rng: Transformer(cfg).init(rng, *[jnp.zeros((1, 1), jnp.int32)] * 3)[
            "params"
        ]
        param_sh, _ = sharding.param_shardings(init_fn, mesh, rules)
        b2, b1 = sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 1)
        jitted = jax.jit(
            fn,
            in_shardings=(param_sh, b2, b2, b2, sharding.replicated(mesh)),
            out_shardings=Generation(b2, b2, b1, b1),
        )
        context = functools.partial(sharding.activate, mesh, rules)

    def generate(params, tokens_BxP, positions_BxP, segment_ids_BxP, rng) -> Generation:
        _check_prompts(cfg, tokens_BxP, segment_ids_BxP, max_new_tokens, mesh)
        if mesh is not None:  # several processes: every one holds the whole prompt batch
            b2 = sharding.batch_sharding(mesh, 2)
            tokens_BxP, positions_BxP, segment_ids_BxP = (
                sharding.host_to_global(x, b2) for x in (tokens_BxP, positions_BxP,
                                                         segment_ids_BxP))
            rng = sharding.host_to_global(rng, sharding.replicated(mesh))
        with context():
            return jitted(params, tokens_BxP, positions_BxP, segment_ids_BxP, rng)

    generate.jitted = jitted  # for AOT lowering (benchmarks) and retrace checks (tests)
    return generate


def _check_prompts(cfg, tokens_BxP, segment_ids_BxP, max_new_tokens, mesh):
    b, p = tokens_BxP.shape
    if p + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"sampler: prompt block {p} + max_new_tokens {max_new_tokens} exceeds "
            f"model.max_seq_len={cfg.max_seq_len}"
        )
    if mesh is not None and b % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(
            f"sampler: batch {b} not divisible by mesh data*fsdp="
            f"{mesh.shape['data'] * mesh.shape['fsdp']}"
        )
    if isinstance(segment_ids_BxP, np.ndarray) and not np.all(segment_ids_BxP[:, -1] != 0):
        raise ValueError("sampler: prompts must be left-padded (last column real in every row)")


# ----------------------------------------------------------- streaming (interactive, one row)


@functools.lru_cache(maxsize=8)
def _stream_fns(cfg, sampling, cache_len):
    prefill_fn = jax.jit(functools.partial(prefill, cfg), static_argnums=4)

    @functools.partial(jax.jit, donate_argnums=2)  # the cache is replaced every step: reuse it
    def step_fn(params, logits_BxV, cache, position_B, rng):
        token_B, _ = sample_tokens(logits_BxV, rng, sampling)
        logits_BxV, cache = decode_step(
            cfg, params, token_B, position_B, jnp.ones_like(token_B), cache
        )
        return token_B, logits_BxV, cache

    return prefill_fn, step_fn


def generate_stream(
    cfg: ModelConfig,
    params,
    prompt,
    max_new_tokens,
    rng,
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    greedy=False,
    stop_ids=(),
    pad_id=0,
    bucket=32,
):
    """Yields generated token ids one at a time for one prompt (chat); the stop token is yielded.

    A jitted prefill plus a jitted single step called from Python, for interactive use only. The
    cache always has max_seq_len slots and the prompt is left-padded to a multiple of `bucket`,
    so a conversation compiles the step once and the prefill once per bucket. Sampling uses the
    same per-step keys as `make_generate` (fold_in(rng, step)).
    """
    sampling = Sampling(float(temperature), int(top_k), float(top_p), bool(greedy))
    stop_ids = tuple(int(s) for s in stop_ids)
    _validate(cfg, max_new_tokens, sampling, stop_ids, pad_id)
    padded = -(-len(prompt) // bucket) * bucket
    if padded + max_new_tokens > cfg.max_seq_len:
        padded = len(prompt)  # no room for bucket padding: compile for the exact length
    if padded + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"generate_stream: prompt of {len(prompt)} tokens + max_new_tokens "
            f"{max_new_tokens} exceeds model.max_seq_len={cfg.max_seq_len}"
        )
    prefill_fn, step_fn = _stream_fns(cfg, sampling, cfg.max_seq_len)
    params = jax.jit(unstack_layers)(params)  # once, not in every step
    tokens, positions, segments = left_pad([list(prompt)], pad_id, padded)
    logits_BxV, cache = prefill_fn(params, tokens, positions, segments, cfg.max_seq_len)
    for step in range(max_new_tokens):
        position_B = jnp.array([len(prompt) + step], jnp.int32)
        token_B, logits_BxV, cache = step_fn(
            params, logits_BxV, cache, position_B, jax.random.fold_in(rng, step)
        )
        token = int(token_B[0])
        yield token
        if token in stop_ids:
            return
