"""model/sampler.py: KV-cache decode == full forward, batched == one by one, per-row stopping,
determinism, sampling filters, (2,2,2) mesh == one device, streaming == compiled loop.

Compiles are the cost here (~2-4 s each on 2 cores): generate functions are shared through
module-scoped fixtures and `make_generate`'s own cache.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from model import sampler, sharding
from model.config import ModelConfig
from model.transformer import Transformer

T = 8  # max_new_tokens
# Prompts of different lengths; 4 rows so the (2,2,2) mesh test can shard the same batch.
PROMPTS = [[5, 9, 11, 40, 41, 42, 43], [20, 21, 22], [7, 8, 9, 10, 11, 12, 13], [30, 31, 2, 33, 34]]


def _init_fn(cfg):
    z = jnp.zeros((1, 1), jnp.int32)
    return lambda rng: Transformer(cfg).init(rng, z, z, z)["params"]


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig.from_config(model_config("test"))


@pytest.fixture(scope="module")
def params(cfg):
    return nn.meta.unbox(_init_fn(cfg)(jax.random.key(0)))


@pytest.fixture(scope="module")
def batch():
    return sampler.left_pad(PROMPTS, pad_id=0)


@pytest.fixture(scope="module")
def greedy(cfg, params, batch):
    generate = sampler.make_generate(cfg, T, greedy=True, temperature=0.8)
    return generate, jax.device_get(generate(params, *batch, jax.random.key(1)))


@pytest.fixture(scope="module")
def sampled(cfg, params, batch):
    generate = sampler.make_generate(cfg, T, temperature=0.7, top_k=20, top_p=0.9)
    return generate, jax.device_get(generate(params, *batch, jax.random.key(1)))


def _full_forward(cfg, params, batch, gen_tokens_BxT):
    """Logits of one cache-free forward over [left-padded prompt | generated tokens]."""
    tokens, positions, segments = batch
    lengths_B = segments.sum(-1)
    steps = np.arange(gen_tokens_BxT.shape[1])
    full = (
        np.concatenate([tokens, gen_tokens_BxT], 1),
        np.concatenate([positions, lengths_B[:, None] + steps], 1),
        np.concatenate([segments, np.ones_like(gen_tokens_BxT)], 1),
    )
    logits = Transformer(cfg).apply({"params": params}, *full)
    p = tokens.shape[1]
    return np.asarray(logits[:, p - 1 : p - 1 + gen_tokens_BxT.shape[1]])  # row s predicts token s


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _token_logprobs(full_logits, tokens, temperature):
    return np.take_along_axis(_log_softmax(full_logits / temperature), tokens[..., None], -1)[
        ..., 0
    ]


# ----------------------------------------------------------------------------- pure helpers


def test_left_pad():
    tokens, positions, segments = sampler.left_pad([[4, 5, 6], [9]], pad_id=0, length=4)
    np.testing.assert_array_equal(tokens, [[0, 4, 5, 6], [0, 0, 0, 9]])
    np.testing.assert_array_equal(positions, [[0, 0, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(segments, [[0, 1, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="longer than length"):
        sampler.left_pad([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="non-empty"):
        sampler.left_pad([[1], []], 0)


def test_filter_logits_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32) * 2
    for top_k, top_p in ((5, 1.0), (0, 0.6), (10, 0.5), (0, 0.999)):
        got = np.isfinite(np.asarray(sampler.filter_logits(jnp.asarray(logits), top_k, top_p)))
        for row, kept in zip(logits, got, strict=True):
            order = np.argsort(-row)
            n = top_k or row.size
            probs = np.exp(_log_softmax(row[order[:n]]))
            n_p = int(np.searchsorted(np.cumsum(probs), top_p)) + 1 if top_p < 1 else n
            want = np.zeros(row.size, bool)
            want[order[: min(n, n_p)]] = True
            np.testing.assert_array_equal(kept, want, err_msg=f"top_k={top_k} top_p={top_p}")


def test_greedy_equals_argmax_and_log_softmax():
    """Greedy picks jnp.argmax's token (the first maximum on ties); log-probs are exactly those
    of jax.nn.log_softmax."""
    logits = jax.random.normal(jax.random.key(3), (16, 40)) * 3
    logits = logits.at[0, 7].set(100.0).at[0, 31].set(100.0)  # a tie: the first index wins
    for temperature in (1.0, 0.7):
        got, logp = sampler.sample_tokens(
            logits, None, sampler.Sampling(temperature=temperature, greedy=True)
        )
        scaled = logits / temperature
        np.testing.assert_array_equal(got, jnp.argmax(scaled, axis=-1))
        assert int(got[0]) == 7
        want = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), got[:, None], -1)[:, 0]
        np.testing.assert_array_equal(logp, want)


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = jax.random.normal(jax.random.key(0), (64, 30)) * 3
    want, _ = sampler.sample_tokens(logits, None, sampler.Sampling(greedy=True))
    for filt in (dict(top_k=1), dict(top_p=1e-6)):
        for seed in range(3):
            got, logp = sampler.sample_tokens(
                logits, jax.random.key(seed), sampler.Sampling(temperature=0.5, **filt)
            )
            np.testing.assert_array_equal(got, want)
            # log-probs are of the unfiltered tempered distribution, not 0 (the filtered one's)
            np.testing.assert_allclose(
                logp, _token_logprobs(np.asarray(logits), np.asarray(got), 0.5), atol=1e-5
            )
            assert np.all(np.asarray(logp) < 0)


# ------------------------------------------------------------------------------ model tests


def test_kv_cache_decode_equals_full_forward(cfg, params, batch, greedy):
    _, out = greedy
    assert np.all(out.lengths_B == T) and not out.ended_B.any()
    full = _full_forward(cfg, params, batch, out.tokens_BxT)
    np.testing.assert_array_equal(out.tokens_BxT, full.argmax(-1))
    np.testing.assert_allclose(
        out.logprobs_BxT, _token_logprobs(full, out.tokens_BxT, 0.8), atol=1e-5
    )
    # Per-step logits through the public prefill / decode_step (the loop body of generate).
    p = batch[0].shape[1]
    logits, cache = jax.jit(sampler.prefill, static_argnums=(0, 5))(cfg, params, *batch, p + T)
    step = jax.jit(sampler.decode_step, static_argnums=0)
    lengths_B = batch[2].sum(-1)
    for s in range(T):
        np.testing.assert_allclose(logits, full[:, s], atol=1e-4, err_msg=f"step {s}")
        tok = jnp.asarray(out.tokens_BxT[:, s])
        logits, cache = step(
            cfg, params, tok, jnp.asarray(lengths_B + s), jnp.ones_like(tok), cache
        )
    assert int(cache["index"]) == p + T


def test_sampled_logprobs_are_unfiltered_tempered(cfg, params, batch, sampled):
    _, out = sampled
    full = _full_forward(cfg, params, batch, out.tokens_BxT)
    np.testing.assert_allclose(
        out.logprobs_BxT, _token_logprobs(full, out.tokens_BxT, 0.7), atol=1e-5
    )
    rank = (full > np.take_along_axis(full, out.tokens_BxT[..., None], -1)).sum(-1)
    assert rank.max() < 20, "a sampled token lies outside the top-k"


def test_batched_equals_one_by_one(cfg, params, greedy):
    generate, out = greedy
    for i in (0, 1):  # prompt lengths 7 and 3: no padding when alone
        alone = jax.device_get(
            generate(params, *sampler.left_pad([PROMPTS[i]], 0), jax.random.key(1))
        )
        np.testing.assert_array_equal(alone.tokens_BxT[0], out.tokens_BxT[i])
        np.testing.assert_allclose(alone.logprobs_BxT[0], out.logprobs_BxT[i], atol=1e-5)


def test_per_row_stopping(cfg, params, batch, greedy):
    _, ref = greedy
    row0, row1 = ref.tokens_BxT[0], ref.tokens_BxT[1]
    candidates = [t for t in row0[1:] if t not in row1 and t not in row0[:1]]
    assert candidates, f"test set-up: no stop token separating rows {row0} / {row1}"
    stop = int(candidates[0])
    unused = next(t for t in range(1, cfg.vocab_size) if t not in ref.tokens_BxT)
    generate = sampler.make_generate(
        cfg, T, greedy=True, temperature=0.8, stop_ids=(unused, stop), pad_id=0
    )
    out = jax.device_get(generate(params, *batch, jax.random.key(1)))
    for b in range(len(PROMPTS)):
        hits = np.flatnonzero(ref.tokens_BxT[b] == stop)
        n = int(hits[0]) + 1 if hits.size else T
        assert out.lengths_B[b] == n and out.ended_B[b] == bool(hits.size), b
        np.testing.assert_array_equal(out.tokens_BxT[b, :n], ref.tokens_BxT[b, :n])
        np.testing.assert_allclose(out.logprobs_BxT[b, :n], ref.logprobs_BxT[b, :n], atol=1e-6)
        assert np.all(out.tokens_BxT[b, n:] == 0) and np.all(out.logprobs_BxT[b, n:] == 0)
    assert out.ended_B[0] and out.tokens_BxT[0, out.lengths_B[0] - 1] == stop
    assert not out.ended_B[1] and out.lengths_B[1] == T


def test_deterministic_and_cached(cfg, params, batch, greedy, sampled):
    generate, out = greedy
    again = jax.device_get(generate(params, *batch, jax.random.key(7)))
    np.testing.assert_array_equal(again.tokens_BxT, out.tokens_BxT)
    np.testing.assert_array_equal(again.logprobs_BxT, out.logprobs_BxT)
    assert sampler.make_generate(cfg, T, greedy=True, temperature=0.8) is generate
    gen_s, out_s = sampled
    same = jax.device_get(gen_s(params, *batch, jax.random.key(1)))
    np.testing.assert_array_equal(same.tokens_BxT, out_s.tokens_BxT)
    other = jax.device_get(gen_s(params, *batch, jax.random.key(2)))
    assert not np.array_equal(other.tokens_BxT, out_s.tokens_BxT)
    assert gen_s.jitted._cache_size() == 1, "same shapes must not retrace"


def test_mesh_matches_single_device(cfg, params, batch, greedy):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding.make_rules()
    sharded_params, shardings = sharding.init_params(_init_fn(cfg), jax.random.key(0), mesh, rules)
    # Same parameters as the single-device fixture (sharded init rounds differently in the ulp).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
        jax.device_get(sharded_params),
        params,
    )
    generate = sampler.make_generate(cfg, T, greedy=True, temperature=0.8, mesh=mesh, rules=rules)
    out = generate(sharded_params, *batch, jax.random.key(1))
    assert out.tokens_BxT.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 2)
    _, single = greedy
    out = jax.device_get(out)
    np.testing.assert_array_equal(out.tokens_BxT, single.tokens_BxT)
    np.testing.assert_allclose(out.logprobs_BxT, single.logprobs_BxT, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        generate(sharded_params, *(x[:3] for x in batch), jax.random.key(1))


def test_stream_matches_generate(cfg, params, greedy):
    _, out = greedy
    stop = int(out.tokens_BxT[0, 4])
    n = int(np.flatnonzero(out.tokens_BxT[0] == stop)[0]) + 1
    streamed = list(
        sampler.generate_stream(
            cfg, params, PROMPTS[0], T, jax.random.key(1), greedy=True, stop_ids=(stop,)
        )
    )
    assert streamed == out.tokens_BxT[0, :n].tolist()


def test_bad_settings_are_errors(cfg, params, greedy):
    with pytest.raises(ValueError, match="temperature"):
        sampler.make_generate(cfg, T, temperature=0.0)
    with pytest.raises(ValueError, match="pad_id"):
        sampler.make_generate(cfg, T, stop_ids=(0,), pad_id=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        greedy[0](params, *sampler.left_pad([[1] * cfg.max_seq_len], 0), jax.random.key(0))
    right_padded = tuple(np.flip(x, 1).copy() for x in sampler.left_pad(PROMPTS, 0))
    with pytest.raises(ValueError, match="left-padded"):
        greedy[0](params, *right_padded, jax.random.key(0))
