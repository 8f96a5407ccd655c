"""model/transformer.py: shapes, masking, scan/remat/KV-cache equivalences, RoPE, param count.

All on the tiny "test" size (configs/common.py). The file compiles one init (unrolled layout,
stacked into the scanned one) and shares jitted forwards through module-scoped fixtures.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from model import attention, transformer
from model.config import REMAT_POLICIES, ModelConfig

B, L = 2, 16
ATOL = 1e-5
# The tests compare programs compiled alike; skipping LLVM's optimisations halves CPU compile time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _cfg(**overrides) -> ModelConfig:
    return ModelConfig.from_config(model_config("test", **overrides))


def _inputs(seed=0, b=B, length=L, vocab=320):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(b, length)).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()
    return tokens, positions, np.ones((b, length), np.int32)


def _init(model):
    init = jit(lambda r: nn.meta.unbox(model.init(r, *_inputs())["params"]))
    return init(jax.random.key(0))


def _abstract_params(model, length=L):
    boxed = jax.eval_shape(model.init, jax.random.key(0), *_inputs(length=length))
    return nn.meta.unbox(boxed["params"])


def _n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _stack_layers(unrolled, n_layers):
    """{layers_0: T, layers_1: T, ...} -> {layers: {block: T with a leading layer axis}}."""
    rest = {k: v for k, v in unrolled.items() if not k.startswith("layers_")}
    per_layer = [unrolled[f"layers_{i}"] for i in range(n_layers)]
    return {**rest, "layers": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)}}


@pytest.fixture(scope="module")
def cfg():
    return _cfg()


@pytest.fixture(scope="module")
def unrolled_params(cfg):
    """The one real init of this file (unrolled layout); `params` is its scanned twin."""
    return _init(transformer.Transformer(dataclasses.replace(cfg, scan_layers=False)))


@pytest.fixture(scope="module")
def params(cfg, unrolled_params):
    return _stack_layers(unrolled_params, cfg.n_layers)


@pytest.fixture(scope="module")
def forward(cfg):
    """jit(apply) of the fp32 scanned LM; compiled once per input shape."""
    model = transformer.Transformer(cfg)
    return jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg))


# ---------------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("head", ["lm", "scalar"])
def test_output_shapes_and_dtypes(compute_dtype, head):
    cfg = _cfg(compute_dtype=compute_dtype)
    model = transformer.Transformer(cfg, head=head)
    tokens, positions, segs = _inputs()
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, positions, segs)["params"]
    p = nn.meta.unbox(boxed)
    assert {x.dtype for x in jax.tree.leaves(p)} == {jnp.dtype(jnp.float32)}
    assert _n_params(p) == cfg.param_count(head)
    out = jax.eval_shape(lambda q: model.apply({"params": q}, tokens, positions, segs), p)
    want = (B, L, cfg.vocab_size) if head == "lm" else (B, L)
    assert out.shape == want and out.dtype == jnp.float32


def test_bfloat16_compute_is_close_to_float32(cfg, params, forward):
    """Same fp32 params, bf16 matmuls: logits agree to bf16 precision (~3 significant digits)."""
    bf16 = transformer.Transformer(dataclasses.replace(cfg, compute_dtype="bfloat16"))
    inputs = _inputs()
    got = jit(lambda p: bf16.apply({"params": p}, *inputs))(params)
    want = forward(params, *inputs)
    assert got.dtype == jnp.float32 and bool(jnp.isfinite(got).all())
    err = float(jnp.abs(got - want).max())
    assert err < 0.05 * float(jnp.abs(want).max()), err
    assert err > 0, "bf16 compute should differ from fp32 at all"


# ------------------------------------------------------------------------ masking / segments


def test_causality(params, forward):
    """The output at position t depends only on tokens at positions <= t."""
    tokens, positions, segs = _inputs()
    t = 6
    changed = tokens.copy()
    changed[:, t + 1 :] = (tokens[:, t + 1 :] + 7) % 320
    a = forward(params, tokens, positions, segs)
    b = forward(params, changed, positions, segs)
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=ATOL)
    assert float(jnp.abs(a[:, t + 1 :] - b[:, t + 1 :]).max()) > 1e-3  # later outputs do change


def test_head_columns_equal_the_full_output_sliced(cfg, params, forward):
    """PPO applies the heads to the response's columns only (head_columns): the same numbers
    as the full forward's columns, for the LM and the scalar head."""
    tokens, positions, segs = _inputs(seed=3)
    start, n = 5, 7
    lm = transformer.Transformer(cfg)
    cols = jit(lambda p: lm.apply({"params": p}, tokens, positions, segs, head_columns=(start, n)))
    np.testing.assert_allclose(
        cols(params), forward(params, tokens, positions, segs)[:, start : start + n], atol=ATOL
    )
    scalar = transformer.Transformer(cfg, head="scalar")
    sp = _init(scalar)
    full = jit(lambda p: scalar.apply({"params": p}, tokens, positions, segs))(sp)
    part = jit(
        lambda p: scalar.apply({"params": p}, tokens, positions, segs, head_columns=(start, n))
    )(sp)
    assert part.shape == (B, n)
    np.testing.assert_allclose(part, full[:, start : start + n], atol=ATOL)


def _alone(doc):
    """One document at the start of a row of length L, padding (segment 0) after it."""
    n = len(doc)
    tokens, positions, segs = np.zeros(L, np.int32), np.zeros(L, np.int32), np.zeros(L, np.int32)
    tokens[:n], positions[:n], segs[:n] = doc, np.arange(n), 1
    return tokens, positions, segs


def test_no_attention_across_segments_or_to_padding(params, forward):
    """Row 0 packs [pad x3 | doc A x6 | doc B x7] (segments 0, 1, 2).

    Each document's outputs must equal those of the document alone in a row (positions restart
    at 0), and changing the padding tokens must change no real token's output.
    """
    rng = np.random.default_rng(1)
    doc_a, doc_b = rng.integers(0, 320, 6), rng.integers(0, 320, 7)
    packed = (
        np.concatenate([[5, 9, 11], doc_a, doc_b]),
        np.concatenate([[0, 0, 0], np.arange(6), np.arange(7)]),
        np.repeat([0, 1, 2], [3, 6, 7]),
    )
    rows = [np.stack(r) for r in zip(packed, _alone(doc_b), strict=True)]
    out = forward(params, *rows)
    assert bool(jnp.isfinite(out).all()), "fully masked padding rows must not produce NaN"
    np.testing.assert_allclose(out[0, 9:], out[1, :7], rtol=0, atol=ATOL)

    b_repadded = _alone(doc_b)
    b_repadded[0][7:] = 42  # other padding tokens: must not matter
    out_a = forward(params, *[np.stack(r) for r in zip(_alone(doc_a), b_repadded, strict=True)])
    np.testing.assert_allclose(out[0, 3:9], out_a[0, :6], rtol=0, atol=ATOL)
    np.testing.assert_allclose(out_a[1, :7], out[1, :7], rtol=0, atol=ATOL)
    repadded = rows[0].copy()
    repadded[0, :3] = [100, 200, 300]
    out_repadded = forward(params, repadded, rows[1], rows[2])
    np.testing.assert_allclose(out_repadded[0, 3:], out[0, 3:], rtol=0, atol=ATOL)


# ------------------------------------------------------------------------ scan, remat, cache


def test_scan_equals_unrolled(cfg, params, unrolled_params, forward):
    scanned = _abstract_params(transformer.Transformer(cfg))
    assert jax.tree.structure(scanned) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(params), strict=True):
        assert a.shape == b.shape
    unrolled = transformer.Transformer(dataclasses.replace(cfg, scan_layers=False))
    inputs = _inputs(seed=2)
    want = jit(lambda p: unrolled.apply({"params": p}, *inputs))(unrolled_params)
    np.testing.assert_allclose(forward(params, *inputs), want, rtol=0, atol=ATOL)


def _loss_and_grads(cfg, params, inputs, targets):
    """Mean next-token cross-entropy and its gradients; the logits ride along as aux."""
    model = transformer.Transformer(cfg)

    def loss_fn(p):
        logits = model.apply({"params": p}, *inputs)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, targets[..., None], -1).mean(), logits

    return jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def _assert_same_loss_logits_grads(out, grads, out0, grads0, grad_atol):
    """Loss (rtol 1e-6), logits (atol ATOL) and every gradient leaf (rtol 1e-5) match."""
    np.testing.assert_allclose(out[0], out0[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], out0[1], rtol=0, atol=ATOL)
    flat0 = dict(jax.tree_util.tree_leaves_with_path(grads0))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        np.testing.assert_allclose(
            g, flat0[path], rtol=1e-5, atol=grad_atol, err_msg=jax.tree_util.keystr(path)
        )


@pytest.fixture(scope="module")
def loss_inputs():
    tokens, positions, segs = _inputs(seed=3)
    segs[1, :4] = 0  # some padding: its (fully masked) rows must keep gradients finite
    return (tokens, positions, segs), jnp.roll(jnp.asarray(tokens), -1, axis=1)


@pytest.fixture(scope="module")
def no_remat(cfg, params, loss_inputs):
    return _loss_and_grads(cfg, params, *loss_inputs)


@pytest.mark.parametrize(
    "policy,scan", [(p, True) for p in REMAT_POLICIES if p != "none"] + [("full", False)]
)
def test_remat_equals_no_remat(cfg, params, unrolled_params, loss_inputs, no_remat, policy, scan):
    (loss0, logits0), grads0 = no_remat
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads0))
    remat_cfg = dataclasses.replace(cfg, remat_policy=policy, scan_layers=scan)
    (loss, logits), grads = _loss_and_grads(
        remat_cfg, params if scan else unrolled_params, *loss_inputs
    )
    if not scan:
        grads = _stack_layers(grads, cfg.n_layers)
    _assert_same_loss_logits_grads((loss, logits), grads, (loss0, logits0), grads0, 1e-5)


def _packed_inputs(seed):
    """Rows of packed documents with padding and arbitrary (restarting, offset) positions."""
    tokens, _, _ = _inputs(seed=seed)
    segs = np.asarray([[0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0, 0], [1] * 5 + [3] * 11])
    positions = np.asarray([[0, 0, *range(7, 12), *range(7), 0, 0], [*range(5), *range(20, 31)]])
    return (tokens, positions.astype(np.int32), segs.astype(np.int32))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention_chunk=4),
        dict(attention_chunk=5),  # chunks of 5, 5, 5, 1
        dict(attention_chunk=4, attention="dot_product"),
        dict(attention_chunk=8, scan_layers=False),
        dict(attention_chunk=8, remat_policy="dots"),
        dict(scan_unroll=2),
        dict(attention_chunk=4, scan_unroll=2),
    ],
)
def test_chunked_attention_and_scan_unroll_equal_default(cfg, params, unrolled_params, overrides):
    """Causal query-chunked attention (training, no cache) and an unrolled layer scan give the
    same logits, loss and gradients as the defaults, on packed rows with padding (whose fully
    masked queries are reproduced too) and arbitrary positions."""
    inputs = _packed_inputs(seed=6)
    targets = jnp.roll(jnp.asarray(inputs[0]), -1, axis=1)
    new_cfg = dataclasses.replace(cfg, **overrides)
    scan = new_cfg.scan_layers
    base_cfg = dataclasses.replace(cfg, scan_layers=scan, attention=new_cfg.attention)
    p = params if scan else unrolled_params
    (loss0, logits0), grads0 = _loss_and_grads(base_cfg, p, inputs, targets)
    (loss, logits), grads = _loss_and_grads(new_cfg, p, inputs, targets)
    _assert_same_loss_logits_grads((loss, logits), grads, (loss0, logits0), grads0, 1e-6)
    with pytest.raises(ValueError, match="model.attention_chunk"):
        dataclasses.replace(cfg, attention_chunk=-1)
    with pytest.raises(ValueError, match="model.scan_unroll"):
        dataclasses.replace(cfg, scan_unroll=0)


@pytest.mark.parametrize(
    "scan,attention,extra",
    [
        (True, "einsum", {}),
        (False, "einsum", {}),
        (True, "dot_product", {}),
        (False, "dot_product", {}),
        (True, "einsum", dict(scan_unroll=2, attention_chunk=4)),  # the CPU sizes' layout
    ],
)
def test_kv_cache_decode_equals_full_forward(
    cfg, params, unrolled_params, forward, scan, attention, extra
):
    """Prefill 8 tokens, then decode 8 one at a time into a 24-slot cache; row 1 is left-padded.

    Every step's logits must equal the full forward pass over the whole 16-token rows, for the
    layer scan and the unrolled loop (both write each layer's new slots into the stacked cache in
    place) and both attention ops. The cache after the steps must equal one 16-token prefill's,
    with the unused slots still zero (padding slots aside).
    """
    tokens, positions, segs = _inputs(seed=4)
    segs[1, :3], positions[1, :3] = 0, 0
    positions[1, 3:] = np.arange(L - 3)
    want = forward(params, tokens, positions, segs)
    model = transformer.Transformer(
        dataclasses.replace(cfg, scan_layers=scan, attention=attention, **extra)
    )
    params = params if scan else unrolled_params
    step = jit(lambda p, t, pos, seg, c: model.apply({"params": p}, t, pos, seg, cache=c))
    cache = transformer.init_cache(cfg, B, 24)
    prompt = 8
    got, cache = step(params, tokens[:, :prompt], positions[:, :prompt], segs[:, :prompt], cache)
    real = segs[:, :prompt] != 0  # padding queries attend to nothing: their output is unused
    np.testing.assert_allclose(
        np.asarray(got)[real], np.asarray(want[:, :prompt])[real], rtol=0, atol=ATOL
    )
    for t in range(prompt, L):
        got, cache = step(
            params, tokens[:, t : t + 1], positions[:, t : t + 1], segs[:, t : t + 1], cache
        )
        np.testing.assert_allclose(got[:, 0], want[:, t], rtol=0, atol=ATOL, err_msg=f"step {t}")
    assert int(cache["index"]) == L
    np.testing.assert_array_equal(cache["segment_ids"][:, :L], segs)
    assert not np.asarray(cache["segment_ids"][:, L:]).any()
    _, bulk = step(params, tokens, positions, segs, transformer.init_cache(cfg, B, 24))
    for name in ("k", "v"):  # one [B, K, S, H] buffer per layer
        assert [c.shape for c in cache[name]] == [(B, cfg.n_kv_heads, 24, cfg.head_dim)] * (
            cfg.n_layers
        )
        cache[name], bulk[name] = np.stack(cache[name]), np.stack(bulk[name])
        real_slots = np.asarray(segs != 0)[None, :, None, :, None]  # padding keys: never read
        np.testing.assert_allclose(
            np.where(real_slots, cache[name][:, :, :, :L], 0),
            np.where(real_slots, bulk[name][:, :, :, :L], 0),
            rtol=0,
            atol=ATOL,
            err_msg=name,
        )
        assert not np.asarray(cache[name][:, :, :, L:]).any(), f"{name}: a slot past {L} written"


# ------------------------------------------------------------------------------------- RoPE


def test_rope_matches_complex_rotation_and_is_relative():
    """q·k after RoPE depends only on m - n; each (x_i, x_{i+H/2}) pair turns by pos·θ^(-2i/H)."""
    h, theta, n_pos = 16, 10000.0, 24
    q, k = np.random.default_rng(5).normal(size=(2, h)).astype(np.float32)
    pos = np.arange(n_pos, dtype=np.int32)[None]

    inv_freq = attention.rope_frequencies(_cfg(head_dim=h, rope_theta=theta))

    def rope(x):
        return np.asarray(
            attention.apply_rope(
                jnp.broadcast_to(x, (1, n_pos, 1, h)), attention.rope_sin_cos(pos, inv_freq)
            )
        )[0, :, 0]

    rq, rk = rope(q), rope(k)
    angles = pos[0, :, None] * theta ** (-np.arange(0, h, 2) / h)
    z = (q[: h // 2] + 1j * q[h // 2 :]) * np.exp(1j * angles)
    np.testing.assert_allclose(rq, np.concatenate([z.real, z.imag], -1), rtol=0, atol=1e-5)
    scores = rq @ rk.T  # scores[m, n] = <rope(q, m), rope(k, n)>
    np.testing.assert_allclose(scores[1:, 1:], scores[:-1, :-1], rtol=0, atol=1e-4)
    assert np.ptp(scores[0]) > 1e-2  # ... yet they do depend on m - n
    np.testing.assert_allclose(scores[0, 0], q @ k, rtol=1e-5)


# ---------------------------------------------------------------------------- parameter count


@pytest.mark.parametrize(
    "overrides,head",
    [
        ({}, "lm"),
        ({"tie_embeddings": True}, "lm"),
        ({"qkv_bias": True}, "lm"),
        ({"qkv_bias": True, "tie_embeddings": True}, "scalar"),
        ({"n_kv_heads": 1, "scan_layers": False}, "lm"),
        ({"n_kv_heads": 4, "n_layers": 3}, "scalar"),
    ],
)
def test_param_count_equals_real_parameters(overrides, head):
    cfg = _cfg(**overrides)
    p = _abstract_params(transformer.Transformer(cfg, head=head), length=4)
    assert _n_params(p) == cfg.param_count(head)


def test_param_count_llama2_7b_hand_formula():
    """Llama-2-7B: 2·V·d (embed + lm_head) + L·(4d² + 3·d·F + 2d) + d = 6,738,415,616."""
    cfg = ModelConfig.from_config(model_config("7b"))
    v, d, n_layers, f = 32000, 4096, 32, 11008
    hand = 2 * v * d + n_layers * (4 * d * d + 3 * d * f + 2 * d) + d
    assert hand == 6_738_415_616
    assert cfg.param_count() == hand
    assert _n_params(_abstract_params(transformer.Transformer(cfg), length=1)) == hand


def test_einsum_attention_equals_dot_product_attention():
    """The grouped einsum path equals jax.nn.dot_product_attention, masks and GQA included."""
    from model.attention import attention_mask, grouped_attention

    rng = np.random.default_rng(0)
    b, length, n, kh, h = 2, 7, 4, 2, 8
    q = jnp.asarray(rng.standard_normal((b, length, n, h)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, length, kh, h)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, length, kh, h)), jnp.float32)
    slots = jnp.broadcast_to(jnp.arange(length), (b, length))
    segs = jnp.asarray([[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    mask = attention_mask(slots, segs, slots, segs)
    ours = grouped_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask)
    real = np.asarray(segs != 0)  # padding queries see no key: their outputs are arbitrary
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(ref)[real], atol=1e-5)
    cfg = ModelConfig.from_config(model_config("test"))
    assert dataclasses.replace(cfg, attention="dot_product").attention == "dot_product"
    with pytest.raises(ValueError, match="model.attention"):
        dataclasses.replace(cfg, attention="flash")


def test_over_rows_equals_the_projection_on_the_full_shape():
    """over_rows (a projection on x as one [tokens, features] matrix) gives the values and
    gradients of the same projection applied to x [B, L, D] as is."""
    dense = nn.Dense(24, use_bias=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 16)), jnp.float32)
    p = dense.init(jax.random.key(0), x)

    def loss(p, x, rows):
        y = transformer.over_rows(lambda r: dense.apply(p, r), x) if rows else dense.apply(p, x)
        return jnp.sum(jnp.sin(y)), y

    (_, y_rows), g_rows = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x, True)
    (_, y_full), g_full = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x, False)
    np.testing.assert_allclose(y_rows, y_full, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_rows), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout property")
def test_mlp_backward_copies_no_activation_into_a_transposed_layout():
    """Why over_rows exists: XLA:CPU compiles an MLP block's gradient with no transpose at all
    (with x [B, L, D] straight into the projections it wrote the activation gradients out
    transposed before the weight-gradient dots, about 30% of the block's backward at 20m)."""
    cfg = _cfg()
    mlp = transformer.MLP(cfg)
    x = jnp.ones((4, 32, cfg.d_model), jnp.float32)
    p = mlp.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp.apply(p, x) ** 2), argnums=(0, 1)))
    hlo = grad.lower(p, x).compile().as_text()
    transposes = [line for line in hlo.splitlines() if " transpose(" in line]
    assert not transposes, "\n".join(transposes)


def test_rope_table_is_exactly_sin_and_cos_of_the_angles():
    """rope_sin_cos's dot with the identity (there so XLA computes the table once per forward
    rather than in every layer's rotation) changes no value."""
    inv_freq = attention.rope_frequencies(_cfg())
    pos = jnp.asarray(np.arange(3 * 40).reshape(3, 40) * 37 % 1000, jnp.int32)
    sin, cos = jax.jit(attention.rope_sin_cos, static_argnums=1)(pos, tuple(inv_freq.tolist()))
    angles = pos[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    np.testing.assert_array_equal(sin[:, :, 0], jnp.sin(angles))
    np.testing.assert_array_equal(cos[:, :, 0], jnp.cos(angles))
