"""model/vocab_parallel.py against its dense twin and optax's cross-entropy, in fp32, on the 8
virtual CPU devices: tensor = 1, 2, 4, a vocabulary that does not divide the shard count,
temperature ≠ 1, chunks that do not divide the tokens; loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import sharding
from model.vocab_parallel import dense_stats, vocab_parallel_stats

N, D = 48, 16


def inputs(v, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((D, v)) * 0.5, jnp.float32)
    t = jnp.asarray(rng.integers(0, v, N), jnp.int32)
    return h, w, t


def loss(stats):
    lse, target, entropy = stats
    return jnp.mean(lse - target) + 0.1 * jnp.mean(entropy)  # CE plus an entropy term


@pytest.mark.parametrize("tensor, v, temperature, chunk", [
    (1, 64, 1.0, 1024), (2, 64, 0.7, 4), (4, 61, 1.0, 5), (4, 64, 1.3, 3), (2, 37, 0.5, 8)])
def test_vocab_parallel_equals_dense_and_optax(tensor, v, temperature, chunk):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": tensor})
    h, w, t = inputs(v)
    with jax.set_mesh(mesh):
        got = jax.jit(lambda *a: vocab_parallel_stats(*a, mesh, temperature, chunk))(h, w, t)
        g_got = jax.jit(jax.grad(lambda h, w: loss(vocab_parallel_stats(
            h, w, t, mesh, temperature, chunk)), argnums=(0, 1)))(h, w)
    want = dense_stats(h, w, t, temperature)
    g_want = jax.grad(lambda h, w: loss(dense_stats(h, w, t, temperature)), argnums=(0, 1))(h, w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    ce = optax.softmax_cross_entropy_with_integer_labels((h @ w) / temperature, t)
    np.testing.assert_allclose(np.asarray(got[0] - got[1]), np.asarray(ce), rtol=1e-5,
                               atol=1e-5)


def test_tokens_must_split_over_the_batch_axes():
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    h, w, t = inputs(32)
    with pytest.raises(ValueError, match="47 tokens do not split over data x fsdp = 8"):
        vocab_parallel_stats(h[:47], w, t[:47], mesh)
