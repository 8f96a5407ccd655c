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


@pytest.mark.parametrize("tied, z_loss", [(False, 0.0), (True, 0.0), (False, 1e-2)])
def test_the_lm_loss_from_vocab_parallel_equals_the_full_logits(tied, z_loss):
    """train/losses.make_lm_loss with model.vocab_parallel_chunk on a (1, 2, 4) mesh: the same
    loss and gradients as the full logits (the pretraining and SFT loss), with and without
    the z-loss; both equal optax's cross-entropy plus z_loss·log²Z on the full logits."""
    import dataclasses

    from configs import common
    from model.config import ModelConfig
    from model.transformer import Transformer
    from train import losses

    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.make_rules()
    dense_cfg = ModelConfig.from_config(common.model_config("test", tie_embeddings=tied,
                                                            n_kv_heads=4))
    chunked_cfg = dataclasses.replace(dense_cfg, vocab_parallel_chunk=8)
    ones = jnp.ones((1, 8), jnp.int32)
    params, _ = sharding.init_params(
        lambda r: Transformer(dense_cfg).init(r, ones, ones, ones)["params"], jax.random.key(0),
        mesh, rules)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, dense_cfg.vocab_size, (4, 17)).astype(np.int32)
    batch = dict(tokens=tokens[:, :-1], targets=tokens[:, 1:],
                 positions=np.broadcast_to(np.arange(16), (4, 16)).astype(np.int32),
                 segment_ids=np.ones((4, 16), np.int32),
                 loss_mask=(rng.random((4, 16)) < 0.8).astype(np.int32))
    out = {}
    for name, cfg in (("dense", dense_cfg), ("chunked", chunked_cfg)):
        loss_fn = losses.make_lm_loss(Transformer(cfg), z_loss)
        with sharding.activate(mesh, rules):
            out[name] = jax.jit(jax.value_and_grad(
                lambda p, f=loss_fn: f(p, batch, None)[0]))(params)
    with sharding.activate(mesh, rules):
        logits = jax.jit(lambda p: Transformer(dense_cfg).apply(
            {"params": p}, batch["tokens"], batch["positions"], batch["segment_ids"]))(params)
    logits = np.asarray(logits, np.float64)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    log_z = np.log(np.exp(logits).sum(-1))
    want = float(((np.asarray(ce) + z_loss * log_z ** 2) * batch["loss_mask"]).sum())
    np.testing.assert_allclose(float(out["dense"][0]), want, rtol=1e-5)
    np.testing.assert_allclose(float(out["chunked"][0]), float(out["dense"][0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["chunked"][1]), jax.tree.leaves(out["dense"][1]),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_ppo_log_probs_and_entropy_from_vocab_parallel_equal_the_full_logits():
    """train/ppo_phases._lm_logp (rollout scoring and the update) with the primitive, at a
    temperature, on a (1, 2, 4) mesh."""
    import dataclasses
    import types

    from configs import common
    from model.config import ModelConfig
    from model.transformer import Transformer
    from train import ppo_phases

    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.make_rules()
    dense_cfg = ModelConfig.from_config(common.model_config("test", n_kv_heads=4))
    ones = jnp.ones((1, 8), jnp.int32)
    params, _ = sharding.init_params(
        lambda r: Transformer(dense_cfg).init(r, ones, ones, ones)["params"], jax.random.key(1),
        mesh, rules)
    hp = types.SimpleNamespace(prompt_len=6, max_new_tokens=10, temperature=0.7)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, dense_cfg.vocab_size, (8, 16)).astype(np.int32)
    batch = dict(tokens=tokens, positions=np.broadcast_to(np.arange(16), (8, 16)).astype(np.int32),
                 segments=np.ones((8, 16), np.int32), response=tokens[:, 6:],
                 mask=(rng.random((8, 10)) < 0.9).astype(np.float32))
    out = {}
    for chunk in (0, 16):
        cfg = dataclasses.replace(dense_cfg, vocab_parallel_chunk=chunk)
        with sharding.activate(mesh, rules):
            out[chunk] = jax.jit(lambda p, c=cfg: ppo_phases._lm_logp(c, p, batch, hp, True))(
                params)
    for a, b in zip(out[16], out[0], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
